#!/usr/bin/env python
"""One experiment driven to many trials by a fleet of worker processes, its rate over time.

Each worker is a process of its own with Oríon's client on this backend (random search, a
trivial objective computed in-process: what is measured is the coordination, not the
objective), looping ``suggest`` / ``observe`` as an `orion hunt` worker does, until the
experiment has its ``--trials``. Every ``--every`` seconds the driver samples the completed
count, Redis memory, the AOF size and the lock's delta log; the rate over each window is the
fleet's throughput at that experiment size: with every hold constant-cost it stays flat as the
experiment grows, with whole-state holds it falls as 1/N.

Checked at the end, per path: every trial completed exactly once (the ids the workers report
having completed are distinct and are exactly the completed trials in Redis), and the stored
algorithm state has observed every completed trial.

Paths: ``versioned`` (the default backend), ``whole`` (``ORION_REDIS_STATE_DELTAS=0``: copy-free
holds of whole states). Writes benchmarks/results/long_run.json, and long_run.png when
matplotlib is installed (`pip install -e '.[bench]'`).

Usage: python benchmarks/studies/long_run.py [--smoke] [--trials 20000] [--workers 6]
       [--paths versioned,whole] [--whole-trials 5000] [--out PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the package `benchmarks`
from benchmarks.common import RESULTS, _log, _machine, choose_binary  # noqa: E402

SPACE = {"x": "uniform(-5, 5)", "y": "uniform(-5, 5)"}


def _build(url, prefix, name, trials):
    from orion.client import build_experiment

    return build_experiment(
        name,
        space=SPACE,
        algorithm={"random": {"seed": 1}},
        max_trials=trials,
        storage={"type": "redis", "uri": url, "prefix": prefix},
    )


def worker(url, prefix, name, trials, deltas, out):
    """Loop suggest/observe until the experiment is done; write the completed ids to ``out``."""
    import logging
    import warnings

    from orion.core.utils.exceptions import (
        CompletedExperiment,
        ReservationRaceCondition,
        WaitingForTrials,
    )

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    os.environ["ORION_REDIS_STATE_DELTAS"] = deltas
    client = _build(url, prefix, name, trials)
    done = []
    try:
        while True:
            try:
                trial = client.suggest()
            except CompletedExperiment:
                break
            except (WaitingForTrials, ReservationRaceCondition):
                if client.is_done:
                    break
                time.sleep(0.05)
                continue
            value = (trial.params["x"] - 1) ** 2 + trial.params["y"] ** 2
            client.observe(trial, [{"name": "o", "type": "objective", "value": value}])
            done.append(trial.id)
    finally:
        client.close()
        Path(out).write_text(json.dumps(done))


def _sample(redis, storage, exp_id, start):
    ek = storage.backend.experiment_keys(exp_id)
    info = redis.info()
    return {
        "t": time.monotonic() - start,
        "completed": redis.zcard(ek.status("completed")),
        "used_memory": info["used_memory"],
        "aof": info.get("aof_current_size", 0),
        "log_entries": redis.llen(ek.lock_log),
        "log_bytes": int(redis.hget(ek.lock, "logbytes") or 0),
        "snapshot_bytes": redis.hstrlen(ek.lock, "state"),
    }


def run_path(path, url, redis, trials, workers, every, tmp):
    from orion_track_redis import Redis

    prefix, name = f"long-{uuid.uuid4().hex[:8]}", f"long-{path}"
    client = _build(url, prefix, name, trials)  # created before the workers race for it
    exp_id = client._experiment.id
    storage = Redis(uri=url, prefix=prefix)
    deltas = "0" if path == "whole" else "1"
    outs = [Path(tmp) / f"{path}-{i}.json" for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=worker, args=(url, prefix, name, trials, deltas, str(out)))
        for out in outs
    ]
    start = time.monotonic()
    for proc in procs:
        proc.start()
    samples = [_sample(redis, storage, exp_id, start)]
    while any(proc.is_alive() for proc in procs):
        time.sleep(every)
        samples.append(_sample(redis, storage, exp_id, start))
        last = samples[-1]
        _log(
            f"  {path:9} t={last['t']:6.0f}s completed {last['completed']:6}  "
            f"log {last['log_entries']:4} entries"
        )
    for proc in procs:
        proc.join()
    samples.append(_sample(redis, storage, exp_id, start))
    from orion_track_redis.orion_patches import hold as accel

    accel.flush(client._experiment)  # the backlog of the last completions (batched observation)
    reported = [tid for out in outs for tid in json.loads(out.read_text())]
    completed = {t.id for t in storage.fetch_trials(uid=exp_id) if t.status == "completed"}
    state = storage.get_algorithm_lock_info(uid=exp_id).state
    observed = {
        tid
        for tid, t in state["algorithm"]["registry"]["_trials"].items()
        if t.status == "completed"
    }
    client.close()
    return {
        "path": path,
        "trials": trials,
        "workers": workers,
        "samples": samples,
        "exit_codes": [proc.exitcode for proc in procs],
        "completed": len(completed),
        "reported": len(reported),
        "each_once": len(reported) == len(set(reported)) and set(reported) == completed,
        "all_observed": len(observed) == len(completed),
        "duration_s": samples[-1]["t"],
    }


def rates(samples, min_window=0.0):
    """(completed at the window's end, trials/s over the window) for each sample window."""
    out = []
    for a, b in zip(samples, samples[1:]):
        if b["t"] - a["t"] >= min_window and b["completed"] > a["completed"]:
            out.append((b["completed"], (b["completed"] - a["completed"]) / (b["t"] - a["t"])))
    return out


def plot(results, png):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib missing: no plot (pip install -e '.[bench]')")
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for res in results:
        points = rates(res["samples"])
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker=".",
            label=f"{res['path']} ({res['workers']} workers)",
        )
    ax.set_xlabel("trials completed in the experiment")
    ax.set_ylabel("fleet throughput (trials/s)")
    ax.set_title("One experiment, random search, trivial objective")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--trials", type=int, default=20000)
    parser.add_argument(
        "--whole-trials",
        type=int,
        default=5000,
        help="trials for the whole-state path (its rate falls as 1/N)",
    )
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--paths", default="versioned,whole")
    parser.add_argument("--every", type=float, default=10.0, help="sampling period (s)")
    parser.add_argument("--redis-server", help="redis-server binary to start")
    parser.add_argument("--out", default=str(RESULTS / "long_run.json"))
    parser.add_argument("--png", default=str(RESULTS / "long_run.png"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.trials, args.whole_trials, args.workers, args.every = 60, 30, 2, 0.5
    import redis

    from orion_track_redis.testing import RedisServer

    results, started = [], time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="orion-redis-long-") as tmp,
        RedisServer(Path(tmp), binary=choose_binary(args.redis_server)) as server,
    ):
        server.start()
        client = redis.Redis.from_url(server.url)
        client.config_set("appendonly", "yes")
        for path in args.paths.split(","):
            trials = args.whole_trials if path == "whole" else args.trials
            results.append(
                run_path(path, server.url, client, trials, args.workers, args.every, tmp)
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"machine": _machine(), "results": results, "duration_s": time.monotonic() - started},
            indent=1,
        )
    )
    plotted = plot(results, args.png)
    print(
        "| path | workers | trials | s | trials/s (mean) | first / last window trials/s | "
        "each once | all observed | AOF KiB per trial |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|---:|")
    for res in results:
        points = rates(res["samples"])
        last = res["samples"][-1]
        print(
            f"| {res['path']} | {res['workers']} | {res['completed']:,} | "
            f"{res['duration_s']:.0f} | {res['completed'] / res['duration_s']:.1f} | "
            f"{points[0][1] if points else 0:.1f} / {points[-1][1] if points else 0:.1f} | "
            f"{res['each_once']} | {res['all_observed']} | "
            f"{last['aof'] / max(res['completed'], 1) / 1024:.1f} |"
        )
    print(f"\nwrote {out}" + (f" and {args.png}" if plotted else ""))
    ok = all(r["each_once"] and r["all_observed"] and set(r["exit_codes"]) == {0} for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
