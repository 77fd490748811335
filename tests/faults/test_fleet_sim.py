"""Smoke test of the fleet simulator (issue 13): `benchmarks/studies/fleet_sim.py --smoke` in a
subprocess (its own redis-server, real generator processes), then its invariants from the JSON
it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("fleet") / "fleet_sim.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "studies" / "fleet_sim.py"),
            "--smoke",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_trial_completed_once_no_timeout_fifo_held(smoke):
    res, _ = smoke
    assert res["meta"]["mode"] == "smoke" and res["problems"] == []
    for phase in res["sizes"] + res["ramp"]:
        # --smoke: 2 trials per worker in every phase
        assert phase["trials"] == phase["unique_trials"] == phase["workers"] * 2, phase["label"]
        assert phase["lock_timeouts"] == 0 and phase["error_count"] == 0
        assert phase["lock"]["overtaken"] == 0, "a waiter was served before an earlier one"
        assert phase["lock"]["acquisitions"] >= 2 * phase["trials"]  # produce + observe


def test_measures_what_the_sizing_guide_needs(smoke):
    res, stdout = smoke
    (size,) = res["sizes"]
    assert size["cpu_ms_per_trial"] > 0 and size["client_commands_per_trial"] >= 20
    assert size["bytes_in_per_trial"] > 0 and size["clients_peak"] >= size["workers"]
    for call in (
        "reserve_trial",
        "register_trial",
        "push_trial_results",
        "fetch_trials",
        "lock_acquire",
        "lock_release",
    ):
        assert size["calls_ms"][call]["p99"] >= size["calls_ms"][call]["p50"] > 0
    assert size["burst"]["waiters"] == size["workers"]
    assert res["saturation"]["extrapolated_trials_per_s"] > 0
    assert "| workers |" in stdout
