"""Oríon's ``Experiment.is_done`` from the status indexes (orion_patches/stepreads.py) against
Oríon's own.

Two oracles: in the same world, after every step of a seeded schedule, the patched property
and Oríon's own (kept as ``__wrapped_by_orion_track_redis__``) must agree on the very same
data; and across worlds, a world with the patch and one running Oríon's code must refuse with
``CompletedExperiment`` at the same step. The schedules reach both ways of being done: max_trials
completed (random search) and an exhausted grid with nothing pending (grid search). An
experiment with an EVC parent or children runs Oríon's own property, which counts the tree; the
oracle is shown to fail when the patch counts the wrong statuses.
"""

from __future__ import annotations

import uuid
import warnings

import pytest
from orion.client import build_experiment
from orion.core.worker.experiment import Experiment

from orion_track_redis.orion_patches import hold, stepreads
from test_accel import World, schedule

SPACE = {"x": "uniform(0, 1)"}
CASES = {  # name -> (algorithm, max_trials, steps)
    "random": ({"random": {"seed": 1}}, 9, 40),
    "gridsearch": ({"gridsearch": {"n_values": 5}}, 50, 40),  # a 5-point grid: exhausted
}


def orions_is_done(experiment) -> bool:
    return Experiment.is_done.fget.__wrapped_by_orion_track_redis__.fget(experiment)


def first_disagreement(name):
    algorithm, max_trials, steps = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = World(name, algorithm, SPACE, accelerate=True, max_trials=max_trials)
        plain = World(name, algorithm, SPACE, accelerate=False, max_trials=max_trials)
        try:
            done_seen = False
            for number, (worker, action) in enumerate(schedule(3, steps)):
                seen = fast.step(worker, action), plain.step(worker, action)
                if seen[0] != seen[1]:
                    return f"step {number}: patched world saw {seen[0]}, Oríon's {seen[1]}"
                for client in fast.workers:
                    exp = client._experiment
                    if exp.is_done != orions_is_done(exp):
                        return f"step {number}: is_done {exp.is_done}, Oríon's says otherwise"
                    done_seen |= exp.is_done
            assert done_seen, "the schedule never finished the experiment: it tests nothing"
            return None
        finally:
            fast.close()
            plain.close()


@pytest.mark.parametrize("name", sorted(CASES))
def test_is_done_matches_orion(name):
    assert hold.install()
    assert first_disagreement(name) is None


def test_oracle_catches_wrong_counts(monkeypatch):
    """Counting 'interrupted' as not pending: a worker stops while a trial still waits."""
    monkeypatch.setattr(stepreads, "PENDING", ("new", "reserved"))
    found = [first_disagreement(name) for name in sorted(CASES)]
    assert any(found), found


def test_an_evc_tree_runs_orions_own_count():
    """A child counts its parent's completed trials (through the EVC adapters): the indexes of
    the child alone would say 0 of 3."""
    storage = {"type": "redis", "uri": f"fakeredis://evc-{uuid.uuid4().hex[:6]}"}
    name = f"evc-{uuid.uuid4().hex[:6]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parent = build_experiment(
            name,
            space=SPACE,
            algorithm={"random": {"seed": 1}},
            max_trials=3,
            storage=dict(storage),
        )
        for _ in range(3):
            trial = parent.suggest()
            parent.observe(trial, [{"name": "o", "type": "objective", "value": 1.0}])
        child = build_experiment(
            name,
            space={**SPACE, "y": "uniform(0, 1, default_value=0.5)"},
            algorithm={"random": {"seed": 1}},
            max_trials=3,
            storage=dict(storage),
            branching={"branch_to": f"{name}-child", "enable": True},
        )
    exp = child._experiment
    assert exp._storage.accelerated_holds and not stepreads.alone(exp)
    assert len(exp.fetch_trials()) == 0 and exp.is_done and orions_is_done(exp)
    again = build_experiment(name, storage=dict(storage))._experiment  # the parent: a child now
    assert not stepreads.alone(again) and again.is_done == orions_is_done(again)
    for client in (parent, child):
        client.close()


def test_other_storages_run_orions_own(monkeypatch):
    """A storage without accelerated holds never reaches the index counts."""
    calls = []
    world = World("off", {"random": {"seed": 1}}, SPACE, accelerate=False, max_trials=5)
    try:
        monkeypatch.setattr(
            type(world.storage), "count_by_status", lambda *a: calls.append(a) or [0, 0, 0, 0]
        )
        assert world.workers[0]._experiment.is_done is False
        assert calls == []
    finally:
        world.close()
