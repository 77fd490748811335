"""The recipe users copy, run as written under a real one-node Slurm: examples/slurm's server job
(`orion-redis serve`) and its job array of `exec orion hunt` (resources scaled down on the
sbatch command line, which overrides the scripts' #SBATCH lines). Skipped, with the reason,
where Slurm cannot run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from orion_track_redis import Redis
from orion_track_redis.testing.slurm import SlurmCluster

AVAILABLE, REASON = SlurmCluster.available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not AVAILABLE, reason=REASON)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "slurm"
TRAIN = """\
import argparse, json, os
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float)
lr = parser.parse_args().lr
with open(os.environ["ORION_RESULTS_PATH"], "w") as f:
    json.dump([{"name": "loss", "type": "objective", "value": (lr - 0.01) ** 2}], f)
"""
SMALL = ("--cpus-per-task=1", "--mem=300M", "--time=30")


def test_the_example_scripts_run_a_fleet_on_their_own_redis(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    venv_bin = str(Path(sys.executable).parent)
    # what a user's shell gives the jobs (sbatch exports it): the environment with the project
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SCRATCH", str(scratch))
    monkeypatch.setenv("SERVE_ARGS", "--bind 127.0.0.1")  # this node's name is loopback
    monkeypatch.setenv("EXPERIMENT", "recipe")
    monkeypatch.setenv("MAX_TRIALS", "10")
    monkeypatch.setenv("WORKERS_PER_TASK", "2")
    for name in ("ORION_REDIS_URI", "ORION_DB_ADDRESS", "ORION_STORAGE_TYPE"):
        monkeypatch.delenv(name, raising=False)
    with SlurmCluster(tmp_path / "slurm", proctrack="cgroup") as cluster:
        (cluster.workdir / "train.py").write_text(TRAIN)
        server = cluster.sbatch((EXAMPLES / "redis-server.sbatch").read_text(), *SMALL)
        array = cluster.sbatch(
            (EXAMPLES / "hunt-array.sbatch").read_text(),
            "--array=1-2",
            f"--dependency=after:{server}",
            *SMALL,
        )
        cluster.wait_gone(array, timeout=300)
        logs = "\n".join(p.read_text() for p in cluster.workdir.glob("orion-*.out"))
        assert cluster.job_states(array) == {1: "COMPLETED", 2: "COMPLETED"}, logs
        uri = (scratch / "orion-redis" / "connection.uri").read_text().strip()
        assert "password_file=" in uri and "@" not in uri, "no secret in the connection file"
        storage = Redis(uri=uri)
        (doc,) = storage.fetch_experiments({"name": "recipe"})
        statuses = [t.status for t in storage.fetch_trials(uid=doc["_id"])]
        assert statuses.count("completed") >= 10 and "reserved" not in statuses, statuses
        cluster.scancel(server)
        cluster.wait_gone(server, timeout=60)
    assert not (scratch / "orion-redis" / "connection.uri").exists()
    assert (scratch / "orion-redis" / "appendonlydir").is_dir(), "the data stays for a restart"
