"""End to end: separate `orion hunt` processes on one experiment against a real redis-server,
then Oríon's own commands on the result."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import hunt_config
from orion_track_redis import Redis
from orion_track_redis.ops.cli import main

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ORION = str(Path(sys.executable).with_name("orion"))


def _config(tmp_path, uri) -> Path:
    return hunt_config(tmp_path / "orion_config.yaml", uri, tmp_path / "trials")


def _orion(uri, *args, timeout=300):
    """Run an Oríon command configured through environment variables.

    Oríon 0.2.7's `orion status` re-loads experiments with the *global* storage config, ignoring
    --config, so the admin commands get the storage from ORION_STORAGE_TYPE/ORION_DB_ADDRESS
    (the documented way for those commands).
    """
    env = dict(os.environ, ORION_REDIS_URI="", ORION_STORAGE_TYPE="redis", ORION_DB_ADDRESS=uri)
    proc = subprocess.run([ORION, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"orion {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _registered_root(storage, name) -> bool:
    docs = storage.fetch_experiments({"name": name})
    return bool(docs) and docs[0].get("refers", {}).get("root_id") == docs[0]["_id"]


def _sample_status(capsys, uri, storage, name, samples):
    """`orion-redis status --json` while the hunt runs, bracketed by two storage reads."""
    docs = storage.fetch_experiments({"name": name})
    if not docs:
        return
    before = len(storage.fetch_trials(uid=docs[0]["_id"]))
    assert main(["--uri", uri, "status", name, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    after = len(storage.fetch_trials(uid=docs[0]["_id"]))
    total = sum(
        row[s] for s in ("new", "reserved", "suspended", "completed", "interrupted", "broken")
    )
    assert before <= total <= after, (before, row, after)
    samples.append(row)


def test_four_hunts_share_one_experiment(redis_server, tmp_path, capsys):
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    uri = f"{redis_server.url}/0?prefix={prefix}"
    config = _config(tmp_path, uri)
    name = "e2e"
    cmd = [
        ORION,
        "hunt",
        "--config",
        str(config),
        "-n",
        name,
        "--max-trials",
        "40",
        sys.executable,
        str(EXAMPLES / "objective.py"),
        "-x~uniform(-5, 5)",
        "-y~uniform(-5, 5)",
    ]
    env = dict(os.environ, ORION_REDIS_URI="")

    def start():
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
        )

    # The others start once the first has registered the experiment as a root: Oríon 0.2.7's
    # builder races when several create it at once (a worker that loaded the experiment before
    # its creator set refers.root_id writes refers back with root_id None, whatever the
    # storage; `orion list` then shows nothing). Not ours to test here: see docs/guarantees.md.
    storage = Redis(uri=uri)
    workers = [start()]
    deadline = time.monotonic() + 120
    while not _registered_root(storage, name) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers += [start() for _ in range(3)]
    samples = []
    deadline = time.monotonic() + 600
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        _sample_status(capsys, uri, storage, name, samples)
        time.sleep(0.5)
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, out in zip(workers, outputs):
        assert worker.returncode == 0, out[-3000:]

    (exp,) = storage.fetch_experiments({"name": name})
    trials = storage.fetch_trials(uid=exp["_id"])
    completed = [t for t in trials if t.status == "completed"]
    assert len(completed) >= 40
    assert len({t.id for t in completed}) == len(completed), "no trial completed twice"
    assert all(t.objective is not None for t in completed)
    assert [t for t in trials if t.status == "reserved"] == [], "none left reserved"
    assert not storage.get_algorithm_lock_info(uid=exp["_id"]).locked
    assert len(samples) >= 5, "status was sampled while the fleet ran"
    completed_seen = [row["completed"] for row in samples]
    assert completed_seen == sorted(completed_seen) and max(completed_seen) > 0
    assert any(row["reserved"] > 0 for row in samples), "a live fleet shows reserved trials"
    _sample_status(capsys, uri, storage, name, samples)
    assert samples[-1]["completed"] == len(completed) and samples[-1]["reserved"] == 0

    status = _orion(uri, "status", "-n", name).stdout
    assert re.search(rf"^completed\s+{len(completed)}\s", status, re.M), status
    assert f"{name}-v1" in _orion(uri, "list").stdout
    info = _orion(uri, "info", "-n", name).stdout
    assert f"trials completed: {len(completed)}" in info, info
    assert "successfully released" in _orion(uri, "db", "release", name, "--force").stdout
    removed = _orion(uri, "db", "rm", name, "--force").stdout
    assert f"{len(trials)} trials deleted" in removed and "1 experiments deleted" in removed
    assert storage.fetch_experiments({"name": name}) == []
    assert storage.fetch_trials(uid=exp["_id"]) == []
    assert storage.get_algorithm_lock_info(uid=exp["_id"]) is None
