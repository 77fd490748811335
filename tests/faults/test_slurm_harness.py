"""Smoke test of the single-node Slurm harness (orion_track_redis.testing.slurm): an array job
runs every task once. Skipped, with the reason, where Slurm cannot start (not root, not
installed, ports 6817/6818 taken)."""

from __future__ import annotations

import pytest

from orion_track_redis.testing.slurm import SlurmCluster

AVAILABLE, REASON = SlurmCluster.available()

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not AVAILABLE, reason=REASON)]


def test_array_job_runs_every_task(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = f'#!/bin/sh\necho "$SLURM_ARRAY_TASK_ID" > {out}/task-"$SLURM_ARRAY_TASK_ID"\n'
    with SlurmCluster(tmp_path / "slurm", proctrack="linuxproc") as cluster:
        job = cluster.sbatch(script, "--array=0-3")
        cluster.wait_gone(job, timeout=60)
        assert cluster.job_states(job) == dict.fromkeys(range(4), "COMPLETED")
    assert sorted(p.name for p in out.iterdir()) == [f"task-{i}" for i in range(4)]
    for i in range(4):
        assert (out / f"task-{i}").read_text() == f"{i}\n"
