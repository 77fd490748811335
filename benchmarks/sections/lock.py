"""Algorithm lock hand-off: spawned processes contending for one experiment's lock; the delay from
one release to the next acquire."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import time
import uuid

from benchmarks.common import _collect, _experiment_config, _redis_storage, _report, _stats_us


def _lock_worker(url, prefix, exp_id, seconds, barrier, outdir, wid):
    try:
        storage = _redis_storage(url, prefix)
        storage.get_algorithm_lock_info(uid=exp_id)  # connect before the start line
        holds = []
        barrier.wait(timeout=300)
        deadline = time.monotonic() + seconds
        k = 0
        while time.monotonic() < deadline:
            with storage.acquire_algorithm_lock(uid=exp_id, timeout=60, retry_interval=1) as lk:
                acquired = time.monotonic_ns()
                k += 1
                lk.set_state({"rng_state": [os.getpid(), k], "registry": {}})
                released = time.monotonic_ns()  # the release starts when the block exits
            holds.append((acquired, released, os.getpid()))
        _report(outdir, wid, holds)
    except BaseException:
        import traceback

        _report(outdir, wid, error=traceback.format_exc())
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass


def section_lock(cfg, server):
    prefix = f"lock-{uuid.uuid4().hex[:6]}"
    storage = _redis_storage(server.url, prefix)
    config = _experiment_config(prefix)
    storage.create_experiment(config)
    nprocs = cfg["lock_procs"]
    ctx = mp.get_context("spawn")
    barrier, outdir = ctx.Barrier(nprocs), tempfile.mkdtemp(prefix="lock-")
    procs = [
        ctx.Process(
            target=_lock_worker,
            daemon=True,
            args=(server.url, prefix, config["_id"], cfg["lock_s"], barrier, outdir, w),
        )
        for w in range(nprocs)
    ]
    for p in procs:
        p.start()
    holds = sorted(tuple(h) for got in _collect(procs, outdir, "lock") for h in got)
    shutil.rmtree(outdir, ignore_errors=True)
    handoffs, other, overlaps = [], [], 0
    for (_, rel, pid), (acq, _, next_pid) in zip(holds, holds[1:]):
        delay = (acq - rel) / 1e9
        if delay < 0:
            overlaps += 1
            continue
        handoffs.append(delay)
        if pid != next_pid:
            other.append(delay)
    span = (holds[-1][1] - holds[0][0]) / 1e9 if holds else 1.0
    return {
        "procs": nprocs,
        "holds": len(holds),
        "holds_per_s": len(holds) / span,
        "overlapping_holds": overlaps,
        "handoff": {
            k.replace("_us", "_ms"): (v / 1e3 if k.endswith("_us") else v)
            for k, v in _stats_us(handoffs).items()
        },
        "handoff_to_other_process": {
            k.replace("_us", "_ms"): (v / 1e3 if k.endswith("_us") else v)
            for k, v in _stats_us(other).items()
        },
        "handoff_samples_ms": [round(h * 1e3, 4) for h in handoffs[:3000]],
    }
