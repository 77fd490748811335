"""Reservation leases (store/lease.py, lease_renew.lua, lost_trials.lua, include/lease_clock.lua): a
dead worker's trial is lost once its lease ends; a live worker's never is, however starved."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
import uuid

import pytest

from helpers import Exp, create_experiment, make_trial
from orion_track_redis import Redis
from orion_track_redis.errors import ConfigurationError
from orion_track_redis.store import lease

CTX = multiprocessing.get_context("spawn")


def _storage(uri="fakeredis://lease", **options):
    return Redis(uri=uri, prefix=f"l-{uuid.uuid4().hex[:10]}", **options)


def _reserve_one(storage, x=1.0):
    exp_id = create_experiment(storage)
    storage.register_trial(make_trial(exp_id, x=x))
    trial = storage.reserve_trial(Exp(exp_id))
    return exp_id, trial, storage.backend.experiment_keys(exp_id)


def _lost(storage, exp_id):
    return [t.id for t in storage.fetch_lost_trials(Exp(exp_id))]


def _server_now(storage):
    seconds, micros = storage.client.time()
    return seconds + micros / 1e6


def _age(storage, ek, token, *, lease_end, resumed, last):
    """Put the lease and the experiment's lease clock at these offsets from server now."""
    now = _server_now(storage)
    storage.client.zadd(ek.leases, {token: now + lease_end})
    storage.client.hset(ek.lease_clock, mapping={"resumed": now + resumed, "last": now + last})


def test_reserve_records_lease_and_holder(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setattr(lease.HOLDER, "_record", None)  # read the environment again
    storage = _storage(lease=30)
    exp_id, trial, ek = _reserve_one(storage)
    now = _server_now(storage)
    end = storage.client.zscore(ek.leases, trial.id)
    assert now + 29 < end <= now + 30.5
    info = lease.describe(storage.client.hget(ek.holders, trial.id))
    assert info["pid"] == os.getpid() and info["job"] == "4242" and info["task"] == "7"
    assert info["id"] == lease.HOLDER.id
    assert lease.where(info).endswith("(Slurm job 4242_7)")
    assert (ek, trial.id) in lease.keeper(storage.backend.opts).held()
    monkeypatch.setattr(lease.HOLDER, "_record", None)


def test_a_lapsed_lease_is_lost_only_while_calls_flow():
    storage = _storage(lease=30)
    exp_id, trial, ek = _reserve_one(storage)
    assert _lost(storage, exp_id) == []  # the lease runs
    _age(storage, ek, trial.id, lease_end=-1, resumed=-100, last=-1)
    assert _lost(storage, exp_id) == [trial.id]
    # calls resumed 10 s ago after a gap (restart, failover): live holders get a whole lease
    _age(storage, ek, trial.id, lease_end=-1, resumed=-10, last=-1)
    assert _lost(storage, exp_id) == []
    # nobody called for 20 s (> lease / 2): a gap right now, nothing is judged
    _age(storage, ek, trial.id, lease_end=-1, resumed=-100, last=-20)
    assert _lost(storage, exp_id) == []


def test_heartbeat_rule_still_applies_beside_the_lease(heartbeat):
    heartbeat(1)
    storage = _storage(lease=30)
    exp_id, trial, _ = _reserve_one(storage)
    old = trial.heartbeat.__class__.utcnow() - __import__("datetime").timedelta(seconds=60)
    storage.set_trial_status(trial, "reserved", heartbeat=old, was="reserved")
    assert _lost(storage, exp_id) == [trial.id]


def test_renewal_extends_only_this_holders_leases():
    storage = _storage(lease=30)
    exp_id, trial, ek = _reserve_one(storage)
    keeper = lease.keeper(storage.backend.opts)
    storage.client.zadd(ek.leases, {trial.id: 1.0})
    keeper.renew()
    assert storage.client.zscore(ek.leases, trial.id) > _server_now(storage) + 29
    # another worker took it over (our lease had lapsed and it was recovered, then reserved)
    storage.client.hset(ek.holders, trial.id, "someone-else {}")
    storage.client.zadd(ek.leases, {trial.id: 1.0})
    keeper.renew()
    assert storage.client.zscore(ek.leases, trial.id) == 1.0
    assert (ek, trial.id) not in keeper.held()


def test_leaving_reserved_clears_the_lease_and_records_a_recovery():
    storage = _storage(lease=30)
    exp_id, trial, ek = _reserve_one(storage)
    storage.set_trial_status(trial, "completed", was="reserved")
    assert storage.client.zscore(ek.leases, trial.id) is None
    assert storage.client.hget(ek.holders, trial.id) is None
    assert storage.client.get(ek.recovered) is None  # a completion is no recovery

    storage.register_trial(make_trial(exp_id, x=2.0))
    second = storage.reserve_trial(Exp(exp_id))
    _age(storage, ek, second.id, lease_end=-5, resumed=-100, last=-1)
    (lost,) = storage.fetch_lost_trials(Exp(exp_id))
    storage.set_trial_status(lost, "interrupted", was="reserved")  # what Oríon does with it
    assert int(storage.client.get(ek.recovered)) == 1
    record = json.loads(storage.client.lindex(ek.recoveries, 0))
    assert record["trial"] == second.id and record["lease_end"] < record["at"]
    assert lease.describe(record["holder"])["pid"] == os.getpid()


def test_release_all_gives_back_only_what_this_process_still_holds():
    storage = _storage(lease=30)
    exp_id = create_experiment(storage)
    for x in range(3):
        storage.register_trial(make_trial(exp_id, x=float(x)))
    mine = [storage.reserve_trial(Exp(exp_id)) for _ in range(3)]
    ek = storage.backend.experiment_keys(exp_id)
    storage.client.hset(ek.holders, mine[2].id, "someone-else {}")  # taken over meanwhile
    assert lease.keeper(storage.backend.opts).release_all() == 2
    statuses = {t.id: t.status for t in storage.fetch_trials(uid=exp_id)}
    assert [statuses[t.id] for t in mine] == ["interrupted", "interrupted", "reserved"]


def test_lease_option_is_validated():
    with pytest.raises(ConfigurationError, match="lease=1.0 is out of range"):
        _storage(lease=1)
    with pytest.raises(ConfigurationError, match="stop_grace=-1.0 is out of range"):
        _storage(stop_grace=-1)
    assert _storage(lease=0).backend.opts.lease == 0


def test_without_lease_only_the_heartbeat_counts():
    storage = _storage(lease=0)
    exp_id, trial, ek = _reserve_one(storage)
    assert storage.client.zscore(ek.leases, trial.id) is None
    assert lease.describe(storage.client.hget(ek.holders, trial.id))["pid"] == os.getpid()
    assert _lost(storage, exp_id) == []


# -- real processes on a real redis-server ------------------------------------------------------
def _hold(uri, prefix, exp_id, ready, renew):
    """A worker: reserve one trial, then keep it (the keeper thread renews) until killed."""
    storage = Redis(uri=uri, prefix=prefix, lease=3)
    if not renew:  # the oracle's broken worker: its lease is never renewed
        lease.LeaseKeeper.renew = lambda self: None
    trial = storage.reserve_trial(Exp(exp_id))
    ready.put(trial.id)
    while True:
        time.sleep(1)


def _burn(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _start_holder(redis_server, renew=True):
    prefix = f"l-{uuid.uuid4().hex[:10]}"
    storage = Redis(uri=redis_server.url, prefix=prefix, lease=3)
    exp_id = create_experiment(storage)
    storage.register_trial(make_trial(exp_id, x=1.0))
    ready = CTX.Queue()
    proc = CTX.Process(target=_hold, args=(redis_server.url, prefix, exp_id, ready, renew))
    proc.start()
    trial_id = ready.get(timeout=120)
    return storage, exp_id, trial_id, proc


def _watch_lost(storage, exp_id, seconds):
    """Poll lost trials as every other worker's reserve does; first time seen lost, or None.
    Each poll also reserves (nothing is pending): that is what keeps the lease clock going."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if storage.fetch_lost_trials(Exp(exp_id)):
            return time.monotonic() - start
        storage.reserve_trial(Exp(exp_id))
        time.sleep(0.2)
    return None


@pytest.mark.slow
def test_a_killed_workers_trial_is_lost_within_the_lease(redis_server):
    storage, exp_id, trial_id, proc = _start_holder(redis_server)
    try:
        assert _watch_lost(storage, exp_id, 4) is None  # alive: kept beyond a whole lease
        os.kill(proc.pid, signal.SIGKILL)
        after = _watch_lost(storage, exp_id, 30)
    finally:
        proc.kill()
        proc.join()
    assert after is not None and after < 3 + 2, f"lost after {after} s with lease=3"
    assert _lost(storage, exp_id) == [trial_id]


@pytest.mark.slow
@pytest.mark.parametrize("renew", [True, False], ids=["renewing", "oracle-not-renewing"])
def test_a_cpu_starved_live_worker_keeps_its_trial(redis_server, renew):
    """8 busy processes on this machine's cores, the holder at nice 19, for 4 leases: a live
    worker's trial is never taken. The oracle (renewal switched off) shows the check fails."""
    storage, exp_id, _, proc = _start_holder(redis_server, renew=renew)
    os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
    burners = [CTX.Process(target=_burn, args=(60,)) for _ in range(8)]
    try:
        for burner in burners:
            burner.start()
        lost_after = _watch_lost(storage, exp_id, 12)
    finally:
        for child in (proc, *burners):
            child.kill()
            child.join()
    if renew:
        assert lost_after is None, f"a live, starved worker lost its trial after {lost_after} s"
    else:
        assert lost_after is not None, "the oracle must see an unrenewed lease as lost"


def test_a_worker_whose_trial_was_taken_cannot_write_it_any_more():
    """Fencing: once another worker holds the trial (our lease ran out, it was recovered and
    reserved again), our result push is refused and our heartbeat stops the pacemaker."""
    from orion.storage.base import FailedUpdate

    storage = _storage(lease=30)
    exp_id, trial, ek = _reserve_one(storage)
    storage.client.hset(ek.holders, trial.id, "another-worker {}")
    assert storage.update_heartbeat(trial) == 0
    trial.status = "completed"
    with pytest.raises(FailedUpdate, match="another worker took it"):
        storage.push_trial_results(trial)
    with pytest.raises(FailedUpdate):
        storage.set_trial_status(trial, "interrupted", was="reserved")
    # its own holder is back: the same calls go through
    storage.client.hset(ek.holders, trial.id, lease.HOLDER.record())
    assert storage.update_heartbeat(trial) == 1
    assert storage.push_trial_results(trial) == 1
    assert (ek, trial.id) not in lease.keeper(storage.backend.opts).held()
