"""Issue 17: a nemesis over a running fleet. Each scenario runs a real multi-worker `orion hunt`
against a redis-server of its own, injects one kind of grey failure mid-hunt, and checks the
same invariants at the end (``nemesis.violations``): the experiment reaches max_trials; every
trial completed at most once, with the result of one of its runs; no acknowledged completion
lost; no trial half written (every trial decodes, index entries and documents match); each
worker finishes or stops with one clear error line; the lock is free (and it was free, or held
anew, within lock_ttl after the fault cleared).

Small fleets (3 workers, objectives that sleep) so two shared cores are not the bottleneck;
workers use socket_timeout=2 s and lock_ttl=5 s so faults longer than both fit in seconds.
"""
from __future__ import annotations

import os
import random
import signal
import time
import uuid

import pytest

import nemesis
from orion_track_redis import Redis
from orion_track_redis.server import RedisServer

pytestmark = pytest.mark.slow
LOCK_TTL = 5


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis", appendfsync="always") as srv:
        srv.start()
        yield srv


@pytest.fixture
def fleet_env(tmp_path, server):
    """A fleet, a watcher and clean-up, on a fresh prefix; yields a small namespace."""
    prefix = f"nem-{uuid.uuid4().hex[:6]}"

    class Env:
        pass

    env = Env()
    env.prefix, env.server, env.tmp = prefix, server, tmp_path
    env.direct_uri = nemesis.worker_uri(server.port, prefix)
    env.client = server.client(socket_timeout=5)
    env.proxies, env.fleet, env.watcher = [], None, None
    yield env
    if env.fleet:
        env.fleet.stop()
    if env.watcher:
        env.watcher.stop()
    for proxy in env.proxies:
        proxy.close()
    os.kill(server.pid, signal.SIGCONT)  # never leave it stopped


def start(env, name, max_trials, workers, uris=None, **fleet_kw):
    env.fleet = nemesis.Fleet(env.tmp / "fleet", name, max_trials, **fleet_kw)
    env.watcher = nemesis.Watcher(env.direct_uri, name)
    env.watcher.start()
    for i in range(workers):
        env.fleet.launch(uris[i] if uris else env.direct_uri)
    return env.fleet


def check(env, name, max_trials, finished=True) -> list[str]:
    """Every invariant at the end of the fleet; returns the problems (printed for the log)."""
    env.watcher.stop()
    env.watcher.sample()  # the last completions
    storage = Redis(uri=env.direct_uri)
    (exp,) = storage.fetch_experiments({"name": name})
    snap = nemesis.snapshot(env.client, storage, exp["_id"])
    problems = nemesis.violations(snap, env.fleet.read_runs(), env.fleet.outcomes(), max_trials)
    problems += nemesis.acknowledged_lost(env.watcher.first_seen, snap)
    if not finished:
        problems.append("the fleet did not finish in time")
    return problems


def summary(env) -> str:
    lines = []
    for o in env.fleet.outcomes():
        lines.append(f"worker {o['index']}: exit {o['exit']} killed={o['killed']}: "
                     f"{nemesis.last_line(o['log'])[:160]}")
    return "\n".join(lines)


def exp_id(env):
    env.watcher.wait_for(lambda: env.watcher.exp_id is not None, 120, "the experiment")
    return env.watcher.exp_id


def wait_completed(env, n, timeout=180):
    env.watcher.wait_for(lambda: env.watcher.completed() >= n, timeout, f"{n} completions")


# ------------------------------------------------------------------------------------------------
def test_a_write_refused_by_a_full_server_is_one_clear_error(server):
    """Found by the full-server scenario: OOM reached the worker as redis-py's raw
    OutOfMemoryError naming a script SHA1. It must say the server is full and what to do."""
    from helpers import create_experiment, make_trial
    from orion_track_redis.errors import ConnectionFailed

    storage = Redis(uri=f"{server.url}/0?prefix=oom-{uuid.uuid4().hex[:6]}")
    exp = create_experiment(storage)
    client = server.client()
    client.config_set("maxmemory", 1)
    try:
        with pytest.raises(ConnectionFailed, match="is full.*maxmemory") as caught:
            storage.register_trial(make_trial(exp, x=3.0))
    finally:
        client.config_set("maxmemory", 0)
    assert "user_script" not in str(caught.value) and "\n" not in str(caught.value)
    assert storage.fetch_trials(uid=exp) == [], "the refused write changed nothing"


def test_stall_shorter_and_longer_than_socket_timeout(fleet_env):
    """SIGSTOP redis-server for 1 s (< socket_timeout 2 s), later for 7 s (> socket_timeout and
    > lock_ttl), then SIGCONT: the workers ride both on their retries."""
    env, name, max_trials = fleet_env, "stall", 30
    start(env, name, max_trials, workers=3, sleep_s=0.5)
    eid = exp_id(env)
    stalls = []
    for after, seconds in ((6, 1.0), (14, 7.0)):
        wait_completed(env, after)
        os.kill(env.server.pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(env.server.pid, signal.SIGCONT)
        cleared = time.time()
        recovery = nemesis.lock_recovery_s(env.client, Redis(uri=env.direct_uri), eid, cleared,
                                           LOCK_TTL)
        stalls.append((seconds, recovery))
    finished = env.fleet.wait(240)
    problems = check(env, name, max_trials, finished)
    print(summary(env), "\nstalls (s, lock recovered after s):", stalls)
    assert not problems, "\n".join(problems)
    assert all(r is not None for _, r in stalls), f"lock stuck after a stall: {stalls}"
    assert all(o["exit"] == 0 for o in env.fleet.outcomes()), summary(env)


def relaunch_stopped(env, uri=None) -> list[str]:
    """Start a new worker in the slot of each one that stopped on an error (what a job
    scheduler does); returns the stopped workers' last lines."""
    lines = []
    for worker in list(env.fleet.workers):
        if worker.proc.poll() not in (None, 0) and not worker.killed and not worker.excused:
            worker.excused = True  # its reserved trial comes back through lost-trial detection
            lines.append(nemesis.last_line(worker.log.read_text(errors="replace")))
            env.fleet.launch(uri or env.direct_uri, index=worker.index)
    return lines


def test_full_server_mid_hunt(fleet_env):
    """maxmemory lowered under the running hunt (noeviction): every write is refused for 6 s,
    then maxmemory is raised again and the workers that stopped are started again."""
    env, name, max_trials = fleet_env, "full", 30
    # ORION_HEARTBEAT 3: a stopped worker's reserved trial is lost after 15 s, and rerun
    start(env, name, max_trials, workers=3, sleep_s=0.5, heartbeat_s=3)
    eid = exp_id(env)
    wait_completed(env, 8)
    env.client.config_set("maxmemory-policy", "noeviction")
    env.client.config_set("maxmemory", 1)
    time.sleep(6)
    full_completions = env.watcher.completed()
    env.client.config_set("maxmemory", 0)
    cleared = time.time()
    recovery = nemesis.lock_recovery_s(env.client, Redis(uri=env.direct_uri), eid, cleared,
                                       LOCK_TTL)
    stopped = relaunch_stopped(env)
    finished = env.fleet.wait(240)
    problems = check(env, name, max_trials, finished)
    print(summary(env), f"\nstopped while full: {len(stopped)}; lock recovered after {recovery}")
    assert not problems, "\n".join(problems)
    assert recovery is not None, "the lock stayed held after the server had room again"
    assert all("is full" in line for line in stopped), stopped
    assert env.watcher.completed() > full_completions
