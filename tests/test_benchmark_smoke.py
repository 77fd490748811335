"""Smoke test of the benchmark suite (issue 5): `benchmarks/run.py --smoke` runs every section
in a subprocess and writes a JSON with numbers in each. Not a timing assertion: the numbers of a
tiny run on a shared CI machine mean nothing; the full run is `python benchmarks/run.py`."""
from __future__ import annotations

import json
import numbers
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("hot_path", "fetch_trials", "per_call_growth", "lock_handoff", "memory",
            "commands_per_call", "fleet", "targets")
OPS = ("register_trial", "reserve_trial", "update_heartbeat", "push_trial_results",
       "set_trial_status")


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout, out


def test_every_section_is_there(smoke):
    res, stdout, out = smoke
    for section in SECTIONS:
        assert res.get(section), section
    assert res["meta"]["mode"] == "smoke"
    assert res["meta"]["redis"]["version"] and res["meta"]["redis"]["binary"]
    try:
        import matplotlib  # noqa: F401  (the `bench` extra)
    except ImportError:
        pass
    else:
        assert (out.parent / "benchmarks.png").stat().st_size > 10_000
    assert "### Targets" in stdout


def test_hot_path_has_every_call_backend_and_process_count(smoke):
    rows = smoke[0]["hot_path"]["rows"]
    seen = {(r["backend"], r["procs"], r["op"]) for r in rows}
    for op in OPS:
        for backend in ("redis", "bare", "pickleddb"):
            for procs in (1, 2):
                assert (backend, procs, op) in seen
        assert ("ephemeraldb", 1, op) in seen
    for row in rows:
        assert row["n"] > 0, row
        assert all(_number(row[k]) and row[k] > 0 for k in ("median_us", "p99_us",
                                                           "throughput_per_s")), row


def test_fetch_growth_lock_memory_commands(smoke):
    res = smoke[0]
    kinds = {(r["backend"], r["kind"]) for r in res["fetch_trials"]["rows"]}
    assert {("redis", "cold"), ("redis", "repeated, unchanged"), ("redis", "repeated, 1% changed"),
            ("ephemeraldb", "cold")} <= kinds
    assert all(_number(r["median_us"]) for r in res["fetch_trials"]["rows"])
    ops = {r["op"] for r in res["per_call_growth"]["rows"]}
    assert {"reserve_trial", "set_trial_status", "fetch_lost_trials",
            "fetch_pending_trials"} <= ops
    assert all(_number(r["median_us"]) for r in res["per_call_growth"]["rows"])
    lock = res["lock_handoff"]
    assert lock["holds"] > 1 and lock["overlapping_holds"] == 0
    assert _number(lock["handoff"]["median_ms"]) and _number(lock["handoff"]["p99_ms"])
    assert _number(res["memory"]["bytes_per_trial"]) and res["memory"]["bytes_per_trial"] > 0
    assert _number(res["memory"]["used_memory_delta_per_trial"])
    by_op = {r["op"]: r for r in res["commands_per_call"]["rows"]}
    for op in OPS:
        assert _number(by_op[op]["client_commands_per_call"])
        assert by_op[op]["client_commands_per_call"] >= 1
        assert by_op[op]["commandstats_delta"]


def test_fleet_and_profile(smoke):
    fleet = smoke[0]["fleet"]
    for backend in ("redis", "pickleddb"):
        assert _number(fleet[backend]["trials_per_s"]) and fleet[backend]["elapsed_s"] > 0
    assert fleet["redis"]["completed"] >= 1
    cpu = fleet["profile"]["cpu"]
    assert _number(cpu["storage_share"]) and 0 < cpu["storage_share"] < 1
    assert cpu["total_s"] > 0


def test_targets_are_evaluated(smoke):
    targets = smoke[0]["targets"]
    assert len(targets) >= 20
    for target in targets:
        assert _number(target["value"]), target
        assert target["pass"] in (True, False)
