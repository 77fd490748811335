#!/usr/bin/env python
"""A worker's hunt step as the experiment grows: versioned state vs whole states vs Oríon's path.

For each experiment size N (random search), one experiment per path is grown to N completed
trials in one hold, then a measured worker does hunt steps (``suggest`` + ``observe`` through
Oríon's client, as an `orion hunt` worker does per trial) while a second worker of its own
(another client, another resident algorithm: a "co-holder") takes ``behind`` holds between two
of its steps, so that the measured worker is that many deltas behind when it comes back:

* ``versioned``: this backend's default (copy-free holds, batched observation, a resident
  algorithm that reads only the deltas it lacks, releases that write a delta; state/delta.py);
* ``whole``:     the same with ``ORION_REDIS_STATE_DELTAS=0`` (every hold reads and writes the
  whole state: the path before versioned state);
* ``orion``:     ``accelerate=false`` (Oríon's own set_state/state_dict and is_done).

Each row: the median step (ms), its ratio to the same path's step at the smallest size, the
same for the worker process's CPU time during the step (``time.process_time``: robust on a
shared, loaded machine, where wall time mostly measures the neighbours), the
bytes Redis sent and received during the step (INFO stats), and, with ``behind`` = 0, the AOF
bytes the server wrote per trial (INFO persistence, appendfsync everysec). Sizes are grown
once per path, so a row's N is the trials completed when its steps began.

With ``--algorithms random,tpe,asha``, the same for TPE (grown by observing sampled points) and
ASHA (a fidelity dimension); the "algorithm's suggest" column is the time inside the leaf
algorithm's own ``suggest`` (TPE fits its model there: that share is TPE's, not the storage's).

Usage: python benchmarks/studies/step_scale.py [--quick | --smoke] [--sizes 100,1000,...]
       [--algorithms random,tpe,asha] [--paths versioned,whole,orion] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the package `benchmarks`
from benchmarks.common import RESULTS, _log, choose_binary, write_rows  # noqa: E402
from benchmarks.sections.anatomy import (  # noqa: E402
    ANATOMY_SPACE,
    _fill,
    _objective,
    _StorageTimer,
)

ALGORITHMS = {
    "random": {"random": {"seed": 1}},
    "tpe": {"tpe": {"seed": 1, "n_initial_points": 20}},
    "asha": {"asha": {"seed": 1}},
}
ASHA_SPACE = {**ANATOMY_SPACE, "f": "fidelity(1, 16, base=2)"}

MODES = {
    "full": {
        "sizes": (100, 1000, 2000, 5000, 10000, 20000),
        "behind": (0, 16, 256),
        "samples": 5,
        "paths": ("versioned", "whole", "orion"),
    },
    "quick": {
        "sizes": (100, 1000, 5000),
        "behind": (0, 16),
        "samples": 3,
        "paths": ("versioned", "whole", "orion"),
    },
    "smoke": {
        "sizes": (10, 40),
        "behind": (0, 2),
        "samples": 2,
        "paths": ("versioned", "whole", "orion"),
    },
}
# the whole-state paths cost seconds per hold beyond these sizes: not measured there
AT_MOST = {"whole": 10000, "orion": 5000}
WHOLE_BEHIND = 16  # nor 256 co-holds of a second each per sample


def _client(url, prefix, path, name, algorithm="random"):
    from orion.client import build_experiment

    storage = {"type": "redis", "uri": url, "prefix": prefix, "accelerate": path != "orion"}
    space = ASHA_SPACE if algorithm == "asha" else ANATOMY_SPACE
    return build_experiment(
        name, space=space, algorithm=ALGORITHMS[algorithm], storage=storage, max_trials=10**7
    )


def _grow(client, n, algorithm):
    """Completed trials up to n in one hold: random search suggests them; TPE and ASHA observe
    points sampled from the space (hold_anatomy.py: TPE suggesting them one by one takes hours;
    ASHA suggests only what its lowest rung has room for, 16 at a time)."""
    if algorithm in ("tpe", "asha"):
        from benchmarks.studies.hold_anatomy import _observe_sampled

        return _observe_sampled(client, n, seed=len(client.fetch_trials()))
    return _fill(client, n)


class _SuggestTimer:
    """Time spent in the leaf algorithm's own ``suggest`` (its share of a step)."""

    def __init__(self, client):
        node = client._experiment.algorithm
        while (
            hasattr(node, "algorithm")
            and hasattr(node, "registry_mapping")
            or type(node).__name__ == "InsistSuggest"
        ):
            node = node.algorithm
        own, self.spent = node.suggest, 0.0

        def suggest(num):
            start = time.perf_counter()
            try:
                return own(num)
            finally:
                self.spent += time.perf_counter() - start

        node.suggest = suggest


def _stats(client) -> dict:
    info = client.info()
    return {
        "out": info["total_net_output_bytes"],
        "in": info["total_net_input_bytes"],
        "aof": info.get("aof_current_size", 0),
    }


def _step(client):
    trial = client.suggest()
    client.observe(
        trial, [{"name": "objective", "type": "objective", "value": _objective(trial.params)}]
    )


def _co_holds(co, count):
    """``count`` holds by the co-holder: each writes a delta (the RNG state at least)."""
    exp = co._experiment
    for _ in range(count):
        with exp.acquire_algorithm_lock():
            pass


def measure_path(cfg, url, path, redis, algorithm="random"):
    os.environ["ORION_REDIS_STATE_DELTAS"] = "0" if path == "whole" else "1"
    prefix, name = f"scale-{uuid.uuid4().hex[:8]}", f"scale-{algorithm}-{path}"
    worker = _client(url, prefix, path, name, algorithm)
    co = _client(url, prefix, path, name, algorithm)
    timer = _SuggestTimer(worker)
    holds = _StorageTimer(worker._experiment._storage)
    rows, done = [], 0
    for n in cfg["sizes"]:
        if n > AT_MOST.get(path, n):
            continue
        done += _grow(worker, n - done, algorithm) if n > done else 0
        _step(worker)  # the worker's algorithm is resident again after the fill
        actual = len(worker.fetch_trials())
        if actual < n:  # a row must be measured at the size it names
            raise RuntimeError(f"{algorithm}: grown to {actual} trials, not {n}")
        for behind in cfg["behind"]:
            if path != "versioned" and behind > WHOLE_BEHIND:
                continue
            steps, cpus, held, moved, aof, own = [], [], [], [], [], []
            for _ in range(cfg["samples"]):
                _co_holds(co, behind)
                before, timer.spent, first = _stats(redis), 0.0, len(holds.holds)
                start, cpu = time.perf_counter(), time.process_time()
                _step(worker)
                steps.append((time.perf_counter() - start) * 1e3)
                cpus.append((time.process_time() - cpu) * 1e3)
                held.append(sum(h for h, _ in holds.holds[first:]) * 1e3)
                own.append(timer.spent * 1e3)
                after = _stats(redis)
                moved.append(after["out"] - before["out"] + after["in"] - before["in"])
                aof.append(after["aof"] - before["aof"])
            done += len(steps)
            row = {
                "algorithm": algorithm,
                "path": path,
                "trials": n,
                "behind": behind,
                "step_ms": statistics.median(steps),
                # the worker's own CPU: what a loaded, shared machine does not inflate
                "step_cpu_ms": statistics.median(cpus),
                "suggest_ms": statistics.median(own),
                "hold_ms": statistics.median(held),  # the algorithm-lock holds of the step
                "bytes_per_step": statistics.median(moved),
                "aof_bytes_per_trial": statistics.mean(aof) if behind == 0 else None,
            }
            rows.append(row)
            _log(
                f"  {algorithm} {path:9} N={n:<6} behind={behind:<4} "
                f"step {row['step_ms']:8.1f} ms "
                f"(its suggest {row['suggest_ms']:.1f})  "
                f"moved {row['bytes_per_step'] / 1024:8.1f} KiB"
            )
    worker.close()
    co.close()
    return rows


def render(rows) -> str:
    smallest = {}
    for row in rows:
        smallest.setdefault((row["algorithm"], row["path"], row["behind"]), row)
    lines = [
        "| algorithm | path | trials | behind | step ms | / smallest N | step CPU ms | "
        "/ smallest N | hold ms | algorithm's suggest ms | KiB moved per step | "
        "AOF KiB per trial |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(
        rows,
        key=lambda r: (
            r["algorithm"],
            r["path"] != "versioned",
            r["path"],
            r["behind"],
            r["trials"],
        ),
    ):
        first = smallest[(row["algorithm"], row["path"], row["behind"])]
        ratio = row["step_ms"] / first["step_ms"]
        cpu_ratio = row["step_cpu_ms"] / first["step_cpu_ms"]
        aof = row["aof_bytes_per_trial"]
        lines.append(
            f"| {row['algorithm']} | {row['path']} | {row['trials']:,} | "
            f"{row['behind']} | {row['step_ms']:.1f} | {ratio:.2f}x | "
            f"{row['step_cpu_ms']:.1f} | {cpu_ratio:.2f}x | {row['hold_ms']:.1f} | "
            f"{row['suggest_ms']:.1f} | {row['bytes_per_step'] / 1024:.1f} | "
            f"{'' if aof is None else f'{aof / 1024:.1f}'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="sizes up to 5,000")
    group.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--sizes", help="comma-separated sizes (overrides the mode's)")
    parser.add_argument("--paths", help="comma-separated paths (versioned,whole,orion)")
    parser.add_argument("--behind", help="comma-separated co-holds between steps (0,16,256)")
    parser.add_argument("--samples", type=int, help="steps measured per row")
    parser.add_argument(
        "--algorithms", default="random", help="comma-separated: random, tpe, asha (default random)"
    )
    parser.add_argument("--redis-server", help="redis-server binary to start")
    parser.add_argument("--out", default=str(RESULTS / "step_scale.json"))
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = dict(MODES[mode])
    if args.sizes:
        cfg["sizes"] = tuple(int(s) for s in args.sizes.split(","))
    if args.paths:
        cfg["paths"] = tuple(args.paths.split(","))
    if args.behind:
        cfg["behind"] = tuple(int(b) for b in args.behind.split(","))
    if args.samples:
        cfg["samples"] = args.samples
    import logging
    import warnings

    import redis

    from orion_track_redis.testing import RedisServer

    logging.disable(logging.WARNING)  # Oríon warns about duplicates at these sizes
    warnings.simplefilter("ignore")
    started, rows = time.monotonic(), []
    with (
        tempfile.TemporaryDirectory(prefix="orion-redis-scale-") as tmp,
        RedisServer(Path(tmp), binary=choose_binary(args.redis_server)) as server,
    ):
        server.start()
        client = redis.Redis.from_url(server.url)
        client.config_set("appendonly", "yes")
        for algorithm in args.algorithms.split(","):
            for path in cfg["paths"]:
                rows += measure_path(cfg, server.url, path, client, algorithm)
    write_rows(args.out, mode, rows, started, render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
