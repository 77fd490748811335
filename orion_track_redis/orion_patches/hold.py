"""Copy-free algorithm-lock holds (the hold accelerator), for the Oríon versions it was verified on.

Every produce and observe of an Oríon worker holds the experiment's algorithm lock, and inside
the hold Oríon 0.2.7 spends most of its time in ``copy.deepcopy``: ``set_state`` of its wrapper
chain ``InsistSuggest(SpaceTransform(<algorithm>))`` copies the nested state at every level and
each ``Registry``/``RegistryMapping`` copies its part again; ``state_dict`` does the same on the
way out. Those copies protect a caller that keeps the dict it passed in, or keeps using the dict
it got back. In a hold of this backend nobody does: the state read at acquire was just decoded
(nobody else has it) and the state handed back is encoded at release, before the algorithm runs
again. So, in a hold of this backend only, :func:`adopt_state` installs the decoded parts
directly and :func:`export_state` hands the live parts to the encoder.

What stays exactly as in Oríon:

* every copy inside ``suggest``/``observe``/the transforms, and the algorithm's own copies in
  its ``state_dict`` (hyperband's rungs, EvolutionES' population, ...): only the wrappers' and
  the registries' copies of whole states are skipped;
* no two live parts share an object Oríon would have kept separate: ``InsistSuggest``'s registry
  gets a dict of its own (its trials are shared with the inner registry's, which is safe because
  registries replace entries on ``register`` and never change a stored trial in place);
* an unknown wrapper (``MultiTaskWrapper``, a plugin's) and a leaf algorithm that is not one of
  Oríon's own (``orion.algo.*``) run Oríon's own ``set_state``/``state_dict``, copies included;
* a process that also uses another storage: only holds whose storage says
  ``accelerated_holds`` take this path; every other experiment runs Oríon's method unchanged.

It is on by default on the verified Oríon version, off with the storage option
``accelerate=false`` or ``ORION_REDIS_ACCELERATE=0``, and off (one log line) on any other Oríon.
``tests/protocol/test_accel.py`` is the differential oracle against unmodified Oríon.

Batched observation (on with the accelerator; ``batch_observe=false`` or
``ORION_REDIS_BATCH_OBSERVE=0`` turn it off): ``Producer.observe`` records the trial in the
experiment's backlog instead of taking the lock, and every hold of this backend observes the
backlog, oldest first, before its caller runs; the release removes what it observed together
with the state write (store/lock.py). ``workon`` observes the tail when a worker is done.
``tests/protocol/test_batch_observe.py`` is its oracle against unmodified Oríon.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from importlib import metadata

from orion_track_redis.orion_patches import algocounts, stepreads
from orion_track_redis.state import delta as statedelta
from orion_track_redis.state import resident
from orion_track_redis.store.lock import RESIDENT

log = logging.getLogger(__name__)

ENV = "ORION_REDIS_ACCELERATE"
BATCH_ENV = "ORION_REDIS_BATCH_OBSERVE"
DELTAS_ENV = "ORION_REDIS_STATE_DELTAS"  # 0: copy-free holds read and write whole states
VERIFIED_ORION = ("0.2.7",)

# True only while adopt_state/export_state run a leaf algorithm's own set_state/state_dict:
# its registries then skip their whole-dict copies. Nothing else in the process sees it.
_COPY_FREE = contextvars.ContextVar("orion_redis_copy_free", default=False)
_installed: bool | None = None  # None: not tried yet


def env_allows(name: str = ENV) -> bool:
    """False when the variable ``name`` says off (0/false/no/off)."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def enabled_for(opts) -> bool:
    """Copy-free lock holds for a storage with these options: on unless switched off (option,
    env var) or Oríon is not a verified version (install logs why)."""
    # installed (orion_patches.apply) whatever the switches, on a verified Oríon: a
    # non-accelerated storage of ours still observes a backlog that batching workers left
    return bool(_installed) and opts.accelerate and env_allows()


def batching_for(opts, accelerated: bool) -> bool:
    """Batched observation: only with the accelerator (its holds observe the backlog)."""
    return accelerated and opts.batch_observe and env_allows(BATCH_ENV)


def install() -> bool:
    """Patch Oríon once per process; False (and one log line) on an unverified Oríon."""
    global _installed
    if _installed is None:
        version = metadata.version("orion")
        if version not in VERIFIED_ORION:
            log.warning(
                "orion-track-redis: hold accelerator off: verified on Oríon %s, this is "
                "Oríon %s (algorithm-lock holds run Oríon's own code).",
                ", ".join(VERIFIED_ORION),
                version,
            )
            _installed = False
        else:
            _patch_experiment()
            _patch_registries()
            _patch_observation()
            stepreads.patch()
            algocounts.patch()
            _installed = True
    return _installed


# -- the hold -------------------------------------------------------------------------------------
def _patch_experiment():
    from orion.core.worker.experiment import Experiment

    oriones_hold = Experiment.acquire_algorithm_lock

    @contextlib.contextmanager
    def acquire_algorithm_lock(self, timeout=60, retry_interval=1):
        storage = self._storage
        if not getattr(storage, "accelerated_holds", False):
            if hasattr(storage, "backlog_length") and storage.backlog_length(self):
                # our storage with the accelerator off, in a fleet where others batch: observe
                # their backlog too, with Oríon's own set_state/state_dict
                with _backend_hold(self, timeout, retry_interval, copy_free=False) as (algo, _):
                    yield algo
                return
            with oriones_hold(self, timeout=timeout, retry_interval=retry_interval) as algo:
                yield algo
            return
        with _backend_hold(self, timeout, retry_interval) as (algo, _):
            yield algo

    acquire_algorithm_lock.__doc__ = oriones_hold.__doc__
    acquire_algorithm_lock.__wrapped_by_orion_track_redis__ = oriones_hold  # type: ignore[attr-defined]
    Experiment.acquire_algorithm_lock = acquire_algorithm_lock


@contextlib.contextmanager
def _backend_hold(experiment, timeout, retry_interval, copy_free=True):
    """Oríon's hold contract (writable check, configuration check, state in and out), with the
    state adopted and exported without copies (``copy_free``), and the backlog of batched
    observation observed first, oldest first, one ``observe`` per recorded trial as Oríon's
    ``Producer.observe`` would have made it. Yields (algorithm, held state).

    Copy-free, the algorithm stays resident: it keeps the token of the state it left, the
    storage sends only the deltas it lacks (none when it is current), and the release writes
    this hold's delta (state/delta.py), not the whole state."""
    experiment._check_if_writable()
    algorithm = experiment.algorithm
    versioned = copy_free and env_allows(DELTAS_ENV)
    have = resident.token_of(algorithm) if versioned else ""
    resident.forget(algorithm)  # until this hold's release succeeds
    wanted = RESIDENT.set(have)
    try:
        # called exactly as Oríon calls it: a wrapped or replaced method keeps working
        with experiment._storage.acquire_algorithm_lock(
            experiment=experiment, timeout=timeout, retry_interval=retry_interval
        ) as locked:
            base = _take_state(algorithm, locked, copy_free, versioned)
            backlog = getattr(locked, "backlog", ())  # a replaced method's plain state has none
            for trial in backlog:
                algorithm.observe([trial])
            if backlog:
                locked.observed = len(backlog)
            yield algorithm, locked
            new = (export_state if copy_free else _own_get)(algorithm)
            if base is not None:
                locked.delta = statedelta.diff(base, new)
            locked.set_state(new)
    finally:
        RESIDENT.reset(wanted)
    if versioned:
        resident.remember(algorithm, getattr(locked, "written", None))


def _take_state(algorithm, locked, copy_free: bool, versioned: bool):
    """Bring ``algorithm`` to the held state; returns what the hold's delta is taken
    against (None: no delta, the release writes the whole state)."""
    _check_configuration(locked.configuration, algorithm)
    mode = getattr(locked, "mode", "snap")
    if mode == "snap":
        if locked.state:
            (adopt_state if copy_free else _own_set)(algorithm, locked.state)
    elif mode == "log":
        live = export_state(algorithm)
        owners = {id(r._trials): r for r in _registries(algorithm)}

        def recount(entries, changed, gone):
            if id(entries) in owners:
                algocounts.adjust(owners[id(entries)], changed, gone)

        for delta in locked.deltas:
            statedelta.apply(live, delta, before=recount)
        adopt_state(algorithm, live)
    if not versioned:
        return None
    _count_registries(algorithm)
    return statedelta.capture(export_state(algorithm))


def _registries(node) -> list:
    """The registries of Oríon's own algorithms and wrappers in ``node``'s chain."""
    kind = _kind(node)
    own = [node.registry] if kind != "other" else []
    return own + (_registries(node.algorithm) if kind in ("insist", "transform") else [])


def _count_registries(node) -> None:
    """Oríon's own algorithms and wrappers keep their is_done counts (orion_patches/algocounts.py)
    from
    now on: their registries change only through ``register`` or a hold's adoption."""
    for registry in _registries(node):
        algocounts.keep(registry)


def _own_set(algorithm, state):
    algorithm.set_state(state)


def _own_get(algorithm):
    return algorithm.state_dict


def _check_configuration(saved, algorithm):
    current = algorithm.configuration
    if saved != current:
        log.warning("Saved configuration: %s", saved)
        log.warning("Current configuration: %s", current)
        raise RuntimeError(
            "Algorithm configuration changed since last experiment execution. "
            "Algorithm cannot be resumed with a different configuration. "
        )


# -- batched observation ------------------------------------------------------------------------
# While ExperimentClient.observe/release run for a batching storage: the ids of the trials
# whose status change already recorded them in the backlog (one script, storage.py), so that
# Producer.observe, which Oríon calls right after, does not record them again
_RECORDED: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "orion_redis_recorded", default=None
)


def recording(storage) -> set | None:
    """The set to add a trial id to when ``storage`` records it with its status change, or
    None when the change must not record it (outside the client's observe/release, or a
    storage that does not batch)."""
    active = _RECORDED.get()
    return active[1] if active is not None and active[0] is storage else None


@contextlib.contextmanager
def _client_call(storage):
    if not getattr(storage, "batched_observation", False):
        yield
        return
    token = _RECORDED.set((storage, set()))
    try:
        yield
    finally:
        _RECORDED.reset(token)


def _already_recorded(storage, trial) -> bool:
    recorded = recording(storage)
    if recorded is not None and trial.id in recorded:
        recorded.discard(trial.id)
        return True
    return False


def _patch_observation():
    """``Producer.observe`` records the trial in the backlog when its storage batches
    observation (unless its status change, inside ``ExperimentClient.observe``/``release``,
    already did: a worker killed between the two calls would leave a completion the algorithm
    never sees); ``ExperimentClient.workon`` observes what is left when the worker is done."""
    from orion.client.experiment import ExperimentClient
    from orion.core.worker.producer import Producer

    oriones_observe = Producer.observe
    oriones_workon = ExperimentClient.workon

    def observe(self, trial):
        storage = self.experiment._storage
        if getattr(storage, "batched_observation", False):
            if not _already_recorded(storage, trial):
                storage.observe_later(self.experiment, trial)
        else:
            oriones_observe(self, trial)

    for name in ("observe", "release"):
        _wrap_client_call(ExperimentClient, name)

    def workon(self, *args, **kwargs):
        # after success or an error, not after Ctrl-C: the next produce or a flush covers it
        try:
            result = oriones_workon(self, *args, **kwargs)
        except Exception:
            flush_quietly(self._experiment)
            raise
        flush_quietly(self._experiment)
        return result

    observe.__doc__, workon.__doc__ = oriones_observe.__doc__, oriones_workon.__doc__
    Producer.observe = observe
    ExperimentClient.workon = workon


def _wrap_client_call(cls, name: str) -> None:
    oriones = getattr(cls, name)

    def call(self, *args, **kwargs):
        with _client_call(self._experiment._storage):
            return oriones(self, *args, **kwargs)

    call.__doc__ = oriones.__doc__
    setattr(cls, name, call)


def flush(experiment, timeout: float = 60) -> int:
    """Observe the experiment's backlog in one hold (copy-free where the storage allows it);
    returns how many trials it observed (no hold at all when the backlog is empty)."""
    storage = experiment._storage
    if not storage.backlog_length(experiment):
        return 0
    with _backend_hold(experiment, timeout, 1, copy_free=storage.accelerated_holds) as (_, locked):
        return locked.observed


def flush_quietly(experiment) -> None:
    """``flush`` at the end of a worker's loop, for a batching storage: a failure is a
    warning, not the worker's."""
    if not getattr(experiment._storage, "batched_observation", False):
        return
    try:
        flush(experiment)
    except Exception as exc:  # noqa: BLE001 - the next hold or `orion-redis flush` covers it
        log.warning(
            "orion-track-redis: could not observe the last completed trials of %s "
            "(%s); the next produce of any worker, or `orion-redis flush %s`, will.",
            experiment.name,
            exc,
            experiment.name,
        )


# -- walking the wrapper chain -------------------------------------------------------------------
def _kind(node) -> str:
    """'insist', 'transform', 'leaf' (one of Oríon's own algorithms) or 'other'."""
    from orion.algo.base import BaseAlgorithm
    from orion.core.worker.algo_wrappers import InsistSuggest
    from orion.core.worker.algo_wrappers.algo_wrapper import AlgoWrapper
    from orion.core.worker.algo_wrappers.space_transform import SpaceTransform

    cls = type(node)
    if cls is InsistSuggest:
        return "insist"
    if cls is SpaceTransform:
        return "transform"
    if (
        isinstance(node, BaseAlgorithm)
        and not isinstance(node, AlgoWrapper)
        and cls.__module__.startswith("orion.algo.")
    ):
        return "leaf"
    return "other"


def adopt_state(node, state: dict) -> None:
    """``node.set_state(state)`` for a state nobody else holds: its parts are installed as
    they are."""
    kind = _kind(node)
    if kind == "insist":
        # InsistSuggest keeps no registry state of its own: it mirrors the inner one's
        adopt_state(node.algorithm, state["algorithm"])
        node.registry._trials = dict(node.algorithm.registry._trials)
        algocounts.same_counts(node.registry, node.algorithm.registry)
    elif kind == "transform":
        if node.registry._trials is not state["registry"]["_trials"]:  # else changed in place
            node.registry._trials = state["registry"]["_trials"]
            algocounts.track(node.registry)
        adopt_state(node.algorithm, state["algorithm"])
        node.registry_mapping._mapping = state["registry_mapping"]["_mapping"]
    elif kind == "leaf":
        with _copy_free_registries():
            node.set_state(state)
    else:
        node.set_state(state)


def export_state(node) -> dict:
    """``node.state_dict`` for a state that is encoded at once: live parts, no copies. Same
    keys and values as Oríon's."""
    kind = _kind(node)
    if kind == "insist":
        return {"algorithm": export_state(node.algorithm)}
    if kind == "transform":
        return {
            "registry": {"_trials": node.registry._trials},
            "algorithm": export_state(node.algorithm),
            "registry_mapping": {"_mapping": node.registry_mapping._mapping},
        }
    if kind == "leaf":
        with _copy_free_registries():
            return node.state_dict
    return node.state_dict


# -- registries -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _copy_free_registries():
    token = _COPY_FREE.set(True)
    try:
        yield
    finally:
        _COPY_FREE.reset(token)


def _patch_registries():
    """Registry/RegistryMapping skip their whole-dict copies while _COPY_FREE is set."""
    from orion.algo.base.registry import Registry, RegistryMapping

    for cls, attr in ((Registry, "_trials"), (RegistryMapping, "_mapping")):
        _patch_one(cls, attr)


def _patch_one(cls, attr):
    own_get = cls.state_dict.fget
    own_set = cls.set_state

    def state_dict(self):
        if _COPY_FREE.get():
            return {attr: getattr(self, attr)}
        return own_get(self)

    def set_state(self, statedict):
        if _COPY_FREE.get():
            same = getattr(self, attr, None) is statedict[attr]  # deltas applied in place
            setattr(self, attr, statedict[attr])
            if attr == "_trials" and not same:
                algocounts.track(self)  # installed by our hold: counted from now on
        else:
            own_set(self, statedict)
            if attr == "_trials":
                algocounts.untrack(self)

    state_dict.__doc__, set_state.__doc__ = own_get.__doc__, own_set.__doc__
    cls.state_dict = property(state_dict)
    cls.set_state = set_state
