"""Multi-process invariants on a real redis-server: every trial reserved exactly once, the
algorithm lock never held by two processes at once, a dead or paused holder never blocks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid

import pytest

from helpers import Exp, create_experiment, make_trial
from orion_track_redis import Redis

pytestmark = pytest.mark.slow
CTX = multiprocessing.get_context("spawn")  # real processes with fresh interpreters


def _new_storage(redis_server, **options):
    return Redis(uri=redis_server.url, prefix=f"c-{uuid.uuid4().hex[:10]}", **options)


def _reserve_all(storage, exp_id, queue):
    got = []
    while (trial := storage.reserve_trial(Exp(exp_id))) is not None:
        got.append(trial.id)
    queue.put(got)


def test_exactly_once_reservation_16_processes(redis_server):
    storage = _new_storage(redis_server)
    exp_id = create_experiment(storage)
    ids = {storage.register_trial(make_trial(exp_id, x=float(i))).id for i in range(2000)}
    queue = CTX.Queue()
    procs = [CTX.Process(target=_reserve_all, args=(storage, exp_id, queue)) for _ in range(16)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    reserved = [tid for got in results for tid in got]
    assert len(reserved) == 2000, "every trial reserved exactly once"
    assert set(reserved) == ids
    assert sum(1 for got in results if got) > 1, "the work was actually shared"
    assert storage.fetch_pending_trials(Exp(exp_id)) == []
    assert len(storage.fetch_trials_by_status(Exp(exp_id), "reserved")) == 2000


def _lock_worker(storage, exp_id, rounds, queue):
    intervals = []
    for _ in range(rounds):
        with storage.acquire_algorithm_lock(uid=exp_id, timeout=60) as locked:
            start = time.monotonic_ns()
            state = dict(locked.state or {"n": 0})
            time.sleep(0.002)  # hold it a little, as an algorithm would
            state["n"] += 1
            locked.set_state(state)
            intervals.append((start, time.monotonic_ns()))
    queue.put(intervals)


def test_lock_mutual_exclusion_8_processes(redis_server):
    storage = _new_storage(redis_server)
    exp_id = create_experiment(storage)
    queue, rounds = CTX.Queue(), 25
    procs = [
        CTX.Process(target=_lock_worker, args=(storage, exp_id, rounds, queue)) for _ in range(8)
    ]
    for proc in procs:
        proc.start()
    intervals = sorted(i for _ in procs for i in queue.get(timeout=300))
    for proc in procs:
        proc.join(timeout=60)
    assert len(intervals) == 8 * rounds
    for (_, end), (next_start, _) in zip(intervals, intervals[1:]):
        assert end <= next_start, "two processes held the lock at the same time"
    # every holder read the previous holder's state: no update was lost
    assert storage.get_algorithm_lock_info(uid=exp_id).state == {"n": 8 * rounds}


def _hold_forever(storage, exp_id, ready):
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=10) as locked:
        locked.set_state({"who": "killed"})
        ready.set()
        time.sleep(600)


def test_killed_holder_releases_within_ttl(redis_server):
    storage = _new_storage(redis_server, lock_ttl=2)
    exp_id = create_experiment(storage)
    ready = CTX.Event()
    holder = CTX.Process(target=_hold_forever, args=(storage, exp_id, ready))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    start = time.monotonic()
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=10) as locked:
        waited = time.monotonic() - start
        assert locked.state is None, "the killed holder's state was never written"
    assert waited <= 2 + 1.5, f"took {waited:.2f}s to take over a lock with a 2 s TTL"


def _paused_holder(storage, exp_id, ready, done):
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=10) as locked:
        locked.set_state({"who": "stale"})
        ready.set()
        time.sleep(1.0)  # the parent SIGSTOPs us here, past the TTL
    done.set()


def test_stale_holder_state_is_refused(redis_server):
    storage = _new_storage(redis_server, lock_ttl=1)
    exp_id = create_experiment(storage)
    ready, done = CTX.Event(), CTX.Event()
    stale = CTX.Process(target=_paused_holder, args=(storage, exp_id, ready, done))
    stale.start()
    assert ready.wait(30)
    os.kill(stale.pid, signal.SIGSTOP)  # a preempted worker: no renewal
    try:
        with storage.acquire_algorithm_lock(uid=exp_id, timeout=10) as locked:
            locked.set_state({"who": "successor"})
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    assert done.wait(30)
    stale.join(timeout=30)
    assert stale.exitcode == 0, "the stale worker keeps running"
    info = storage.get_algorithm_lock_info(uid=exp_id)
    assert info.state == {"who": "successor"} and not info.locked
