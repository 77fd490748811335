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
ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "hot_path",
    "fetch_trials",
    "per_call_growth",
    "lock_handoff",
    "memory",
    "commands_per_call",
    "lock_hold_anatomy",
    "fleet",
    "fleet_bound",
    "targets",
)
OPS = (
    "register_trial",
    "reserve_trial",
    "update_heartbeat",
    "push_trial_results",
    "set_trial_status",
)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
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
        assert all(
            _number(row[k]) and row[k] > 0 for k in ("median_us", "p99_us", "throughput_per_s")
        ), row


def test_fetch_growth_lock_memory_commands(smoke):
    res = smoke[0]
    kinds = {(r["backend"], r["kind"]) for r in res["fetch_trials"]["rows"]}
    assert {
        ("redis", "cold"),
        ("redis", "repeated, unchanged"),
        ("redis", "repeated, 1% changed"),
        ("ephemeraldb", "cold"),
    } <= kinds
    assert all(_number(r["median_us"]) for r in res["fetch_trials"]["rows"])
    ops = {r["op"] for r in res["per_call_growth"]["rows"]}
    assert {"reserve_trial", "set_trial_status", "fetch_lost_trials", "fetch_pending_trials"} <= ops
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
    res = smoke[0]
    fleet = res["fleet"]
    cap = res["meta"]["config"]["fleet_cap_s"]
    window = min(fleet[b]["elapsed_s"] for b in ("redis", "pickleddb"))
    k = min(fleet[b]["completed"] for b in ("redis", "pickleddb"))
    assert k >= 1
    for backend in ("redis", "pickleddb"):
        f = fleet[backend]
        assert f["cap_s"] == cap  # one cap for both backends
        assert 0 < f["elapsed_s"] <= cap + 30
        ends = f["end_offsets_s"]
        assert ends == sorted(ends) and len(ends) == f["completed"]
        assert all(0 < e <= f["elapsed_s"] for e in ends)  # end_time vs launch, both UTC
        # the same window and the same first K trials for both
        assert f["window_s"] == pytest.approx(window) and f["first_k"] == k
        assert f["completed_in_window"] == sum(e <= window for e in ends)
        assert f["trials_per_s"] == pytest.approx(f["completed_in_window"] / window)
        assert f["time_to_first_k_s"] == ends[k - 1]
        assert f["first_k_trials_per_s"] == pytest.approx(k / ends[k - 1])
    ratio = next(t for t in res["targets"] if t["name"].startswith("fleet trials/s"))["value"]
    assert ratio == pytest.approx(
        fleet["redis"]["first_k_trials_per_s"] / fleet["pickleddb"]["first_k_trials_per_s"]
    )
    cpu = fleet["profile"]["cpu"]
    assert _number(cpu["storage_share"]) and 0 < cpu["storage_share"] < 1
    assert cpu["total_s"] > 0
    # the hunt loop alone: less time than the process, its storage a part of the storage
    assert 0 < cpu["hunt_loop_s"] < cpu["total_s"]
    assert 0 < cpu["storage_hunt_loop_s"] <= cpu["storage_s"]
    assert 0 < cpu["storage_share_hunt_loop"] < 1


def test_lock_hold_anatomy(smoke):
    res = smoke[0]
    an = res["lock_hold_anatomy"]
    sizes = res["meta"]["config"]["anatomy_sizes"]
    rows = {(r["backend"], r["trials"]): r for r in an["rows"]}
    backends = ("redis", "redis-unbatched", "redis-orion-hold", "ephemeraldb", "pickleddb")
    assert set(rows) == {(b, n) for b in backends for n in sizes}
    assert an["pool_size"] == 1
    for (backend, _), row in rows.items():
        assert row["samples"] == res["meta"]["config"]["anatomy_samples"]
        if backend == "redis":  # batched observation: the observe takes no hold
            assert row["observe"] == {"hold_ms": 0, "storage_ms": 0, "orion_ms": 0}
            assert row["per_trial"] == row["produce"]
        for part in (
            ("produce", "per_trial") if backend == "redis" else ("produce", "observe", "per_trial")
        ):
            p = row[part]
            assert all(_number(p[k]) for k in ("hold_ms", "storage_ms", "orion_ms")), row
            # storage time is a part of the hold, Oríon's the rest
            assert 0 < p["storage_ms"] < p["hold_ms"] and 0 < p["orion_ms"] < p["hold_ms"]
        assert row["ceiling_trials_per_s"] == pytest.approx(1000 / row["per_trial"]["hold_ms"])
        assert row["state_bytes"] > 0
    for backend in backends:  # the state grows with the trials
        assert rows[(backend, sizes[-1])]["state_bytes"] > rows[(backend, sizes[0])]["state_bytes"]
    bound = res["fleet_bound"]
    assert bound["anatomy_trials"] in sizes and bound["first_k"] >= 1
    eph = rows[("ephemeraldb", bound["anatomy_trials"])]["ceiling_trials_per_s"]
    assert bound["best_ratio_any_storage"] == pytest.approx(
        eph / res["fleet"]["pickleddb"]["first_k_trials_per_s"]
    )
    assert "### Lock-hold anatomy" in smoke[1] and "out of reach" in smoke[1]


def test_targets_are_evaluated(smoke):
    targets = smoke[0]["targets"]
    assert len(targets) >= 20
    for target in targets:
        assert _number(target["value"]), target
        assert target["pass"] in (True, False)


def test_hold_anatomy_script(tmp_path):
    """benchmarks/studies/hold_anatomy.py --smoke: every algorithm x backend x size, holds
    split into storage and Oríon, and the table comparing copy-free holds with Oríon's own."""
    out = tmp_path / "holds.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "studies" / "hold_anatomy.py"),
            "--smoke",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    res = json.loads(out.read_text())
    rows = {(r["algorithm"], r["backend"], r["trials"]): r for r in res["rows"]}
    assert set(rows) == {
        (a, b, n)
        for a in ("random", "tpe")
        for b in ("batched", "accelerated", "orion-path", "ephemeraldb")
        for n in (10, 20)
    }
    for row in rows.values():
        p = row["per_trial"]
        assert all(_number(p[k]) for k in ("hold_ms", "storage_ms", "orion_ms")), row
        assert 0 < p["storage_ms"] < p["hold_ms"]
        assert row["ceiling_trials_per_s"] == pytest.approx(1000 / p["hold_ms"])
    assert "| random | 20 |" in proc.stdout and "accelerated / Oríon's path" in proc.stdout
    assert "batched / Oríon's path" in proc.stdout


def test_step_scale_script(tmp_path):
    """benchmarks/studies/step_scale.py --smoke: every path x size x staleness measured, bytes moved
    and AOF bytes counted, and the versioned path's writes smaller than whole states'."""
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "studies" / "step_scale.py"),
            "--smoke",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    rows = {(r["path"], r["trials"], r["behind"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {
        (p, n, b) for p in ("versioned", "whole", "orion") for n in (10, 40) for b in (0, 2)
    }
    for row in rows.values():
        assert _number(row["step_ms"]) and row["bytes_per_step"] > 0, row
        assert 0 < row["hold_ms"] < row["step_ms"] and 0 < row["step_cpu_ms"], row
        assert (row["aof_bytes_per_trial"] is None) == (row["behind"] > 0), row
    # what does not depend on timing: the versioned path moves and persists fewer bytes
    versioned, whole = rows[("versioned", 40, 0)], rows[("whole", 40, 0)]
    assert versioned["aof_bytes_per_trial"] < whole["aof_bytes_per_trial"]
    assert "| versioned | 40 | 0 |" in proc.stdout


def test_long_run_script(tmp_path):
    """benchmarks/studies/long_run.py --smoke: two worker processes per path drive one experiment;
    every trial completed exactly once and observed by the stored algorithm state."""
    out = tmp_path / "long.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "studies" / "long_run.py"),
            "--smoke",
            "--out",
            str(out),
            "--png",
            str(tmp_path / "long.png"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = {r["path"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"versioned", "whole"}
    for res in results.values():
        # Oríon may complete a trial or two past max_trials (workers that reserved before the
        # last completion finish theirs); each exactly once all the same
        assert res["completed"] == res["reported"] >= res["trials"], res
        assert res["each_once"] and res["all_observed"] and set(res["exit_codes"]) == {0}
        assert len(res["samples"]) >= 2 and res["samples"][-1]["completed"] >= res["trials"]
