"""Lock-hold anatomy: what one algorithm-lock hold costs, storage vs Oríon, per backend and
experiment size (one process, Oríon's own client: suggest = produce, observe)."""

from __future__ import annotations

import contextlib
import datetime
import inspect
import pickle
import statistics
import threading
import time
import uuid

from benchmarks.common import _legacy, _log, _redis_storage

ANATOMY_SPACE = {"x": "uniform(-5, 5)", "y": "uniform(-5, 5)"}


class _StorageTimer:
    """Times the calls Oríon makes into one storage object by wrapping the protocol methods on the
    instance. Only the outermost call counts (a storage method may call another). The lock's
    context manager counts only its __enter__ and __exit__ (the body of the ``with`` is Oríon's)
    and records each hold as (hold seconds, storage seconds within it)."""

    def __init__(self, storage):
        from orion.storage.base import BaseStorageProtocol

        self.depth, self.spent, self.holds = 0, 0.0, []
        self.thread = threading.current_thread()
        for name, _ in inspect.getmembers(BaseStorageProtocol, inspect.isfunction):
            if not name.startswith("_") and name != "acquire_algorithm_lock":
                setattr(storage, name, self._wrap(getattr(storage, name)))
        lock = storage.acquire_algorithm_lock
        storage.acquire_algorithm_lock = lambda *a, **k: _TimedHold(self, lock(*a, **k))

    @contextlib.contextmanager
    def inside(self):
        self.depth += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth:
                self.spent += time.perf_counter() - start

    def _wrap(self, method):
        def timed(*args, **kwargs):
            if threading.current_thread() is not self.thread:  # e.g. a trial's pacemaker
                return method(*args, **kwargs)
            with self.inside():
                return method(*args, **kwargs)

        return timed


class _TimedHold:
    """One hold: from the start of the storage's __enter__ (its first step acquires) to the end
    of its __exit__ (whose last step releases)."""

    def __init__(self, timer, cm):
        self.timer, self.cm = timer, cm

    def __enter__(self):
        self.start, self.spent_before = time.perf_counter(), self.timer.spent
        with self.timer.inside():
            return self.cm.__enter__()

    def __exit__(self, *exc):
        with self.timer.inside():
            out = self.cm.__exit__(*exc)
        self.timer.holds.append(
            (time.perf_counter() - self.start, self.timer.spent - self.spent_before)
        )
        return out


def _anatomy_storage(backend, server, tmp, tag):
    if (
        backend == "redis"
    ):  # copy-free holds and batched observation (orion_patches/hold.py), the default
        return _redis_storage(server.url, f"anatomy-{tag}")
    if backend == "redis-unbatched":  # copy-free holds, observed at once (two holds a trial)
        return _redis_storage(server.url, f"anatomy-{tag}", batch_observe=False)
    if backend == "redis-orion-hold":  # the same backend running Oríon's own hold
        return _redis_storage(server.url, f"anatomy-{tag}", accelerate=False)
    if backend == "pickleddb":
        return _legacy("pickleddb", tmp / f"anatomy-{tag}.pkl")
    return _legacy("ephemeraldb")


def _objective(params):
    return (params["x"] - 2) ** 2 + (params["y"] + 1) ** 2


def register_completed(exp, trials):
    """Give each trial its objective and register it in the experiment as completed."""
    from orion.core.worker.trial import Trial

    now = datetime.datetime.utcnow()
    for trial in trials:
        trial.results = [
            Trial.Result(name="objective", type="objective", value=_objective(trial.params))
        ]
        trial.start_time = trial.end_time = trial.heartbeat = now
        exp.register_trial(trial, status="completed")


def _fill(client, n):
    """Add n completed trials in ONE lock hold: suggested by the algorithm, registered as
    completed and observed, the state n hunt steps leave (one by one would cost O(n²) copies)."""
    exp = client._experiment
    with exp.acquire_algorithm_lock() as algo:
        trials = algo.suggest(n)
        register_completed(exp, trials)
        algo.observe(trials)
    return len(trials)


def _hunt_step(client, timer):
    """What a hunt worker does for one trial: suggest (one produce under the lock, as no trial
    is pending) and observe (under the lock again, unless observation is batched: then the
    next produce observes it). Returns (produce hold, observe hold); a batched observe's hold
    is (0, 0) (its backlog record is counted in the step's storage time, not in a hold)."""
    first = len(timer.holds)
    trial = client.suggest()
    client.observe(trial, _objective(trial.params))
    holds = timer.holds[first:]
    batched = getattr(client._experiment._storage, "batched_observation", False)
    assert len(holds) == (1 if batched else 2), holds
    return holds[0], holds[1] if len(holds) == 2 else (0.0, 0.0)


def _hold_stats(holds):
    """Median hold, storage and Oríon (hold - storage) ms of a list of (hold_s, storage_s)."""
    return {
        "hold_ms": statistics.median(h for h, _ in holds) * 1e3,
        "storage_ms": statistics.median(s for _, s in holds) * 1e3,
        "orion_ms": statistics.median(h - s for h, s in holds) * 1e3,
    }


def section_anatomy(cfg, server, tmp):
    """Per backend, one experiment grown to each size N (``_fill``), then ``anatomy_samples``
    timed hunt steps at that size (the experiment grows by that many trials meanwhile)."""
    from orion.client import build_experiment

    rows = []
    for backend in ("redis", "redis-unbatched", "redis-orion-hold", "ephemeraldb", "pickleddb"):
        tag = f"{backend}-{uuid.uuid4().hex[:6]}"
        storage = _anatomy_storage(backend, server, tmp, tag)
        timer = _StorageTimer(storage)
        client = build_experiment(
            f"anatomy-{tag}",
            space=ANATOMY_SPACE,
            algorithm={"random": {"seed": 1}},
            storage=storage,
        )
        done = 0
        for n in cfg["anatomy_sizes"]:
            t0 = time.monotonic()
            done += _fill(client, n - done)
            fill_s = time.monotonic() - t0
            steps = [_hunt_step(client, timer) for _ in range(cfg["anatomy_samples"])]
            done += len(steps)
            produce = _hold_stats([p for p, _ in steps])
            observe = _hold_stats([o for _, o in steps])
            trial = _hold_stats([(p[0] + o[0], p[1] + o[1]) for p, o in steps])
            state = client._experiment.algorithm.state_dict
            rows.append(
                {
                    "backend": backend,
                    "trials": n,
                    "samples": len(steps),
                    "produce": produce,
                    "observe": observe,
                    "per_trial": trial,
                    "ceiling_trials_per_s": 1000 / trial["hold_ms"],
                    "state_bytes": len(pickle.dumps(state)),
                }
            )
            _log(
                f"  anatomy {backend:11} N={n:<4}: hold/trial {trial['hold_ms']:.1f} ms "
                f"(storage {trial['storage_ms']:.1f}, Oríon {trial['orion_ms']:.1f}), "
                f"filled in {fill_s:.1f}s"
            )
        client.close()
    return {"rows": rows, "pool_size": _hunt_pool_size()}


def _hunt_pool_size():
    """Trials per produce in `orion hunt`: workon's pool_size, 0 = the executor's n_workers."""
    import orion.core

    worker = orion.core.config.worker
    return worker.pool_size or worker.n_workers
