#!/usr/bin/env python
"""Algorithm-lock hold per trial: copy-free holds vs Oríon's own path vs Legacy+EphemeralDB.

For each algorithm (random search, TPE) and experiment size N, one experiment per backend is
grown to N completed trials in one hold, then timed over a few hunt steps (``suggest`` = one
produce hold, ``observe`` = one observe hold, as an `orion hunt` worker does per trial):

* ``batched``:     this backend with copy-free holds and batched observation (the default,
  ``orion_patches/hold.py``): one hold per trial, the produce observing the previous completion;
* ``accelerated``: copy-free holds, observation at once (``batch_observe=false``);
* ``orion-path``:  this backend with ``accelerate=false`` (Oríon's set_state/state_dict);
* ``ephemeraldb``: Oríon's Legacy storage in memory (no storage cost at all).

Each row gives the median hold per trial, its storage share (encode/decode, Redis) and Oríon's
share, and the fleet ceiling 1000 / hold-per-trial-ms (trials/s, whatever the number of
workers: every trial takes the lock twice, serially).

Usage: python benchmarks/studies/hold_anatomy.py [--quick | --smoke] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the package `benchmarks`
from benchmarks.common import (  # noqa: E402 - the shared helpers of the main benchmark
    RESULTS,
    _legacy,
    _log,
    choose_binary,
    write_rows,
)
from benchmarks.sections.anatomy import (  # noqa: E402 - run.py's lock-hold anatomy
    ANATOMY_SPACE,
    _fill,
    _hold_stats,
    _hunt_step,
    _StorageTimer,
    register_completed,
)

MODES = {
    "full": {"sizes": (100, 500, 2000), "samples": 5},
    "quick": {"sizes": (100, 500), "samples": 3},
    "smoke": {"sizes": (10, 20), "samples": 2},
}
ALGORITHMS = {
    "random": {"random": {"seed": 1}},
    "tpe": {"tpe": {"seed": 1, "n_initial_points": 20}},
}
BACKENDS = ("batched", "accelerated", "orion-path", "ephemeraldb")


def _storage(backend, url):
    from orion_track_redis import Redis

    prefix = f"holds-{uuid.uuid4().hex[:8]}"
    if backend == "ephemeraldb":
        return _legacy("ephemeraldb")
    return Redis(
        uri=url,
        prefix=prefix,
        accelerate=backend != "orion-path",
        batch_observe=backend == "batched",
    )


def _grow(client, n, algo_name):
    """Completed trials up to n in one hold: random search suggests them (as run.py's
    anatomy does); TPE observes sampled points instead (past its initial points it suggests
    one at a time, ~0.4 s each at 500 trials: filling 2,000 that way takes hours)."""
    done = len(client.fetch_trials())
    if done >= n:
        return done
    if algo_name == "random":
        return done + _fill(client, n - done)
    return done + _observe_sampled(client, n - done, seed=done)


def _observe_sampled(client, n, seed):
    """n completed trials at points sampled from the space, observed in one hold: the
    registry a TPE experiment of that size has (its model then fits on all of them)."""
    exp = client._experiment
    trials = exp.space.sample(n, seed=seed + 1)
    for trial in trials:
        trial.experiment = exp.id
    register_completed(exp, trials)
    with exp.acquire_algorithm_lock() as algo:
        algo.observe(trials)
    return len(trials)


def measure(cfg, url):
    from orion.client import build_experiment

    rows = []
    for algo_name, algorithm in ALGORITHMS.items():
        for backend in BACKENDS:
            storage = _storage(backend, url)
            timer = _StorageTimer(storage)
            client = build_experiment(
                f"holds-{algo_name}-{backend}-{uuid.uuid4().hex[:6]}",
                space=ANATOMY_SPACE,
                algorithm=algorithm,
                storage=storage,
                max_trials=10**6,
            )
            for n in cfg["sizes"]:
                _grow(client, n, algo_name)
                steps = [_hunt_step(client, timer) for _ in range(cfg["samples"])]
                per_trial = _hold_stats([(p[0] + o[0], p[1] + o[1]) for p, o in steps])
                rows.append(
                    {
                        "algorithm": algo_name,
                        "backend": backend,
                        "trials": n,
                        "samples": len(steps),
                        "per_trial": per_trial,
                        "produce": _hold_stats([p for p, _ in steps]),
                        "observe": _hold_stats([o for _, o in steps]),
                        "ceiling_trials_per_s": 1000 / per_trial["hold_ms"],
                    }
                )
                _log(
                    f"  {algo_name:6} {backend:11} N={n:<5} hold/trial "
                    f"{per_trial['hold_ms']:8.1f} ms (storage {per_trial['storage_ms']:.1f}, "
                    f"Oríon {per_trial['orion_ms']:.1f})"
                )
            client.close()
    return rows


def _find(rows, **match):
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


def render(rows) -> str:
    lines = [
        "| algorithm | trials | batched ms | accelerated ms | Oríon's path ms | "
        "EphemeralDB ms | batched / Oríon's path | accelerated / Oríon's path | "
        "ceiling batched | ceiling accelerated | ceiling Oríon's path |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["backend"] != "batched":
            continue
        key = {"algorithm": row["algorithm"], "trials": row["trials"]}
        fast = _find(rows, backend="accelerated", **key)
        plain = _find(rows, backend="orion-path", **key)
        eph = _find(rows, backend="ephemeraldb", **key)
        batched_ms, fast_ms = row["per_trial"]["hold_ms"], fast["per_trial"]["hold_ms"]
        plain_ms = plain["per_trial"]["hold_ms"]
        lines.append(
            f"| {row['algorithm']} | {row['trials']} | {batched_ms:.1f} "
            f"(storage {row['per_trial']['storage_ms']:.1f}) | {fast_ms:.1f} "
            f"(storage {fast['per_trial']['storage_ms']:.1f}) | {plain_ms:.1f} | "
            f"{eph['per_trial']['hold_ms']:.1f} | {batched_ms / plain_ms:.2f}x | "
            f"{fast_ms / plain_ms:.2f}x | {row['ceiling_trials_per_s']:.1f}/s | "
            f"{fast['ceiling_trials_per_s']:.1f}/s | {plain['ceiling_trials_per_s']:.1f}/s |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="sizes 100 and 500 only")
    group.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--redis-server", help="redis-server binary to start")
    parser.add_argument("--out", default=str(RESULTS / "hold_anatomy.json"))
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    from orion_track_redis.testing import RedisServer

    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="orion-redis-holds-") as tmp,
        RedisServer(Path(tmp), binary=choose_binary(args.redis_server)) as server,
    ):
        server.start()
        rows = measure(MODES[mode], server.url)
    write_rows(args.out, mode, rows, started, render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
