"""The algorithm lock serves waiters in arrival order (FIFO hand-off), with real processes on a
real redis-server: no overtaking by re-polling waiters or newcomers, no overlap of holds, and a
SIGKILLed waiter at the head of the queue delays the others by at most its lease."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid

import pytest
from orion.storage.base import LockAcquisitionTimeout

from helpers import create_experiment
from orion_track_redis import Redis
from orion_track_redis.store.lock import LEASE_MIN_S, LEASE_POLLS

pytestmark = pytest.mark.slow
CTX = multiprocessing.get_context("spawn")  # real processes with fresh interpreters

RETRY = 0.1  # waiters re-poll often: the old lock let a re-polling waiter overtake
HOLD = 0.3  # longer than a poll: every waiter polls several times while it waits
SPACING = 0.2  # between two arrivals: far above one call's latency, so arrival order is sure


def _new_storage(redis_server, **options):
    return Redis(uri=redis_server.url, prefix=f"f-{uuid.uuid4().hex[:10]}", **options)


def _waiter(storage, exp_id, index, go, ready, queue):
    storage.fetch_experiments({})  # connect and warm up before the clock starts
    ready.set()
    go.wait(120)
    arrived = time.monotonic()
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=60, retry_interval=RETRY) as locked:
        start = time.monotonic()
        state = dict(locked.state or {"served": []})
        state["served"] = state["served"] + [index]
        time.sleep(HOLD)
        locked.set_state(state)
        end = time.monotonic()
    queue.put((index, arrived, start, end))


def _spawn(storage, exp_id, count, queue):
    gos, procs = [], []
    for index in range(count):
        go, ready = CTX.Event(), CTX.Event()
        proc = CTX.Process(target=_waiter, args=(storage, exp_id, index, go, ready, queue))
        proc.start()
        gos.append((go, ready))
        procs.append(proc)
    for _, ready in gos:
        assert ready.wait(120), "a waiter process did not start"
    return [go for go, _ in gos], procs


def test_waiters_served_in_arrival_order(redis_server):
    """8 processes arrive one by one, 5 while the lock is held and 3 while the queue drains
    (newcomers at hand-off moments): each is served after every earlier arrival, and the state
    each holder appends to shows the same order."""
    storage = _new_storage(redis_server)
    exp_id = create_experiment(storage)
    queue, count, early = CTX.Queue(), 8, 5
    gos, procs = _spawn(storage, exp_id, count, queue)
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=10):
        for go in gos[:early]:
            go.set()
            time.sleep(SPACING)
    for go in gos[early:]:  # arrive while the earlier ones hand the lock on
        time.sleep(SPACING)
        go.set()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    by_start = sorted(results, key=lambda r: r[2])
    assert [r[0] for r in by_start] == list(range(count)), (
        f"served out of arrival order: {[r[0] for r in by_start]}"
    )
    for (*_, end), (_, _, next_start, _) in zip(by_start, by_start[1:]):
        assert end <= next_start, "two processes held the lock at the same time"
    assert storage.get_algorithm_lock_info(uid=exp_id).state == {"served": list(range(count))}
    ek = storage.backend.experiment_keys(exp_id)
    assert storage.client.zcard(ek.lock_queue) == 0 and storage.client.zcard(ek.lock_leases) == 0


def _queued(storage, exp_id, size, timeout=60):
    ek = storage.backend.experiment_keys(exp_id)
    deadline = time.monotonic() + timeout
    while storage.client.zcard(ek.lock_queue) < size:
        assert time.monotonic() < deadline, f"the queue never reached {size} waiters"
        time.sleep(0.02)


def test_killed_waiter_at_the_head_delays_the_queue_by_its_lease_at_most(redis_server):
    storage = _new_storage(redis_server)
    exp_id = create_experiment(storage)
    queue = CTX.Queue()
    gos, procs = _spawn(storage, exp_id, 2, queue)
    head, second = procs
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=10):
        gos[0].set()
        _queued(storage, exp_id, 1)
        gos[1].set()
        _queued(storage, exp_id, 2)
        os.kill(head.pid, signal.SIGKILL)  # the head dies while it waits
        killed = time.monotonic()
    head.join()
    index, _, start, _ = queue.get(timeout=60)
    second.join(timeout=60)
    lease = max(LEASE_POLLS * RETRY, LEASE_MIN_S)
    assert index == 1
    # bound: the dead head's lease (from its last poll, before the kill) + one poll
    assert start - killed <= lease + RETRY + 1.0, (
        f"the queue waited {start - killed:.2f}s behind a dead waiter (lease {lease}s)"
    )
    ek = storage.backend.experiment_keys(exp_id)
    assert storage.client.zcard(ek.lock_queue) == 0, "the dead waiter's entry was dropped"


def test_timed_out_waiter_leaves_the_queue(redis_server):
    storage = _new_storage(redis_server)
    exp_id = create_experiment(storage)
    ek = storage.backend.experiment_keys(exp_id)
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=5):
        with pytest.raises(LockAcquisitionTimeout):
            with storage.acquire_algorithm_lock(uid=exp_id, timeout=0.3, retry_interval=0.1):
                pass
        assert storage.client.zcard(ek.lock_queue) == 0
        assert storage.client.zcard(ek.lock_leases) == 0
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=1, retry_interval=0.1):
        pass  # nobody left behind blocks the next one
