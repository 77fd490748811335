"""A real Slurm (slurmctld, slurmd, munged started here) runs an ``orion hunt`` fleet as a job
array on a real redis-server, under both ProctrackTypes, while its tasks are cancelled,
signalled, hard-killed and requeued mid-trial (orion_track_redis.testing.slurm_fleet). Each run
must end with every trial completed, none left reserved, no trial run twice at the same time,
and every faulted task gone within KillWait. Skipped, with the reason, where Slurm cannot run
(not root, not installed: .ci/run installs Debian's slurm-wlm and munge)."""

from __future__ import annotations

import uuid

import pytest

from orion_track_redis import Redis
from orion_track_redis.store import lease
from orion_track_redis.testing.slurm import SlurmCluster
from orion_track_redis.testing.slurm_fleet import FleetScenario, overlapping

AVAILABLE, REASON = SlurmCluster.available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not AVAILABLE, reason=REASON)]

KILL_WAIT = 10
LEASE = 5


@pytest.mark.parametrize("proctrack", ["linuxproc", "cgroup"])
def test_fleet_survives_cancel_signal_kill_and_requeue(redis_server, tmp_path, proctrack):
    uri = f"{redis_server.url}/0?prefix=slurm-{uuid.uuid4().hex[:8]}&lease={LEASE}&stop_grace=2"
    storage = Redis(uri=uri)
    with SlurmCluster(tmp_path / "slurm", proctrack=proctrack, kill_wait=KILL_WAIT) as cluster:
        scenario = FleetScenario(cluster, uri, tmp_path / "fleet", trials=16, seconds=4)
        outcome = scenario.run(storage)
    where = f"task logs in {tmp_path / 'fleet'}"

    assert list(outcome.statuses.values()).count("completed") >= 16, (outcome.statuses, where)
    assert "reserved" not in outcome.statuses.values(), ("a trial was left reserved", where)
    assert overlapping(outcome.runs) == [], "a trial ran twice at the same time"
    ended: dict[str, int] = {}
    for run in outcome.runs:
        ended[run.trial] = ended.get(run.trial, 0) + run.ended
    assert max(ended.values()) == 1, "a trial's objective ran to its end twice"
    for fault in outcome.faults:
        assert fault.gone_s is not None and fault.gone_s < KILL_WAIT, (fault, where)
        assert fault.trial in outcome.released_s, (fault, "its trial stayed reserved", where)
        assert outcome.statuses[fault.trial] == "completed", (fault, "never re-run", where)

    # who recovered what: a worker that could not release (SIGKILL, and under cgroup the plain
    # form, killed 0.1 s after its shell) is recovered by its lease; every other worker
    # released its own trial, and no recovery is recorded for those
    must_recover = {f.trial for f in outcome.faults if f.kind == "sigkill"}
    if proctrack == "cgroup":
        must_recover |= {f.trial for f in outcome.faults if f.form == "plain"}
    recovered = {r["trial"] for r in outcome.recoveries}
    assert recovered == must_recover, (outcome.faults, outcome.recoveries)
    for record in outcome.recoveries:
        holder = lease.describe(record["holder"])
        assert holder.get("job") and holder.get("task") in {"1", "3"}, record
