"""The hold accelerator (orion_patches/hold.py) against unmodified Oríon: a differential oracle.

Two worlds run the same seeded schedule of two interleaved workers (suggest, complete,
interrupt, break; fidelities included), one with copy-free holds, one with Oríon's own
``set_state``/``state_dict``. After every step both must have produced the same trials (or the
same refusal) and hold the same algorithm state in Redis, decoded and compared whole, object
sharing included (only the trials' wall-clock timestamps differ between worlds and are blanked).

Algorithms covered: random, gridsearch, asha, hyperband, tpe, EvolutionES, pbt, mofa (a short
schedule: MOFA with pandas 3 crashes once its first iteration completes). Skipped with the
reason where their optional dependencies are missing: pb2, bohb, dehb, nevergrad, ax, hebo.

The oracle is shown to catch what it guards (``test_oracle_catches_*``): a hold that writes
back its adopted, already-changed state after a failure, and a copy inside the algorithm
dropped in the accelerated world only (a registry keeping the caller's trial), each make it
report a difference.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import uuid
import warnings

import numpy as np
import orion.algo.hebo  # noqa: F401 - registers HEBO in the algorithm factory
import orion.algo.pbt.pbt  # noqa: F401 - registers PBT in the algorithm factory
import pytest
from orion.client import build_experiment
from orion.core.utils.exceptions import (
    BrokenExperiment,
    CompletedExperiment,
    ReservationRaceCondition,
    WaitingForTrials,
)
from orion.core.worker.experiment import Experiment
from orion.core.worker.trial import Trial

from helpers import FIDELITY_SPACE, FLAT_SPACE, REAL_SPACE, hunt_config
from orion_track_redis.orion_patches import hold as accel
from orion_track_redis.state import resident
from orion_track_redis.state.codec import dump_state
from orion_track_redis.store.lock import LockClient, state_token

SECRET = "accel-test-secret"  # MOFA's state holds scipy objects: signed states only
# name -> (algorithm config, space, steps)
ALGORITHMS = {
    "random": ({"random": {"seed": 1}}, FIDELITY_SPACE, 40),
    "gridsearch": ({"gridsearch": {"n_values": 3}}, FIDELITY_SPACE, 40),
    "asha": ({"asha": {"seed": 1, "num_brackets": 2}}, FIDELITY_SPACE, 40),
    "hyperband": ({"hyperband": {"seed": 1}}, FIDELITY_SPACE, 40),
    "tpe": ({"tpe": {"seed": 1, "n_initial_points": 4}}, FIDELITY_SPACE, 30),
    "EvolutionES": ({"EvolutionES": {"seed": 1}}, FIDELITY_SPACE, 40),
    "pbt": (
        {"pbt": {"seed": 1, "population_size": 5, "generations": 4, "fork_timeout": 0.05}},
        FIDELITY_SPACE,
        30,
    ),
    "mofa": ({"mofa": {"seed": 1, "n_levels": 2, "strength": 1}}, REAL_SPACE, 3),
}
OPTIONAL = {
    "pb2": ({"pb2": {"seed": 1, "population_size": 5, "generations": 4}}, FIDELITY_SPACE, 20),
    "bohb": ({"bohb": {"seed": 1}}, FIDELITY_SPACE, 20),
    "dehb": ({"dehb": {"seed": 1}}, FIDELITY_SPACE, 20),
    "nevergrad": ({"nevergradoptimizer": {"seed": 1}}, FLAT_SPACE, 20),
    "ax": ({"axoptimizer": {"seed": 1}}, REAL_SPACE, 20),
    "hebo": ({"hebo": {"seed": 1}}, FLAT_SPACE, 20),
}
REFUSALS = (WaitingForTrials, CompletedExperiment, BrokenExperiment, ReservationRaceCondition)
_TIMES = ("submit_time", "start_time", "end_time", "heartbeat")


class World:
    """One experiment on its own in-process Redis, worked by two clients ("workers")."""

    def __init__(self, name, algorithm, space, accelerate, batch=False, workers=2, max_trials=200):
        self.uri = f"fakeredis://accel-{uuid.uuid4().hex[:8]}"
        storage = {
            "type": "redis",
            "uri": self.uri,
            "accelerate": accelerate,
            "batch_observe": batch,
            "state_secret": SECRET,
        }
        self.workers = [
            build_experiment(
                f"accel-{name}",
                space=space,
                algorithm=algorithm,
                max_trials=max_trials,
                storage=dict(storage),
            )
            for _ in range(workers)
        ]
        self.accelerate = accelerate
        self.storage = self.workers[0]._experiment._storage
        assert self.storage.accelerated_holds is accelerate
        assert self.storage.batched_observation is batch
        self.reserved: list[Trial | None] = [None] * workers

    stepping: World | None = None  # the world running a step (for the oracle's mutants)

    def step(self, worker: int, action: str, refusals=REFUSALS):
        """Run one action of one worker; returns what an observer of it sees."""
        World.stepping = self
        try:
            return self._step(worker, action, refusals)
        finally:
            World.stepping = None

    def _step(self, worker, action, refusals):
        client, trial = self.workers[worker], self.reserved[worker]
        if action == "expire":  # test_statedelta: this produce's hold loses its lock
            self.expire_next = trial is None
            action = "complete"
        if trial is None:
            try:
                trial = client.suggest()
            except refusals as exc:
                return ("refused", type(exc).__name__)
            self.reserved[worker] = trial
            return ("suggested", trial.id, sorted(trial.params.items(), key=str))
        self.reserved[worker] = None
        if action == "complete":
            value = trial.params["x"] + trial.params.get("y", 0) / 10
            client.observe(trial, [{"name": "obj", "type": "objective", "value": value}])
        else:
            client.release(trial, status=action)
        return (action, trial.id)

    def close(self):
        """Release what the workers still hold (their pacemaker threads would keep the test
        process alive) and close the clients."""
        for worker, trial in enumerate(self.reserved):
            if trial is not None:
                self.workers[worker].release(trial)
        for client in self.workers:
            client.close()

    def stored_state(self):
        """The algorithm state in Redis, decoded, with the wall-clock fields blanked."""
        exp_id = self.workers[0]._experiment.id
        info = self.storage.get_algorithm_lock_info(uid=exp_id)
        return canonical(info.state)

    def trials(self):
        return sorted((t.id, t.status) for t in self.workers[0].fetch_trials())

    def resident_states(self):
        """(worker, its algorithm's state) for each worker whose resident algorithm is at the
        stored state (statedelta: it will not read that state again)."""
        exp = self.workers[0]._experiment
        epoch, version = self.storage.client.hmget(
            self.storage.backend.experiment_keys(exp.id).lock, "epoch", "version"
        )
        token = state_token(epoch, version)
        for worker, client in enumerate(self.workers):
            algorithm = client._experiment.algorithm
            if resident.token_of(algorithm) == token:
                yield worker, copy.deepcopy(algorithm.state_dict)


def canonical(state) -> str:
    """``state`` written out with the trials' timestamps blanked: equal outputs mean the same
    values and the same sharing of mutable objects (a dict, list, set, array or object reached
    twice is written once and then referred to). Immutable values (str, numbers, tuples) are
    written by value: how a decoder happened to share them cannot change what an algorithm
    does, and a state assembled from deltas shares them differently than a whole pickle."""
    memo: dict[int, int] = {}

    def enc(obj):
        if isinstance(obj, (str, bytes, int, float, complex, type(None))):
            return (type(obj).__name__, obj)
        if isinstance(obj, np.generic):
            return ("np", obj.dtype.str, obj.tobytes())
        if isinstance(obj, tuple):
            return (type(obj).__name__, tuple(enc(x) for x in obj))
        if id(obj) in memo:
            return ("ref", memo[id(obj)])
        memo[id(obj)] = len(memo)
        if isinstance(obj, Trial):
            for name in _TIMES:
                setattr(obj, name, None)
        if isinstance(obj, dict):
            return (type(obj).__name__, tuple((enc(k), enc(v)) for k, v in obj.items()))
        if isinstance(obj, list):
            return ("list", tuple(enc(x) for x in obj))
        if isinstance(obj, (set, frozenset)):
            return (type(obj).__name__, tuple(sorted(repr(enc(x)) for x in obj)))
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                return ("nd", obj.shape, tuple(enc(x) for x in obj.ravel()))
            return ("nd", obj.dtype.str, obj.shape, obj.tobytes())
        fields = dict(getattr(obj, "__dict__", {}))
        fields.update((n, getattr(obj, n, None)) for n in getattr(type(obj), "__slots__", ()))
        return ("obj", type(obj).__qualname__, tuple((k, enc(v)) for k, v in fields.items()))

    return repr(enc(state))


def schedule(seed: int, steps: int):
    """A seeded interleaving of two workers' actions; mostly completions."""
    rng = random.Random(seed)
    actions = ["complete"] * 6 + ["interrupted", "broken"]
    return [(rng.randrange(2), rng.choice(actions)) for _ in range(steps)]


def compare_worlds(
    name, algorithm, space, steps, seed=7, refusals=REFUSALS, workers=2, steps_of=None
):
    """Run both worlds in lockstep (``workers`` each, actions from ``steps_of(seed, steps)``,
    by default :func:`schedule`); returns the first difference, or None."""
    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # Oríon warns about fidelities and duplicates
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fast = World(name, algorithm, space, accelerate=True, workers=workers)
                plain = World(name, algorithm, space, accelerate=False, workers=workers)
            except ImportError as exc:
                pytest.skip(f"{name}: optional dependency missing ({exc})")
            actions = (steps_of or schedule)(seed, steps)
            try:
                return _first_difference(name, fast, plain, actions, refusals)
            finally:
                fast.close()
                plain.close()
    finally:
        logging.disable(quiet)


def _first_difference(name, fast, plain, steps, refusals):
    for number, (worker, action) in enumerate(steps):
        seen_fast = fast.step(worker, action, refusals)
        seen_plain = plain.step(worker, action, refusals)
        where = f"{name}, step {number} (worker {worker}, {action})"
        if seen_fast != seen_plain:
            return f"{where}: accelerated saw {seen_fast}, Oríon saw {seen_plain}"
        if fast.trials() != plain.trials():
            return f"{where}: the stored trials differ"
        stored = plain.stored_state()
        if fast.stored_state() != stored:
            return f"{where}: the stored algorithm states differ"
        for current, state in fast.resident_states():
            if canonical(state) != stored:
                return f"{where}: worker {current}'s resident algorithm is not the stored state"
        for client in fast.workers:
            miscount = counted_differently(client._experiment.algorithm)
            if miscount:
                return f"{where}: {miscount}"
    return None


def counted_differently(algorithm) -> str | None:
    """Where algocounts' counted is_done parts differ from Oríon's walk over the registry, on
    each level of the wrapper chain. Booleans alone would hide a wrong count far from its
    threshold, so each is asked at the two thresholds around our count (max_trials, and the
    space's cardinality for the count at the maximum fidelity): Oríon's walk must agree."""
    from orion.algo.base import BaseAlgorithm
    from orion.algo.space import Space
    from orion.core.worker.algo_wrappers.algo_wrapper import AlgoWrapper

    from orion_track_redis.orion_patches import algocounts

    completed = BaseAlgorithm.has_completed_max_trials.fget
    all_values = BaseAlgorithm.has_suggested_all_possible_values
    node = algorithm
    while node is not None:
        tracked = algocounts._COUNTS in node.registry.__dict__
        if tracked and node.max_trials is not None:
            count = algocounts._count(node, "completed")
            for threshold in (count, count + 1):
                with _attribute(node, "max_trials", threshold):
                    if completed(node) != completed.__wrapped_by_orion_track_redis__(node):
                        return (
                            f"the completed count of {type(node).__name__} differs "
                            "from Oríon's count"
                        )
        if tracked and node.fidelity_index is not None:
            count = algocounts._count(node, "top")
            for threshold in (count, count + 1):
                with _attribute(Space, "cardinality", property(lambda _, t=threshold: t)):
                    if all_values(node) != all_values.__wrapped_by_orion_track_redis__(node):
                        return (
                            f"the max-fidelity count of {type(node).__name__} differs "
                            "from Oríon's count"
                        )
        node = node.algorithm if isinstance(node, AlgoWrapper) else None
    return None


@contextlib.contextmanager
def _attribute(obj, name, value):
    """``obj.name = value`` for the ``with`` block (a property on a class, a value on an
    instance; AlgoWrapper.max_trials is a property setting its algorithm's too)."""
    saved = getattr(obj, name) if not isinstance(obj, type) else obj.__dict__[name]
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_backend_holds_match_orion(name):
    assert accel.install()
    assert compare_worlds(name, *ALGORITHMS[name]) is None


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_backend_holds_match_orion_optional(name):
    assert compare_worlds(name, *OPTIONAL[name]) is None


def test_schedules_exercise_every_action():
    """The oracle's schedule reaches suggestions, completions, interruptions and breaks with
    both workers holding trials at once (otherwise it would prove less than it says)."""
    world = World("coverage", {"random": {"seed": 1}}, FIDELITY_SPACE, accelerate=True)
    seen, both_reserved = set(), False
    try:
        for worker, action in schedule(7, 40):
            seen.add(world.step(worker, action)[0])
            both_reserved |= all(t is not None for t in world.reserved)
    finally:
        world.close()
    assert {"suggested", "complete", "interrupted", "broken"} <= seen
    assert both_reserved


def test_oracle_catches_a_hold_that_writes_back_its_changed_state(monkeypatch):
    """A failure inside an accelerated hold must leave the stored state as it was read. By
    then the adopted dict has changed (the suggestion is in its registry): writing it back, as
    the hold did before the accelerator, is a difference the oracle finds."""
    own_register = Experiment.register_trial
    produced = {True: 0, False: 0}  # per world

    def flaky_register(self, trial, status="new"):
        world = World.stepping.accelerate
        produced[world] += 1
        if produced[world] % 5 == 0:  # a failure inside the produce hold, after suggest
            raise RuntimeError("injected failure inside the hold")
        return own_register(self, trial, status=status)

    monkeypatch.setattr(Experiment, "register_trial", flaky_register)
    failing = (*REFUSALS, RuntimeError)
    assert compare_worlds("random", *ALGORITHMS["random"][:2], 30, refusals=failing) is None

    @contextlib.contextmanager
    def writes_back_on_failure(self, ek, timeout, retry_interval):
        """LockClient.hold as it was before the accelerator (no renewal: holds are short;
        these worlds do not batch, so their backlog stays empty)."""
        token, reply = self._acquire(ek, timeout, retry_interval, "")
        locked = self._held(ek, reply)
        try:
            yield locked
        except BaseException:
            locked.reset()
            raise
        finally:
            self._release(ek, token, ("1", dump_state(locked.state, self.secret), ""))

    monkeypatch.setattr(LockClient, "hold", writes_back_on_failure)
    found = compare_worlds("random", *ALGORITHMS["random"][:2], 30, refusals=failing)
    assert found is not None and "algorithm states differ" in found


def test_oracle_catches_a_missing_copy_inside_the_algorithm(monkeypatch):
    """The copies inside suggest/observe stay. Drop one in the accelerated world only (the
    registry keeps the caller's trial instead of its own copy; Oríon then stamps that trial
    with the experiment id while registering it) and the oracle must report it."""
    from orion.algo.base import registry as registry_module

    own_register = registry_module.Registry.register

    def keeps_callers_trial(self, trial):
        trial_id = own_register(self, trial)
        if World.stepping is not None and World.stepping.accelerate:
            self._trials[trial_id] = trial
        return trial_id

    monkeypatch.setattr(registry_module.Registry, "register", keeps_callers_trial)
    found = compare_worlds("random", *ALGORITHMS["random"][:2], 30)
    assert found is not None and "algorithm states differ" in found


def test_unaccelerated_storages_and_other_backends_run_orions_code(monkeypatch):
    """accelerate=false, ORION_REDIS_ACCELERATE=0 and Legacy storages never enter the copy-free
    path; the accelerated one does."""
    calls = []
    real = accel._backend_hold
    monkeypatch.setattr(accel, "_backend_hold", lambda *a: calls.append(a[0]._storage) or real(*a))

    def one_trial(storage):
        client = build_experiment(
            f"scope-{uuid.uuid4().hex[:6]}",
            space=REAL_SPACE,
            algorithm={"random": {"seed": 1}},
            storage=storage,
        )
        trial = client.suggest()
        client.observe(trial, [{"name": "obj", "type": "objective", "value": 1.0}])
        return client._experiment._storage

    on = one_trial({"type": "redis", "uri": "fakeredis://scope-on"})
    assert calls and all(s is on for s in calls)
    calls.clear()
    one_trial({"type": "redis", "uri": "fakeredis://scope-off", "accelerate": False})
    one_trial({"type": "legacy", "database": {"type": "EphemeralDB"}})
    monkeypatch.setenv(accel.ENV, "0")
    one_trial({"type": "redis", "uri": "fakeredis://scope-env"})
    assert calls == []


def test_off_on_an_unverified_orion(monkeypatch, caplog):
    monkeypatch.setattr(accel, "_installed", None)
    monkeypatch.setattr(accel, "VERIFIED_ORION", ("0.0.1",))
    with caplog.at_level(logging.WARNING, logger="orion_track_redis.orion_patches.hold"):
        assert accel.install() is False
    assert [r.getMessage() for r in caplog.records if "accelerator off" in r.getMessage()] != []
    storage = build_experiment(
        f"unverified-{uuid.uuid4().hex[:6]}",
        space=REAL_SPACE,
        algorithm={"random": {"seed": 1}},
        storage={"type": "redis", "uri": "fakeredis://unverified"},
    )._experiment._storage
    assert storage.accelerated_holds is False


def test_backend_hold_copies_nothing_it_need_not(monkeypatch):
    """The point of it: at 60 trials, a hunt step's holds call deepcopy on whole registries
    with Oríon's path and never with the accelerated one."""
    import copy

    counts = {"registry": 0}
    own = copy.deepcopy

    def counting(obj, memo=None, _nil=[]):  # noqa: B006 - deepcopy's own signature
        if (
            isinstance(obj, dict)
            and len(obj) >= 50
            and all(isinstance(v, Trial) for v in list(obj.values())[:3])
        ):
            counts["registry"] += 1
        return own(obj, memo)

    for accelerate, expect_copies in ((False, True), (True, False)):
        client = build_experiment(
            f"copies-{uuid.uuid4().hex[:6]}",
            space=REAL_SPACE,
            algorithm={"random": {"seed": 1}},
            max_trials=1000,
            storage={"type": "redis", "uri": "fakeredis://copies", "accelerate": accelerate},
        )
        for _ in range(60):
            trial = client.suggest()
            client.observe(trial, [{"name": "obj", "type": "objective", "value": 1.0}])
        counts["registry"] = 0
        monkeypatch.setattr(copy, "deepcopy", counting)
        trial = client.suggest()
        client.observe(trial, [{"name": "obj", "type": "objective", "value": 1.0}])
        monkeypatch.setattr(copy, "deepcopy", own)
        assert (counts["registry"] > 0) is expect_copies, (accelerate, counts)


def test_adopted_state_is_the_decoded_one():
    """Sanity of the walk itself: after a copy-free hold the live registries hold exactly the
    stored trials, and InsistSuggest's registry is a dict of its own."""
    client = build_experiment(
        f"walk-{uuid.uuid4().hex[:6]}",
        space=REAL_SPACE,
        algorithm={"random": {"seed": 1}},
        storage={"type": "redis", "uri": "fakeredis://walk"},
    )
    for _ in range(5):
        trial = client.suggest()
        client.observe(trial, [{"name": "obj", "type": "objective", "value": 1.0}])
    exp = client._experiment
    with exp.acquire_algorithm_lock() as algo:
        insist, transform = algo, algo.algorithm
        assert insist.registry._trials is not transform.registry._trials
        assert set(insist.registry._trials) == set(transform.registry._trials)
        assert len(transform.algorithm.registry) == 5
    state = exp._storage.get_algorithm_lock_info(uid=exp.id).state
    assert len(state["algorithm"]["registry"]["_trials"]) == 5
    assert set(state) == {"algorithm"}
    assert set(state["algorithm"]) == {"registry", "algorithm", "registry_mapping"}


@pytest.mark.slow
def test_accelerated_fleet_completes_and_observes_every_trial_once(redis_server, tmp_path):
    """Four `orion hunt` processes with copy-free holds: every trial completed once, and the
    algorithm state left in Redis has observed exactly the completed trials (a hold that lost
    another worker's update would leave some out)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from orion_track_redis import Redis

    examples = Path(__file__).resolve().parents[2] / "examples"
    prefix = f"accel-fleet-{uuid.uuid4().hex[:8]}"
    uri = f"{redis_server.url}/0?prefix={prefix}"
    config = hunt_config(tmp_path / "orion_config.yaml", uri, tmp_path / "trials")
    cmd = [
        str(Path(sys.executable).with_name("orion")),
        "hunt",
        "--config",
        str(config),
        "-n",
        "accel-fleet",
        "--max-trials",
        "40",
        sys.executable,
        str(examples / "objective.py"),
        "-x~uniform(-5, 5)",
        "-y~uniform(-5, 5)",
    ]
    env = dict(os.environ, ORION_REDIS_URI="", **{accel.ENV: "1"})
    workers = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
        )
        for _ in range(4)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, [o[-2000:] for o in outputs]

    storage = Redis(uri=uri)
    (exp,) = storage.fetch_experiments({"name": "accel-fleet"})
    completed = [t for t in storage.fetch_trials(uid=exp["_id"]) if t.status == "completed"]
    assert len(completed) >= 40
    assert len({t.id for t in completed}) == len(completed), "no trial completed twice"
    state = storage.get_algorithm_lock_info(uid=exp["_id"]).state
    registry = state["algorithm"]["registry"]["_trials"].values()
    observed = sorted(t.params_repr() for t in registry if t.status == "completed")
    assert observed == sorted(t.params_repr() for t in completed)
