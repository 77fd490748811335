"""Versioned algorithm state (state/delta.py, store/lock.py, lua/include/lock_state.lua) against
unmodified Oríon.

Copy-free holds keep each worker's algorithm resident: a worker whose algorithm is at the
stored state reads nothing, one that missed some holds reads the deltas it lacks, one behind a
compaction reads the snapshot and the log; a release writes the hold's delta, or a whole state
when the log has outgrown the snapshot. The oracle runs seeded schedules of four workers, one
of them rarely acting (so it falls many deltas behind), with compaction forced every few
holds, interruptions, broken trials, fidelities, and holds whose lock expires before their
release, in two worlds: one with versioned state, one running Oríon's own hold. After every
step both must have seen the same suggestion, stored the same trials and the same algorithm
state, and every worker whose resident algorithm is at the stored state must hold exactly it.
It is shown to fail when a delta is dropped, applied twice, applied out of order, or when a
compaction loses an entry.
"""

from __future__ import annotations

import contextlib
import random

import pytest
from orion.core.worker.experiment import Experiment

from orion_track_redis.orion_patches import algocounts
from orion_track_redis.orion_patches import hold as accel
from orion_track_redis.state import delta as statedelta
from orion_track_redis.state.codec import dump_state, load_state
from orion_track_redis.store import lock
from test_accel import ALGORITHMS, REFUSALS, World, compare_worlds

WORKERS = 4
WEIGHTS = (8, 4, 2, 1)  # the last worker acts rarely: it is many deltas behind when it does


def staleness_schedule(seed: int, steps: int):
    """Four workers, mostly completions, some interruptions, broken trials and expiries."""
    rng = random.Random(seed)
    actions = ["complete"] * 6 + ["interrupted", "broken", "expire"]
    return [(rng.choices(range(WORKERS), WEIGHTS)[0], rng.choice(actions)) for _ in range(steps)]


@pytest.fixture
def compact_often(monkeypatch):
    """A log longer than 6 snapshots is compacted: with these small states (a delta carries
    the RNG state whole), every 5-10 holds; workers are up to 6 deltas behind."""
    monkeypatch.setattr(lock, "COMPACT_MIN", 0)
    monkeypatch.setattr(lock, "COMPACT_RATIO", 6.0)


@pytest.fixture
def expiring(monkeypatch):
    """The ``expire`` action: the worker's produce hold loses its lock (its holder key is
    deleted, as its TTL would) after suggesting; its release then writes nothing."""
    own_register = Experiment.register_trial

    def register(self, trial, status="new"):
        world = World.stepping
        if world is not None and world.expire_next:
            world.expire_next = False
            world.storage.client.delete(world.storage.backend.experiment_keys(self.id).lock_holder)
        return own_register(self, trial, status=status)

    monkeypatch.setattr(Experiment, "register_trial", register)
    monkeypatch.setattr(World, "expire_next", False, raising=False)


def run(name, steps, seed=11, refusals=REFUSALS):
    algorithm, space, _ = ALGORITHMS[name]
    return compare_worlds(
        name,
        algorithm,
        space,
        steps,
        seed=seed,
        refusals=refusals,
        workers=WORKERS,
        steps_of=staleness_schedule,
    )


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_versioned_state_matches_orion(name, compact_often, expiring):
    assert accel.install()
    steps = ALGORITHMS[name][2]
    assert run(name, steps) is None


def test_schedules_leave_workers_behind_and_compact(compact_often, expiring, monkeypatch):
    """The schedules do what the oracle needs: holds read nothing, deltas, and snapshots;
    releases write deltas and compactions; some holds expire."""
    modes, writes = [], []
    own_held, own_write = lock.LockClient._held, lock.LockClient._write_of

    def held(self, ek, reply):
        locked = own_held(self, ek, reply)
        if World.stepping is not None and World.stepping.accelerate:
            modes.append((locked.mode, len(locked.deltas)))
        return locked

    def write_of(self, locked):
        mode, raw = own_write(self, locked)
        writes.append(mode)
        return mode, raw

    monkeypatch.setattr(lock.LockClient, "_held", held)
    monkeypatch.setattr(lock.LockClient, "_write_of", write_of)
    assert run("random", 60) is None
    kinds = {mode for mode, _ in modes}
    assert {"current", "log", "snap"} <= kinds, modes
    assert max(n for mode, n in modes if mode == "log") >= 4, modes  # many deltas behind
    assert {"1", "2"} <= set(writes), writes
    assert any(action == "expire" for _, action in staleness_schedule(11, 60))


# -- the oracle fails on a broken log ---------------------------------------------------------
@contextlib.contextmanager
def broken_log(monkeypatch, mangle):
    """Deltas handed to a resident algorithm go through ``mangle`` (after the log's own order
    check: the point is to show the oracle sees what that check guards)."""
    own = lock.LockClient._held

    def held(self, ek, reply):
        locked = own(self, ek, reply)
        if World.stepping is not None and World.stepping.accelerate and locked.mode == "log":
            locked.deltas = mangle(locked.deltas, self, ek, reply)
        return locked

    monkeypatch.setattr(lock.LockClient, "_held", held)
    yield


def _older(self, ek, reply, behind):
    """The delta ``behind`` versions before the first one read (from the log itself)."""
    raws = self.client.lrange(ek.lock_log, 0, -1)
    index = len(raws) - len(reply[5]) - behind
    return load_state(raws[index], self.secret) if index >= 0 else None


MANGLES = {
    "dropped": lambda deltas, *_: deltas[1:] if len(deltas) > 1 else deltas,
    "applied twice": lambda deltas, self, ek, reply: (
        deltas + [deltas[0]] if len(deltas) > 1 else deltas
    ),
    "out of order": lambda deltas, *_: (
        [deltas[1], deltas[0], *deltas[2:]] if len(deltas) > 1 else deltas
    ),
}


@pytest.mark.parametrize("mangle", sorted(MANGLES))
def test_oracle_catches_a_broken_delta_log(mangle, expiring, monkeypatch):
    with broken_log(monkeypatch, MANGLES[mangle]):
        found = run("random", 60)
    assert found is not None, mangle


def test_oracle_catches_a_compaction_that_loses_an_entry(compact_often, expiring, monkeypatch):
    own = lock.LockClient._write_of

    def lossy(self, locked):
        mode, raw = own(self, locked)
        if mode == "1" and World.stepping is not None and World.stepping.accelerate:
            state = load_state(raw, self.secret)
            trials = state["algorithm"]["algorithm"]["registry"]["_trials"]
            if trials:
                trials.pop(next(iter(trials)))
                raw = dump_state(state, self.secret)
        return mode, raw

    monkeypatch.setattr(lock.LockClient, "_write_of", lossy)
    found = run("random", 60)
    assert found is not None


def test_log_order_is_checked_before_anything_is_applied():
    """A log whose versions are not the expected sequence is refused, never applied."""
    client = lock.LockClient(None, None, ttl=10, secret=None)
    state = {"registry": {"_trials": {}}, "rng": 1}
    base = statedelta.capture(state)
    state["registry"]["_trials"]["a"] = object
    raws = [dump_state(dict(statedelta.diff(base, state), version=v), None) for v in (3, 5)]

    class Keys:
        exp_token, lock_log = "exp", "{p:exp}:lock:log"

    with pytest.raises(Exception, match="not the sequence of versions"):
        client._deltas(raws, "e:5", Keys())
    assert [d["version"] for d in client._deltas(raws[:1], "e:3", Keys())] == [3]


# -- statedelta itself ------------------------------------------------------------------------
def _state():
    return {
        "algorithm": {
            "registry": {"_trials": {"a": object(), "b": object()}},
            "algorithm": {
                "registry": {"_trials": {"a": object()}},
                "rng_state": (1, 2),
                "brackets": [1],
            },
            "registry_mapping": {"_mapping": {"a": {"x"}}},
        }
    }


def test_diff_then_apply_gives_the_new_state():
    old = _state()
    base = statedelta.capture(old)
    new = old  # a hold changes its live state in place
    leaf = new["algorithm"]["algorithm"]
    leaf["registry"]["_trials"]["c"] = object()
    leaf["registry"]["_trials"]["a"] = object()  # replaced entry
    new["algorithm"]["registry"]["_trials"].pop("b")
    new["algorithm"]["registry_mapping"]["_mapping"]["a"].add("y")  # grown in place
    leaf["rng_state"] = (3, 4)
    del leaf["brackets"]
    delta = statedelta.diff(base, new)
    entries = {path: set(changed) for path, changed in delta["entries"]}
    assert entries == {
        ("algorithm", "algorithm", "registry", "_trials"): {"a", "c"},
        ("algorithm", "registry_mapping", "_mapping"): {"a"},
    }
    assert delta["gone"] == [(("algorithm", "registry", "_trials"), ["b"])]
    assert delta["dropped"] == [("algorithm", "algorithm", "brackets")]
    assert statedelta.size(delta) == 3 + 1

    replay = _state()
    keys, values, _ = base.entries[("algorithm", "algorithm", "registry", "_trials")]
    replay["algorithm"]["algorithm"]["registry"]["_trials"] = dict(zip(keys, values))
    statedelta.apply(replay, delta)
    assert replay["algorithm"]["algorithm"]["registry"]["_trials"] == leaf["registry"]["_trials"]
    assert set(replay["algorithm"]["registry"]["_trials"]) == {"a"}
    assert replay["algorithm"]["registry_mapping"]["_mapping"]["a"] == {"x", "y"}
    assert replay["algorithm"]["algorithm"]["rng_state"] == (3, 4)
    assert "brackets" not in replay["algorithm"]["algorithm"]


def test_a_registry_that_appears_or_goes_means_a_whole_state():
    state = _state()
    base = statedelta.capture(state)
    state["algorithm"]["algorithm"]["registry"] = {"_trials": {}, "other": 1}  # not a registry
    assert statedelta.diff(base, state) is None


def test_switched_off_holds_read_and_write_whole_states(monkeypatch):
    """ORION_REDIS_STATE_DELTAS=0: every copy-free hold reads the whole state and writes it."""
    monkeypatch.setenv(accel.DELTAS_ENV, "0")
    modes, writes = [], []
    own_held, own_write = lock.LockClient._held, lock.LockClient._write_of

    def held(self, ek, reply):
        locked = own_held(self, ek, reply)
        modes.append(locked.mode)
        return locked

    def write_of(self, locked):
        mode, raw = own_write(self, locked)
        writes.append(mode)
        return mode, raw

    monkeypatch.setattr(lock.LockClient, "_held", held)
    monkeypatch.setattr(lock.LockClient, "_write_of", write_of)
    assert compare_worlds("random", *ALGORITHMS["random"][:2], 20) is None
    assert set(modes) == {"snap"} and set(writes) == {"1"}, (modes, writes)


# -- algocounts: Oríon's is_done counted as the registry changes ------------------------------
def test_counts_are_what_the_oracle_compares(compact_often, expiring, monkeypatch):
    """The oracle's worlds reach the counted path (tracked registries, max_trials set, a
    fidelity space), for both counts."""
    counted = []
    own = algocounts._count

    def count(algorithm, kind):
        counted.append((kind, own(algorithm, kind)))
        return counted[-1][1]

    monkeypatch.setattr(algocounts, "_count", count)
    assert run("random", 40) is None  # random search suggests at the maximum fidelity
    assert {kind for kind, n in counted if n > 0} == {"completed", "top"}


@pytest.mark.parametrize(
    "mutant, name",
    [
        ("stale after adopt", "random"),
        ("deltas not counted", "random"),
        ("fidelity ignored", "asha"),  # ASHA: low fidelities
    ],
)
def test_oracle_catches_a_wrong_count(mutant, name, compact_often, expiring, monkeypatch):
    if mutant == "stale after adopt":
        monkeypatch.setattr(
            algocounts,
            "track",
            lambda registry: registry.__dict__.setdefault(algocounts._COUNTS, {}),
        )
    elif mutant == "deltas not counted":
        monkeypatch.setattr(algocounts, "adjust", lambda registry, changed, gone: None)
    else:
        own = algocounts._counted
        monkeypatch.setattr(
            algocounts, "_counted", lambda key, trial: own((key[0], None, None), trial)
        )
    found = run(name, 40)
    assert found is not None and "differs from Oríon's count" in found, found


def test_a_worker_writing_whole_states_shares_the_experiment(compact_often, expiring, monkeypatch):
    """One of the four workers has versioned state switched off (it reads and writes whole
    states, as a worker with accelerate=false does through Oríon's own path): the others read
    its snapshots, it reads their deltas' result, all as unmodified Oríon."""
    own_step = World.step

    def step(self, worker, action, refusals=REFUSALS):
        if worker == 1:
            monkeypatch.setenv(accel.DELTAS_ENV, "0")
        else:
            monkeypatch.delenv(accel.DELTAS_ENV, raising=False)
        return own_step(self, worker, action, refusals)

    monkeypatch.setattr(World, "step", step)
    assert run("random", 60) is None
    assert run("asha", 40) is None
