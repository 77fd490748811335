"""benchmarks/peers.py --quick end to end: every peer that can start runs every workload at
tiny sizes; a peer whose server cannot start (no PostgreSQL, no optuna) is skipped with its
reason printed, never a failure. Each workload's invariant is checked on this backend: the
fleet completes its trials, a SIGKILLed worker's trial is recovered, the fleet goes on after
redis-server is restarted from its AOF with every trial completed exactly once, and one worker's
RSS is sampled over its trials. The checks of the restart are exercised on a made-up run too,
so that they are known to fail when a trial is lost or run twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_peers_quick(tmp_path):
    out = tmp_path / "peers.json"
    env = dict(os.environ)
    for name in ("ORION_DB_ADDRESS", "ORION_STORAGE_TYPE", "ORION_REDIS_URI"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    meta, results = report["meta"], report["results"]
    for peer, why in meta["skipped"].items():
        print(f"skipped {peer}: {why}")
    assert not meta["errors"], meta["errors"]
    ran = {r["peer"] for r in results["fleet"]}
    assert {"orion-redis", "orion-pickleddb", "orion-redis-api"} <= ran
    assert ran | set(meta["skipped"]) == {
        "orion-redis",
        "orion-pickleddb",
        "optuna-journal-redis",
        "optuna-rdb-pg",
        "optuna-grpc-pg",
        "orion-redis-api",
    }
    for row in results["fleet"]:
        assert row["completed"] >= meta["mode"]["fleet_trials"], row
        assert not row["died"], row
    assert {r["peer"] for r in results["growth"]} >= {"orion-redis", "orion-pickleddb"}
    (ours,) = [r for r in results["faults"] if r["peer"] == "orion-redis"]
    assert len(ours["kills"]) == meta["mode"]["fault_kills"]
    assert ours["recovered"] == len(ours["kills"]), ours["kills"]  # the lease gave it back
    (restart,) = [r for r in results["restart"] if r["peer"] == "orion-redis"]
    assert restart["restart"]["down_s"] > 0 and restart["restart"]["port"], restart["restart"]
    assert restart["continued"] and not restart["died"], restart
    assert restart["exactly_once"] and restart["finished"], restart
    assert restart["lost"] == restart["ran_twice"] == restart["stuck"] == 0, restart
    assert restart["trials_after_restart"] > 0, restart
    assert {r["peer"] for r in results["restart"]} | set(meta["skipped"]) >= {
        "orion-redis",
        "optuna-journal-redis",
    }
    memory = {r["peer"]: r for r in results["memory"]}
    for peer in ("orion-redis", "orion-redis-api"):
        row = memory[peer]
        assert row["completed"] >= meta["mode"]["memory_trials"][peer], row
        assert row["samples"] >= 2 and row["rss_end_mb"] > 10, row
    assert "| goal |" in proc.stdout
    assert "**Redis restart**" in proc.stdout and "**Memory**" in proc.stdout


def _raw(ends, final, trials=2):
    recs = [
        {"w": 0, "trial": t, "x": 1.0, "y": 2.0, "ev": e, "t": 10.0 + i}
        for i, (t, e) in enumerate(ends)
    ]
    return {
        "peer": "orion-redis",
        "algo": "random",
        "workers": 1,
        "trials": trials,
        "capped": None,
        "launch": 0.0,
        "end": 20.0,
        "died": [],
        "info": {},
        "server_cpu_s": None,
        "client_cpu_s": None,
        "records": recs,
        "final": [{"id": t, "state": s} for t, s in final],
        "events": {"kill_t": 10.5, "up_t": 11.5},
    }


def test_restart_checks_can_fail():
    sys.path.insert(0, str(ROOT))
    from benchmarks.peers_analyse import analyse_restart

    good = analyse_restart(
        _raw(
            [("a", "start"), ("a", "end"), ("b", "start"), ("b", "end")],
            [("a", "completed"), ("b", "completed")],
        )
    )
    assert good["exactly_once"] and good["finished"] and good["continued"], good
    lost = analyse_restart(
        _raw(
            [("a", "start"), ("a", "end"), ("b", "start"), ("b", "end")],
            [("a", "completed"), ("b", "reserved")],
        )
    )
    assert not lost["exactly_once"] and lost["lost"] == 1 and lost["stuck"] == 1, lost
    twice = analyse_restart(
        _raw(
            [("a", "start"), ("a", "end"), ("a", "start"), ("a", "end")],
            [("a", "completed")],
            trials=1,
        )
    )
    assert not twice["exactly_once"] and twice["ran_twice"] == 1, twice
    stopped = analyse_restart(_raw([("a", "start"), ("a", "end")], [("a", "completed")]))
    assert not stopped["finished"] and not stopped["continued"], stopped


def test_utilisation_counts_the_objectives_share_of_the_steady_window():
    """Two workers over a 10 s window: one in its objective for 8 s (a trial clipped at the
    window's start), the other for 2 s: 50 %; a missing end (a killed trial) adds nothing."""
    from benchmarks.peers_analyse import utilisation

    recs = [
        {"w": 0, "trial": "a", "ev": "start", "t": 98.0},
        {"w": 0, "trial": "a", "ev": "end", "t": 104.0},  # 4 s inside [100, 110]
        {"w": 0, "trial": "b", "ev": "start", "t": 105.0},
        {"w": 0, "trial": "b", "ev": "end", "t": 109.0},  # 4 s
        {"w": 1, "trial": "c", "ev": "start", "t": 101.0},
        {"w": 1, "trial": "c", "ev": "end", "t": 103.0},  # 2 s
        {"w": 1, "trial": "d", "ev": "start", "t": 104.0},  # killed: never ended
    ]
    assert utilisation(recs, 100.0, 110.0, 2) == 0.5
    assert utilisation(recs, 100.0, 110.0, 4) == 0.25  # twice the workers, the same work
    assert utilisation(recs, 100.0, 100.5, 2) is None  # no steady window to speak of
