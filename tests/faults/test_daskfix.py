"""Oríon's Dask executor on this backend (orion_patches/daskfix.py): a finished trial's result is
kept when
distributed's sync() fails a poll, and a failing objective still breaks its trial. The
differential: unmodified Oríon loses the result of the same future."""

from __future__ import annotations

import uuid

import pytest

pytest.importorskip("distributed", reason="dask.distributed is not installed (the test extra)")

from orion.client import build_experiment  # noqa: E402
from orion.executor.dask_backend import _Future  # noqa: E402

from orion_track_redis.orion_patches import daskfix  # noqa: E402
from orion_track_redis.orion_patches.runner import install  # noqa: E402

install()


class FlakyFuture:
    """A finished dask future whose first reads fail as distributed's sync() does."""

    status = "finished"

    def __init__(self, value, failures=1):
        self.value, self.failures = value, failures

    def done(self):
        return True

    def result(self, timeout=None):
        if self.failures:
            self.failures -= 1
            raise UnboundLocalError(
                "cannot access local variable 'result' where it is not associated with a value"
            )
        return self.value


class FailedFuture(FlakyFuture):
    status = "error"

    def exception(self):
        return ValueError("the objective failed")


@pytest.mark.parametrize("first", ["wait", "get"])
def test_a_failed_poll_does_not_lose_the_result(first):
    future = _Future(FlakyFuture(42))
    with daskfix.active():
        if first == "wait":
            future.wait(0.01)  # Oríon's async_get polls the first future this way
        assert future.get() == 42


@pytest.mark.parametrize("first", ["wait", "get"])
def test_unmodified_orion_loses_it(first):
    future = _Future(FlakyFuture(42))
    with pytest.raises(UnboundLocalError):
        if first == "wait":
            future.wait(0.01)
        future.get()


def test_a_failed_objective_is_still_an_error():
    with daskfix.active(), pytest.raises(ValueError, match="the objective failed"):
        _Future(FailedFuture(None, failures=0)).get()


def _objective(x):
    if x > 0.9:
        raise RuntimeError("too large")
    return [{"name": "y", "type": "objective", "value": x}]


@pytest.mark.slow
def test_workon_with_a_local_cluster_of_processes(redis_server):
    from dask.distributed import Client, LocalCluster

    uri = f"{redis_server.url}/0?prefix=dask-{uuid.uuid4().hex[:8]}"
    experiment = build_experiment(
        f"dask-{uuid.uuid4().hex[:6]}",
        space={"x": "uniform(0, 1)"},
        storage={"type": "redis", "uri": uri},
        max_trials=30,
        max_broken=30,
        algorithms={"random": {"seed": 3}},
    )
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        with experiment.tmp_executor("dask", client=client, n_workers=2):
            experiment.workon(_objective, max_trials=30, n_workers=2, max_broken=30)
    trials = experiment.fetch_trials()
    completed = [t for t in trials if t.status == "completed"]
    broken = [t for t in trials if t.status == "broken"]
    assert len(completed) >= 30
    assert all(t.params["x"] <= 0.9 for t in completed)
    assert all(t.params["x"] > 0.9 for t in broken), "only a failing objective breaks a trial"
