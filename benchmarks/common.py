"""What several parts of the benchmark suite share: its paths and modes, the hot-path calls, trials
and experiments of a typical shape, the storages under test, worker processes' reports, statistics,
number formatting, the machine's description and the redis-server binary."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
# where the JSON, the plot and the fleet profiles go (--out's folder; set by run.py's main
# and fleet16.py before the fleet section copies its profiles there)
OUTDIR = RESULTS
DOCS = ROOT / "docs"
OPS = (
    "register_trial",
    "reserve_trial",
    "update_heartbeat",
    "push_trial_results",
    "set_trial_status",
)

MODES = {
    "full": dict(
        procs=(1, 8, 32),
        phase_s=1.5,
        pickled_phase_s=2.0,
        max_calls=50000,
        background=1000,
        fetch_sizes=(1000, 10000, 100000),
        ephemeral_sizes=(1000, 10000),
        pending=400,
        per_call_samples=200,
        fetch_repeats=5,
        lock_procs=8,
        lock_s=8.0,
        mem_trials=2000,
        cmd_calls=1000,
        fleet_workers=16,
        fleet_trials=300,
        fleet_cap_s=240.0,
        anatomy_sizes=(100, 500),
        anatomy_samples=8,
    ),
    "quick": dict(
        procs=(1, 8),
        phase_s=0.7,
        pickled_phase_s=1.5,
        max_calls=20000,
        background=1000,
        fetch_sizes=(1000, 10000),
        ephemeral_sizes=(1000, 10000),
        pending=300,
        per_call_samples=100,
        fetch_repeats=3,
        lock_procs=8,
        lock_s=3.0,
        mem_trials=1000,
        cmd_calls=300,
        fleet_workers=4,
        fleet_trials=40,
        fleet_cap_s=120.0,
        anatomy_sizes=(20, 150),
        anatomy_samples=5,
    ),
    "smoke": dict(
        procs=(1, 2),
        phase_s=0.1,
        pickled_phase_s=0.1,
        max_calls=2000,
        background=20,
        fetch_sizes=(200,),
        ephemeral_sizes=(200,),
        pending=60,
        per_call_samples=20,
        fetch_repeats=2,
        lock_procs=2,
        lock_s=0.5,
        mem_trials=100,
        cmd_calls=30,
        fleet_workers=1,
        fleet_trials=2,
        fleet_cap_s=60.0,
        anatomy_sizes=(5, 20),
        anatomy_samples=3,
    ),
}


def _stats_us(samples_s):
    """median / p99 / mean in µs of a list of durations in seconds."""
    if not samples_s:
        return {"n": 0, "median_us": None, "p99_us": None, "mean_us": None}
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, max(0, int(round(len(ordered) * 0.99)) - 1))]
    return {
        "n": len(ordered),
        "median_us": statistics.median(ordered) * 1e6,
        "p99_us": p99 * 1e6,
        "mean_us": statistics.fmean(ordered) * 1e6,
    }


def _timed(fn, n):
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


class _Exp:
    """What the storage protocol reads from an experiment: ``id`` (ours) and ``_id`` (Legacy)."""

    def __init__(self, exp_id):
        self.id = self._id = exp_id


def _params(a, b):
    return [
        {"name": "/x", "type": "real", "value": float(a) + b / 1e6},
        {"name": "/y", "type": "integer", "value": int(b)},
    ]


def _new_trial(exp_id, a, b, status="new"):
    from orion.core.worker.trial import Trial

    return Trial(
        experiment=exp_id,
        status=status,
        params=_params(a, b),
        submit_time=datetime.datetime.utcnow(),
    )


def _completed_trial(exp_id, a, b):
    """A typical finished trial: two parameters, one objective."""
    from orion.core.worker.trial import Trial

    now = datetime.datetime.utcnow()
    return Trial(
        experiment=exp_id,
        status="completed",
        params=_params(a, b),
        results=[{"name": "objective", "type": "objective", "value": float(a * b) / 7}],
        submit_time=now,
        start_time=now,
        end_time=now,
        heartbeat=now,
        worker=None,
    )


def _set_result(trial, value):
    from orion.core.worker.trial import Trial

    trial.results = [Trial.Result(name="objective", type="objective", value=value)]


def _experiment_config(name):
    return {
        "name": name,
        "version": 1,
        "algorithm": {"random": {"seed": 1}},
        "space": {"/x": "uniform(0, 1)", "/y": "uniform(0, 100, discrete=True)"},
        "metadata": {"user": "bench"},
        "refers": {},
    }


def _redis_storage(url, prefix, **options):
    from orion_track_redis import Redis

    return Redis(uri=url, prefix=prefix, **options)


def _legacy(kind, path=None):
    from orion.storage.legacy import Legacy

    if kind == "pickleddb":
        return Legacy(database={"type": "pickleddb", "host": str(path)})
    return Legacy(database={"type": "ephemeraldb"})


def _bulk_legacy(storage, exp_id, n):
    """``n`` finished trials in a Legacy database in one write (register_trial one by one
    costs O(n) each in PickledDB)."""
    if n:
        storage._db.write(
            "trials", data=[_completed_trial(exp_id, -1, i).to_dict() for i in range(n)]
        )


# ------------------------------------------------------------------------------------------------
# worker processes (hot path, lock hand-off): each reports in a file of its own
def _report(outdir, wid, value=None, error=None):
    """A worker's result as a file (written then renamed): no queue that a dying process could
    leave locked."""
    path = Path(outdir) / f"{wid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"value": value, "error": error}))
    tmp.rename(path)


def _collect(procs, outdir, what, timeout=1200):
    """Wait for every worker process, then read their reports; raise on any failure."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    out, errors = [], []
    for wid, p in enumerate(procs):
        path = Path(outdir) / f"{wid}.json"
        if not path.exists():
            errors.append(f"{what} worker {wid} exited with {p.exitcode} without a report")
            continue
        report = json.loads(path.read_text())
        if report["error"]:
            errors.append(f"{what} worker {wid} failed:\n{report['error']}")
        out.append(report["value"])
    if errors:  # the root cause, not the BrokenBarrierError it caused in the others
        errors.sort(key=lambda e: "BrokenBarrierError" in e)
        raise RuntimeError(errors[0])
    return out


# ------------------------------------------------------------------------------------------------
# lookups and formatting (targets, tables, logs)
def _find(rows, **match):
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(v, digits=2):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.{digits}f}"
    return str(v)


def _log(message):
    print(message, flush=True)


# ------------------------------------------------------------------------------------------------
# the machine, the versions, the server binary
def _loadavg():
    """1/5/15-minute load averages: other work on the machine skews every number."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def _machine():
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory_gib": mem,
        "cpu": cpu,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("orion", "redis", "hiredis", "orion-track-redis"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def choose_binary(explicit=None):
    from orion_track_redis.server.binaries import find_redis_server

    if explicit:
        return explicit
    if os.path.isfile("/usr/bin/redis-server") and os.access("/usr/bin/redis-server", os.X_OK):
        return "/usr/bin/redis-server"
    return find_redis_server()


def write_rows(out, mode: str, rows: list, started: float, table: str) -> None:
    """A one-question script's ending: its rows (with the mode, the machine and the run's
    duration) as JSON in ``out``, then its table and where it went on stdout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    duration = time.monotonic() - started
    record = {"mode": mode, "machine": _machine(), "rows": rows, "duration_s": duration}
    out.write_text(json.dumps(record, indent=1))
    print(table)
    print(f"\nwrote {out} in {duration:.0f} s")
