"""64 real `orion hunt` processes on one experiment (issue 13, part 1), against a redis-server
this test starts. Invariants on the data: every trial completed exactly once, no worker died,
no trial was declared lost while its worker was alive.

Several rounds: 256 trials (4 per worker) with a 5 s objective. This holds thanks to the
copy-free lock holds (orion_patches/hold.py) and the FIFO lock: before them, Oríon's hold grew to
0.3-0.8 s
per trial within a few hundred trials and 40-49 of 64 workers died of Oríon's fixed 60 s lock
timeout (LockAcquisitionTimeout, or LazyWorkers after a suggest that timed out); with them,
benchmarks/studies/fleet_real.py measured here 64 workers, 320 trials, no death, lock wait max
17.5 s
(2026-12-04), the 2 cores being the limit. ORION_HEARTBEAT 12: lost after 60 s, which Oríon
0.2.7's pacemaker (a beat every 60 s whatever the setting) cannot undercut for a trial of a few
seconds; idle_timeout 300 s keeps a worker that finished early from counting the others' last
trials as idleness. ~3-4 min here, ~2 min of it start-up (64 Pythons importing Oríon, ~3.5-4 s
of CPU each, on 2 cores). Peak memory ~11-12 GiB (PSS; the RSS sum is ~24 GiB because each
hunt's forked pool process shares its pages).
"""

from __future__ import annotations

import collections
import importlib.util
import sys
import uuid
from pathlib import Path

import pytest

from orion_track_redis import Redis
from orion_track_redis.testing import RedisServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

WORKERS = 64
TRIALS = 256  # the experiment's max_trials: 4 rounds (see the module docstring)
SLEEP_S = 5.0  # the objective: "a few seconds", so the fleet is many lock holds deep
HEARTBEAT_S = 12  # ORION_HEARTBEAT: lost after 60 s without heartbeat (the pacemaker: 60 s)
IDLE_TIMEOUT_S = 300  # Oríon's default (60 s) counts waiting for the others' trials as idle


def _load_fleet():
    spec = importlib.util.spec_from_file_location(
        "fleet_real", ROOT / "benchmarks" / "studies" / "fleet_real.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fleet = _load_fleet()


class _Exp:
    def __init__(self, exp_id):
        self.id = self._id = exp_id


def violations(raw, lost_seen) -> list[str]:
    """What breaks the fleet's invariants in one run (empty: none)."""
    out = []
    died = [w for w in raw["workers"] if w["exit"] != 0]
    out += [f"worker {w['index']} exited {w['exit']}: {w['last_line']}" for w in died]
    if raw["capped"]:
        out.append(f"the fleet was stopped ({raw['capped']} cap)")
    statuses = collections.Counter(t["status"] for t in raw["trials"])
    if set(statuses) != {"completed"}:
        out.append(f"trials not completed: {dict(statuses)}")
    if statuses["completed"] < raw["spec"]["trials"]:
        out.append(f"{statuses['completed']} completed < max_trials {raw['spec']['trials']}")
    runs = collections.Counter(r["trial"] for r in raw["runs"])
    completed = {t["id"]: t for t in raw["trials"] if t["status"] == "completed"}
    out += [f"trial {t} ran {n} times" for t, n in runs.items() if n > 1]
    out += [f"trial {t} completed without running" for t in completed if t not in runs]
    out += [f"trial {t} ran but is not completed" for t in runs if t not in completed]
    for r in raw["runs"]:  # the stored result is the one computed from the stored params
        stored = completed.get(r["trial"])
        if stored and (
            stored["objective"] != r["value"]
            or (stored["params"]["/x"], stored["params"]["/y"]) != (r["x"], r["y"])
        ):
            out.append(f"trial {r['trial']}: stored {stored} but ran {r}")
    dup = fleet.duplicates(raw)["params_completed_more_than_once"]
    if dup:
        out.append(f"{dup} parameter sets completed more than once")
    out += [
        f"trial {t} reported lost at {s:.0f}s (this fleet kills no worker)" for s, t in lost_seen
    ]
    return out


def _peak_concurrency(runs) -> int:
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def run_checked_fleet(tmp_path, heartbeat, spec, stop_when_lost=False):
    """Run ``spec`` (plain `orion hunt`) on a fresh redis-server; sample lost trials from this
    process every 2 s with the workers' threshold (5 x ORION_HEARTBEAT)."""
    heartbeat(spec.heartbeat_s)
    with RedisServer(tmp_path / "redis") as server:
        server.start()
        uri = f"{server.url}/0?prefix=fleet64-{uuid.uuid4().hex[:6]}"
        storage = Redis(uri=uri)
        lost_seen = []

        def sample_lost(elapsed):
            docs = storage.fetch_experiments({"name": "fleet-redis"})
            if docs:
                lost_seen.extend(
                    (elapsed, t.id) for t in storage.fetch_lost_trials(_Exp(docs[0]["_id"]))
                )
            return stop_when_lost and lost_seen

        raw = fleet.run_fleet(
            spec,
            "redis",
            uri,
            tmp_path / "fleet",
            redis_pid=server.pid,
            on_tick=sample_lost,
            log=lambda m: None,
        )
        locked = storage.get_algorithm_lock_info(uid=raw["experiment_id"]).locked
    return raw, lost_seen, locked


def test_64_hunts_complete_every_trial_once(tmp_path, heartbeat):
    spec = fleet.FleetSpec(
        workers=WORKERS,
        trials=TRIALS,
        sleep_s=SLEEP_S,
        heartbeat_s=HEARTBEAT_S,
        idle_timeout=IDLE_TIMEOUT_S,
        cap_s=500,
        instrument=False,
    )
    raw, lost_seen, locked = run_checked_fleet(tmp_path, heartbeat, spec)
    problems = violations(raw, lost_seen)
    assert not problems, "\n".join(problems[:40])
    assert not locked, "the algorithm lock is free once the fleet is done"
    # it was a fleet: all 64 workers ran trials, most of them at the same time
    assert {r["worker"] for r in raw["runs"]} == set(range(WORKERS))
    assert _peak_concurrency(raw["runs"]) >= WORKERS // 2


def test_the_checks_catch_a_live_trial_declared_lost(tmp_path, heartbeat):
    """The oracle, broken on purpose: a heartbeat of 1 s (lost after 5 s) under an 8 s objective
    declares live trials lost, and the checks above must say so."""
    spec = fleet.FleetSpec(
        workers=4, trials=8, sleep_s=8.0, heartbeat_s=1, cap_s=240, instrument=False
    )
    raw, lost_seen, _ = run_checked_fleet(tmp_path, heartbeat, spec, stop_when_lost=True)
    problems = violations(raw, lost_seen)
    assert any("reported lost" in p for p in problems), problems
