"""The memory workload of benchmarks/peers.py: one long-lived worker process doing N trials of
a trivial objective alone on a fresh experiment/study, its RSS (VmRSS of /proc/PID/status)
sampled at intervals and paired with the number of trials completed by then; the server's
memory (Redis ``used_memory``, PostgreSQL ``pg_database_size``) per trial over the run.

For ``orion hunt`` the sampled process is the hunt itself (each trial's objective is a child
process that exits, not counted); for Oríon's Python API and Optuna the objective runs in the
sampled process."""

from __future__ import annotations

import bisect
import subprocess
import time
import uuid
from pathlib import Path

from benchmarks.peers_common import API, OURS, REDIS_PEERS, Env, _log
from benchmarks.peers_fleet import prepare, read_records
from benchmarks.sections.fleet import stop_workers

WHAT = {
    OURS: "`orion hunt` process (objective: a child process per trial)",
    API: "Oríon Python API suggest/observe loop, objective in-process (not `orion hunt`)",
    "optuna": "`study.optimize(n_trials=N)`, objective in-process",
}


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _server_size(env: Env, peer: str):
    if peer in REDIS_PEERS:
        client = env.redis.client()
        try:
            return client.info("memory")["used_memory"], "Redis used_memory delta"
        finally:
            client.close()
    if peer == "optuna-rdb-pg":
        return env.pg.database_size(), "pg_database_size delta"
    return None, None


def run_memory(env: Env, peer: str, n: int, every_s: float, cap_s: float) -> dict:
    wdir = env.tmp / f"memory-{peer}-{uuid.uuid4().hex[:4]}"
    (wdir / "runs").mkdir(parents=True)
    size0, what_size = _server_size(env, peer)
    cmds, summary, _ = prepare(env, peer, wdir, "memory", n, "random", 0.0, n_trials=n)
    cmd, penv = cmds(0)
    with open(wdir / "worker-0.log", "w") as log:
        launch = time.time()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=penv, cwd=wdir, start_new_session=True
        )
        samples, capped, next_note = [], False, time.monotonic() + 60
        while proc.poll() is None:
            rss = rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.time(), rss))
            if time.monotonic() >= next_note:
                ended = sum(1 for r in read_records(wdir / "runs") if r["ev"] == "end")
                _log(f"    {peer}: {time.time() - launch:.0f}s, {ended} trials, {rss:.0f} MB")
                next_note = time.monotonic() + 60
            if time.time() - launch > cap_s:
                capped = True
                stop_workers([proc], grace_s=15.0)
                break
            time.sleep(every_s)
    end = time.time()
    size1, _ = _server_size(env, peer)
    ends = sorted(r["t"] for r in read_records(wdir / "runs") if r["ev"] == "end")
    final = summary()
    completed = sum(1 for t in final if t["state"].lower() in ("completed", "complete"))
    curve = [(bisect.bisect_right(ends, t), rss) for t, rss in samples]
    curve = [(k, rss) for k, rss in curve if k >= 1]  # from the first completed trial on
    out = {
        "peer": peer,
        "what": WHAT.get(peer, WHAT["optuna"]),
        "trials": n,
        "completed": completed,
        "capped": capped,
        "exit": proc.returncode,
        "wall_s": end - launch,
        "trials_per_s": completed / (end - launch) if end > launch else None,
        "samples": len(curve),
        "server_bytes_per_trial": (
            (size1 - size0) / completed if size0 is not None and completed else None
        ),
        "server_what": what_size,
    }
    if curve:
        tenth = next((c for c in curve if c[0] >= max(1, len(ends) // 10)), curve[0])
        last = curve[-1]
        out.update(
            rss_first_mb=curve[0][1],
            rss_first_at=curve[0][0],
            rss_tenth_mb=tenth[1],
            rss_tenth_at=tenth[0],
            rss_end_mb=last[1],
            rss_end_at=last[0],
            rss_max_mb=max(rss for _, rss in curve),
            growth_mb_per_1k=(
                (last[1] - tenth[1]) / (last[0] - tenth[0]) * 1000 if last[0] > tenth[0] else None
            ),
            curve=curve[:: max(1, len(curve) // 40)] + [last],
        )
    return out
