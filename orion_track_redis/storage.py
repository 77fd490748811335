"""``Redis``: Oríon's storage protocol on Redis.

Contract (Oríon 0.2.7, see docs/architecture.md): behaves like Oríon's Legacy storage where
Oríon's docs are silent; raises Oríon's own exceptions (``DuplicateKeyError``, ``FailedUpdate``,
``LockAcquisitionTimeout``, ``MissingArguments``); returns real ``Trial`` objects sorted by
``submit_time``. Every state change of a trial is one Lua script call (see ``lua/``); reads are
pipelined. The storage pickles (Oríon cloudpickles it for every trial) and reconnects lazily.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import logging

from orion.core.worker.trial import Trial, validate_status
from orion.storage.base import (
    BaseStorageProtocol,
    get_trial_uid_and_exp,
    get_uid,
)

from orion_track_redis import codec, orion_patches
from orion_track_redis.config import misdirect
from orion_track_redis.config.options import Options
from orion_track_redis.config.uri import resolve
from orion_track_redis.develop import DevelopProtocol
from orion_track_redis.gcpause import no_gc
from orion_track_redis.keys import PENDING, STATUSES, escape
from orion_track_redis.orion_patches import hold
from orion_track_redis.server.connection import RedisDB
from orion_track_redis.store import codes, lease, query
from orion_track_redis.store.backend import Backend
from orion_track_redis.store.lock import LockClient
from orion_track_redis.store.reads import indexed
from orion_track_redis.store.scripts import Scripts
from orion_track_redis.store.trials import clone as clone_trial
from orion_track_redis.store.trials import to_doc, with_status

log = logging.getLogger(__name__)
misdirect.guard_legacy()  # Oríon imports this module before it creates any storage


def _guarded(cls):
    """The error boundary, applied once: every public method of ``cls`` runs inside its
    backend's :meth:`~Backend.guard` (redis-py errors become ours). A context manager method
    guards its own body: the boundary would close before the caller's ``with`` block runs."""
    for name, method in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(method):
            setattr(cls, name, _guard(method))
    return cls


def _guard(method):
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        with self.backend.guard():
            return method(self, *args, **kwargs)

    return guarded


@_guarded
class Redis(DevelopProtocol, BaseStorageProtocol):
    """Oríon storage backed by Redis, a thin adapter over :class:`Backend`: Oríon's arguments
    in, its statuses validated, return codes out as Oríon's exceptions. Configuration:
    docs/configuration.md.

    Parameters
    ----------
    uri: str, optional
        Redis URI (``redis://``, ``rediss://``, ``unix://``, ``fakeredis://``, ``embedded://``).
    database: dict, optional
        Oríon's ``database`` section; its ``host`` is used when it holds a Redis URI.
    setup: bool
        Check the schema version (and write it on a fresh database). ``orion db upgrade``
        passes False.
    **options
        ``prefix``, ``lock_ttl``, ``state_secret`` and connection options (see ``uri.py``).
    """

    def __init__(self, uri=None, database=None, setup=True, **options):
        orion_patches.apply()  # before anything here can raise (the `orion` program's hook)
        opts = resolve(uri, database, options)
        log.info(
            "orion-track-redis: using %s (from %s, prefix %s)",
            opts.redacted,
            opts.source,
            opts.prefix,
        )
        self._start(opts)
        if setup:
            self.set_up()

    # -- the core, pickling ------------------------------------------------------------------
    def __getstate__(self):
        return {"opts": self.backend.opts}

    def __setstate__(self, state):
        # no patching here: where a storage is only unpickled (an executor's worker process)
        # no hold runs, and a process that built one has them already
        self._start(state["opts"])

    def _start(self, opts: Options) -> None:
        """Everything but the connection, which is made on first use (and again after fork)."""
        self.backend = Backend(opts)
        self._db = RedisDB(opts)
        self.accelerated_holds = hold.enabled_for(opts)
        self.batched_observation = hold.batching_for(opts, self.accelerated_holds)

    @property
    def stop_options(self) -> Options:
        """What orion_patches/runner.py reads: trap_signals and stop_grace (and that the
        storage is ours)."""
        return self.backend.opts

    @property
    def client(self):
        return self.backend.client

    @property
    def scripts(self) -> Scripts:
        return self.backend.scripts

    @property
    def lock(self) -> LockClient:
        return self.backend.lock

    def _ek(self, exp_id):
        return self.backend.experiment_keys(exp_id)

    def set_up(self) -> None:
        """Check the server once (``Backend.set_up``). ``Redis(setup=True)`` runs it; a caller
        that must look at the resolved options first constructs with ``setup=False``."""
        self.backend.set_up()

    # -- benchmarks and experiments (store/experiments.py) -----------------------------------------
    def create_benchmark(self, config):
        """Insert a benchmark, unique on its name."""
        self.backend.experiments.create_benchmark(config)
        return 1

    def fetch_benchmark(self, query_, selection=None):
        return self.backend.experiments.fetch_benchmarks(query_, selection)

    def create_experiment(self, config, algo_locked=0, algo_state=None, algo_heartbeat=None):
        """Insert an experiment (unique name+version and _id) and initialise its lock."""
        self.backend.experiments.create(config)
        self._init_lock(
            self._ek(config["_id"]),
            config.get("algorithm", {}),
            state=algo_state,
            locked=bool(algo_locked),
            heartbeat=algo_heartbeat,
        )
        return 1

    def fetch_experiments(self, query_, selection=None):
        """Experiments matching a Mongo-style query, in creation order."""
        return self.backend.experiments.fetch(query_, selection)

    def update_experiment(self, experiment=None, uid=None, where=None, **kwargs):
        """Top-level set of fields (nested dicts replaced whole); returns the count updated."""
        uid = get_uid(experiment, uid)
        return self.backend.experiments.update(uid, where, kwargs)

    def delete_experiment(self, experiment=None, uid=None):
        """Delete the experiment document (not its trials nor its lock, like Legacy)."""
        uid = get_uid(experiment, uid)
        return self.backend.experiments.delete(uid)

    # -- trials: writes (store/writes.py) ----------------------------------------------------------
    def register_trial(self, trial):
        """Insert a new trial; ``DuplicateKeyError`` if (experiment, id) exists."""
        trial_id = trial.id  # hashes the params: once per call
        doc = to_doc(trial, trial_id)
        doc.setdefault("_id", trial_id)  # a truthy, unique _id, kept as id_override
        validate_status(doc["status"])
        rc = self.backend.writes.register(self._ek(doc["experiment"]), doc, escape(trial_id))
        codes.check("register_trial", rc, experiment=doc["experiment"], id=trial_id)
        trial.id_override = doc["_id"]
        return trial

    def reserve_trial(self, experiment):
        """Reserve one pending trial (new, suspended or interrupted) or return None."""
        ek = self._ek(get_uid(experiment))
        reply = self.backend.writes.reserve(ek, self.backend.opts.lease, lease.HOLDER.record())
        if len(reply) < 3:
            return None
        self.backend.keeper().hold(ek, reply[0].decode())  # renewed; released on SIGTERM
        it = iter(reply[1:])
        return self.backend.reads.trial(dict(zip(it, it)), ek.trial_prefix + reply[0].decode())

    def _patch_held(
        self, ek, trial_id, was, fields, new_status=None, score="", observed=None
    ) -> tuple:
        """writes.patch of a trial; one this worker reserved must still be held by it (refused
        once its lease ran out and another worker took it). Inside the client's observe or
        release of a batching storage, the trial ``observed()`` returns is recorded for the
        algorithm in the same script (hold.recording). (rc, the holder id checked)."""
        keeper, token = self.backend.keeper(), escape(trial_id)
        holder = keeper.holder_check(ek, token) if was == "reserved" else ""
        recorded = hold.recording(self) if observed is not None and was == "reserved" else None
        record = b"" if recorded is None else self.lock.encode_entry(observed())
        rc = self.backend.writes.patch(ek, trial_id, was, fields, new_status, score, holder, record)
        if rc == 1 and recorded is not None:
            recorded.add(trial_id)
        if rc == 1 and holder and (new_status or was) != "reserved":
            keeper.gave_up(ek, token)
        return rc, holder

    def set_trial_status(self, trial, status, heartbeat=None, was=None):
        """Compare-and-set the status (``was`` defaults to ``trial.status``). An explicit
        heartbeat datetime is stored and scored as given (as ``register_trial`` does: a caller
        may age a trial); anything else means now, on the server's clock."""
        score = "now"
        if isinstance(heartbeat, datetime.datetime):
            score = repr(codec.epoch(heartbeat))
        else:
            heartbeat = codec.utcnow()  # Oríon sometimes passes an int here
        was = was or trial.status
        validate_status(status)
        validate_status(was)
        fields = ["status", codec.dumps(status), "heartbeat", codec.dumps(heartbeat)], ()
        rc, _ = self._patch_held(
            self._ek(trial.experiment),
            trial.id,
            was,
            fields,
            status,
            score,
            lambda: with_status(trial, status),
        )
        codes.check("update_trial", rc, id=trial.id, status=repr(was), why="")
        trial.status = status

    def update_heartbeat(self, trial):
        """Refresh the heartbeat of a reserved trial; 0 (stop the pacemaker) otherwise, also
        when another worker holds it now."""
        fields = ["heartbeat", codec.dumps(codec.utcnow())], ()
        rc, _ = self._patch_held(
            self._ek(trial.experiment), trial.id, "reserved", fields, None, "now"
        )
        return max(0, rc)

    def push_trial_results(self, trial):
        """Write the whole trial, only while it is reserved (by this worker, if it reserved
        it); ``FailedUpdate`` otherwise."""
        trial_id = trial.id  # hashes the params: once per call
        doc = to_doc(trial, trial_id)
        ek = self._ek(trial.experiment)
        rc, holder = self._patch_held(
            ek, trial_id, "reserved", doc, doc.get("status"), "", lambda: trial
        )
        if rc != codes.DONE:  # missing or not reserved: both are "not reserved" here
            taken = " by this worker (if its lease ran out, another worker took it)"
            why = taken if holder else ""
            codes.check("update_trial", 0, id=trial_id, status="reserved", why=why)  # raises
        return rc

    def update_trial(self, trial=None, uid=None, experiment_uid=None, where=None, **kwargs):
        """Set fields of one trial if it matches ``where``; returns 1 or 0."""
        trial_uid, experiment_uid = get_trial_uid_and_exp(trial, uid, experiment_uid)
        ek = self._ek(experiment_uid)
        # like Legacy, the trial's own id and experiment replace those of ``where``
        where = {k: v for k, v in (where or {}).items() if k not in ("id", "experiment")}
        docs = self.backend.reads.read(ek, [escape(trial_uid)])
        if not docs or not query.matches(docs[0], where):
            return 0
        return self.backend.writes.apply_update(ek, docs[0], kwargs)

    def update_trials(self, experiment=None, uid=None, where=None, **kwargs):
        """Set fields of every trial matching ``where``; returns the count updated."""
        ek = self._ek(get_uid(experiment, uid))
        return sum(
            self.backend.writes.apply_update(ek, doc, kwargs)
            for doc in self.backend.reads.matching(ek, where)
        )

    def delete_trials(self, experiment=None, uid=None, where=None):
        """Delete the trials matching ``where``; returns the count deleted."""
        ek = self._ek(get_uid(experiment, uid))
        tokens = (
            [escape(d["id"]) for d in self.backend.reads.matching(ek, where)] if where else None
        )
        return self.backend.writes.delete(ek, tokens)

    # -- trials: reads (store/reads.py) -----------------------------------------------------------
    def fetch_trials(self, experiment=None, uid=None, where=None):
        """All trials of an experiment matching ``where``, sorted by submit_time."""
        uid = get_uid(experiment, uid)
        ek = self._ek(uid)
        # like Legacy, the experiment of ``where`` is replaced by ``uid``
        where = {k: v for k, v in (where or {}).items() if k != "experiment"}
        if indexed(where):
            return self.backend.reads.build(self.backend.reads.matching(ek, where))
        cache = self.backend.reads.all(ek)
        with no_gc():
            if not where:
                return [clone_trial(trial) for trial in cache.ordered()]
            return [
                clone_trial(trial)
                for trial, doc in cache.ordered_pairs()
                if query.matches(doc, where)
            ]

    def get_trial(self, trial=None, uid=None, experiment_uid=None):
        trial_uid, experiment_uid = get_trial_uid_and_exp(trial, uid, experiment_uid)
        if not isinstance(trial_uid, str):  # trial ids are strings: Legacy finds nothing
            return None
        docs = self.backend.reads.read(self._ek(experiment_uid), [escape(trial_uid)])
        return self.backend.reads.build(docs)[0] if docs else None

    def retrieve_result(self, trial, *args, **kwargs):
        """Results already sit on the trial object (as with Legacy)."""
        return trial

    def fetch_lost_trials(self, experiment):
        """Reserved trials without a heartbeat for 5 x worker.heartbeat or whose reservation
        lease ended (store/lease.py), on the server clock."""
        ek = self._ek(get_uid(experiment))
        tokens = lease.lost_tokens(self.scripts, ek)
        docs = self.backend.reads.read(ek, [t.decode() for t in tokens])
        return self.backend.reads.build([d for d in docs if d.get("status") == "reserved"])

    def _by_statuses(self, experiment, statuses) -> list[Trial]:
        ek = self._ek(get_uid(experiment))
        return self.backend.reads.build(
            self.backend.reads.matching(ek, {"status": {"$in": list(statuses)}})
        )

    def fetch_pending_trials(self, experiment):
        return self._by_statuses(experiment, PENDING)

    def fetch_noncompleted_trials(self, experiment):
        return self._by_statuses(experiment, [s for s in STATUSES if s != "completed"])

    def fetch_trials_by_status(self, experiment, status):
        return self._by_statuses(experiment, [status])

    def count_by_status(self, experiment, statuses) -> list[int]:
        """How many trials are in each of ``statuses`` (one round trip;
        orion_patches/stepreads.py)."""
        return self.backend.count_by_status(self._ek(get_uid(experiment)), statuses)

    def count_completed_trials(self, experiment):
        return self.count_by_status(experiment, ["completed"])[0]

    def count_broken_trials(self, experiment):
        return self.count_by_status(experiment, ["broken"])[0]

    # -- algorithm lock -----------------------------------------------------------------------
    def initialize_algorithm_lock(self, experiment_id, algorithm_config):
        """Create the lock record if absent; returns 1 if created, 0 if it existed."""
        return self.lock.initialize(self._ek(experiment_id), algorithm_config)

    def release_algorithm_lock(self, experiment=None, uid=None, new_state=None):
        """Release the lock whoever holds it (``orion db release``); 1 if there is a lock."""
        uid = get_uid(experiment, uid)
        return self.lock.force_release(self._ek(uid), new_state)

    def get_algorithm_lock_info(self, experiment=None, uid=None):
        uid = get_uid(experiment, uid)
        return self._lock_info(self._ek(uid))

    def delete_algorithm_lock(self, experiment=None, uid=None):
        uid = get_uid(experiment, uid)
        return self.lock.delete(self._ek(uid))

    @contextlib.contextmanager
    def acquire_algorithm_lock(self, experiment=None, uid=None, timeout=60, retry_interval=1):
        """Hold the algorithm lock (TTL ``lock_ttl``, renewed while held), Oríon's signature.
        The held state also carries the trials waiting to be observed (``lock.Held``)."""
        uid = get_uid(experiment, uid)
        with (
            self.backend.guard(),
            self.lock.hold(self._ek(uid), timeout, retry_interval) as locked,
        ):
            yield locked

    # -- batched observation ------------------------------------------------------------------
    def observe_later(self, experiment, trial) -> int:
        """Record ``trial`` for the next hold to observe; returns the backlog's length."""
        return self.lock.observe_later(self._ek(get_uid(experiment)), trial)

    def backlog_length(self, experiment=None, uid=None) -> int:
        """Trials completed or released but not yet observed by the algorithm."""
        return self.lock.backlog_length(self._ek(get_uid(experiment, uid)))
