"""``replica_acks``/``replica_ack_timeout``: WAIT after every write script, in the same round trip.

Option parsing; a primary with one replica (every hot-path write is on the replica when the call
returns, a stopped replica gives a prompt ConnectionFailed); one round trip per hot call with
and without the option; and the durability claim itself: unplanned Sentinel failovers (SIGKILL
of the primary) keep every write acknowledged with ``replica_acks=1``, while without it a write
the replica never got is lost. Every server is started here on free loopback ports."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from urllib.parse import urlencode

import pytest
import redis
from orion.core.worker.trial import Trial
from orion.storage.base import setup_storage

from helpers import Exp, create_experiment, make_trial
from orion_track_redis import ConfigurationError, ConnectionFailed, Redis
from orion_track_redis.config.uri import resolve
from orion_track_redis.keys import escape
from orion_track_redis.testing import RedisServer

PASSWORD = "s3cret-of-the-primary"
ORDER = ("new", "reserved", "completed")  # the life of a trial in these tests


def _prefix():
    return f"acks-{uuid.uuid4().hex[:10]}"


def _result(value):
    return [Trial.Result(name="objective", type="objective", value=value)]


# -- options ------------------------------------------------------------------------------------
def test_options_parse():
    opts = resolve("redis://h/0?replica_acks=2&replica_ack_timeout=250")
    assert (opts.replica_acks, opts.replica_ack_timeout) == (2, 250)
    default = resolve("redis://h/0")
    assert (default.replica_acks, default.replica_ack_timeout) == (0, 1000)
    opts = resolve(
        "redis+sentinel://s1,s2/svc", options={"replica_acks": 1, "replica_ack_timeout": "300"}
    )
    assert (opts.replica_acks, opts.replica_ack_timeout) == (1, 300)
    # 0 = off: fine everywhere, also where WAIT is refused
    for uri in ("fakeredis://x", "embedded://", "redis+cluster://n1,n2"):
        assert resolve(f"{uri}?replica_acks=0").replica_acks == 0


@pytest.mark.parametrize(
    "uri, options, fragment",
    [
        ("redis://:hunter2@h?replica_acks=-1", {}, "replica_acks=-1 is out of range"),
        ("redis://:hunter2@h?replica_acks=1.5", {}, "option replica_acks='1.5' is invalid"),
        ("redis://:hunter2@h?replica_acks=all", {}, "option replica_acks='all' is invalid"),
        ("redis://:hunter2@h", {"replica_acks": True}, "option replica_acks=True is invalid"),
        ("redis://:hunter2@h", {"replica_acks": 1.0}, "option replica_acks=1.0 is invalid"),
        ("redis://:hunter2@h?replica_ack_timeout=0", {}, "replica_ack_timeout=0 is out of range"),
        ("redis://:hunter2@h?replica_ack_timeout=-5", {}, "replica_ack_timeout=-5 is out of range"),
        ("redis://:hunter2@h?replica_ack_timeout=0.5", {}, "replica_ack_timeout='0.5' is invalid"),
        (
            "redis://:hunter2@h?replica_acks=1&replica_ack_timeout=29500",
            {},
            "make it at least 1 s shorter than socket_timeout",
        ),
        (
            "redis://:hunter2@h?replica_acks=1&replica_ack_timeout=2000&socket_timeout=2",
            {},
            "too long for socket_timeout=2 s",
        ),
        ("fakeredis://x?replica_acks=1", {}, "not supported with fakeredis://"),
        ("embedded://?replica_acks=1", {}, "not supported with embedded://"),
        (
            "redis+cluster://:hunter2@n1,n2?replica_acks=1",
            {},
            "not supported with redis+cluster://",
        ),
    ],
)
def test_bad_values_name_the_option_and_the_fix(uri, options, fragment):
    with pytest.raises(ConfigurationError) as info:
        resolve(uri, options=options)
    message = str(info.value)
    assert fragment in message, message
    assert "hunter2" not in message
    assert (
        "Fix its value" in message
        or "give " in message
        or "make it" in message
        or "remove it" in message
    ), message


def test_refused_through_orions_factory_too():
    with pytest.raises(ConfigurationError, match="replica_acks is not supported"):
        setup_storage({"type": "redis", "uri": "fakeredis://acks?replica_acks=1"})


# -- a primary and its replica ------------------------------------------------------------------
def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _caught_up(primary, replica) -> bool:
    """The replica has processed everything the primary has written so far."""
    offset = primary.info("replication")["master_repl_offset"]
    info = replica.info("replication")
    return info.get("master_link_status") == "up" and info.get("slave_repl_offset", -1) >= offset


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A password-protected primary and one replica of it (RedisServer objects)."""
    base = tmp_path_factory.mktemp("acks")
    # no diskless-sync delay (Redis 7 waits 5 s for more replicas before a full sync)
    with RedisServer(
        base / "primary",
        password=PASSWORD,
        appendonly=False,
        extra_args=["--repl-diskless-sync-delay", "0"],
    ) as primary:
        replica = RedisServer(
            base / "replica",
            password=PASSWORD,
            appendonly=False,
            extra_args=["--replicaof", "127.0.0.1", str(primary.port), "--masterauth", PASSWORD],
        )
        with replica:
            p, r = primary.client(), replica.client()
            _wait_for(lambda: _caught_up(p, r), 20, "the replica to sync")
            p.close()
            r.close()
            yield primary, replica


@pytest.fixture
def clients(pair):
    """Plain clients of the primary and the replica, and a check that the replica is back in
    sync after the test (a test may stop it)."""
    primary, replica = pair
    p, r = primary.client(), replica.client()
    yield p, r
    os.kill(replica.pid, signal.SIGCONT)  # in case a test failed while it was stopped
    _wait_for(lambda: _caught_up(p, r), 20, "the replica to catch up")
    p.close()
    r.close()


def _storage(server, **options) -> Redis:
    query = urlencode(options)
    return Redis(uri=f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0?{query}", prefix=_prefix())


def _trial_key(storage, exp_id, trial) -> str:
    return storage.backend.experiment_keys(exp_id).trial_prefix + escape(trial.id)


def test_hot_path_writes_are_on_the_replica_when_the_call_returns(pair, clients):
    p, r = clients
    storage = _storage(pair[0], replica_acks=1)
    exp_id = create_experiment(storage)
    ek = storage.backend.experiment_keys(exp_id)

    def on_replica(trial, status):
        key = _trial_key(storage, exp_id, trial)
        fields = r.hgetall(key)  # read at once: no waiting, no retry
        assert fields == p.hgetall(key), "the replica lags behind the primary"
        assert fields[b"status"] == f'"{status}"'.encode()
        return fields

    trial = storage.register_trial(make_trial(exp_id, x=1.0))
    on_replica(trial, "new")
    reserved = storage.reserve_trial(Exp(exp_id))
    assert reserved.id == trial.id
    before = on_replica(reserved, "reserved")[b"heartbeat"]
    time.sleep(0.01)
    assert storage.update_heartbeat(reserved) == 1
    assert on_replica(reserved, "reserved")[b"heartbeat"] != before
    reserved.results = _result(0.5)
    storage.push_trial_results(reserved)
    assert b"0.5" in b"".join(on_replica(reserved, "reserved").values())
    storage.set_trial_status(reserved, "completed", was="reserved")
    on_replica(reserved, "completed")
    assert r.zscore(ek.status("completed"), escape(trial.id)) is not None

    storage.initialize_algorithm_lock(exp_id, {"random": {}})
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=5) as locked:
        assert r.exists(ek.lock_holder), "the lock hold is not on the replica"
        locked.set_state({"round": 1})
    assert not r.exists(ek.lock_holder), "the release is not on the replica"
    assert r.hget(ek.lock, "state") == p.hget(ek.lock, "state") and r.hget(ek.lock, "state")


def test_the_call_waits_for_a_lagging_replica(pair, clients):
    p, r = clients
    primary, replica = pair
    storage = _storage(primary, replica_acks=1, replica_ack_timeout=5000)
    exp_id = create_experiment(storage)
    trial = storage.register_trial(make_trial(exp_id))
    os.kill(replica.pid, signal.SIGSTOP)
    resume = threading.Timer(0.4, os.kill, (replica.pid, signal.SIGCONT))
    resume.start()
    start = time.monotonic()
    try:
        storage.set_trial_status(trial, "interrupted", was="new")
    finally:
        resume.join()
    assert time.monotonic() - start >= 0.3, "returned before the replica could confirm"
    assert r.hget(_trial_key(storage, exp_id, trial), "status") == b'"interrupted"'


def test_a_stopped_replica_gives_a_prompt_clear_error(pair, clients):
    p, r = clients
    primary, replica = pair
    # the default retries (6) stay on: a missing confirmation is not retried
    storage = _storage(primary, replica_acks=1, replica_ack_timeout=200)
    exp_id = create_experiment(storage)
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(ConnectionFailed) as info:
            storage.register_trial(make_trial(exp_id, x=2.0))
        elapsed = time.monotonic() - start
        assert [t.status for t in storage.fetch_trials(uid=exp_id)] == ["new"], (
            "the write is applied on the primary, and reads do not wait"
        )
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    assert 0.19 <= elapsed < 1.2, f"took {elapsed:.2f}s for a 200 ms timeout"
    message = str(info.value)
    for expected in (
        "applied on the primary",
        "not confirmed on 1 replica(s)",
        "replica_ack_timeout=200 ms",
        "replicas' health",
        f"127.0.0.1:{primary.port}",
    ):
        assert expected in message, message
    assert PASSWORD not in message


# -- round trips --------------------------------------------------------------------------------
@pytest.fixture
def sends(monkeypatch):
    """Count round trips (packed writes to a socket) while ``counting`` is on."""
    from redis.connection import AbstractConnection

    state = {"on": False, "count": 0}
    original = AbstractConnection.send_packed_command

    def spy(self, command, check_health=True):
        if state["on"]:
            state["count"] += 1
        return original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
    return state


def _waits(client) -> int:
    return client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)


def _hot_calls(storage, exp_id, i):
    """The five hot-path calls of one trial, each a callable."""
    box = {}
    return [
        lambda: storage.register_trial(make_trial(exp_id, x=float(i))),
        lambda: box.setdefault("t", storage.reserve_trial(Exp(exp_id))),
        lambda: storage.update_heartbeat(box["t"]),
        lambda: (setattr(box["t"], "results", _result(i)), storage.push_trial_results(box["t"])),
        lambda: storage.set_trial_status(box["t"], "completed", was="reserved"),
    ]


@pytest.mark.parametrize("acks", [0, 1])
def test_one_round_trip_per_hot_call(pair, clients, sends, acks):
    p, _ = clients
    storage = _storage(pair[0], replica_acks=acks)
    exp_id = create_experiment(storage)
    for call in _hot_calls(storage, exp_id, 0):
        call()  # warm: connection made, scripts cached on the server
    waits = _waits(p)
    for call in _hot_calls(storage, exp_id, 1):
        sends["on"], sends["count"] = True, 0
        call()
        sends["on"] = False
        assert sends["count"] == 1, f"{sends['count']} round trips (replica_acks={acks})"
    assert _waits(p) - waits == 5 * acks  # acks=0: no WAIT at all


def test_a_flushed_script_cache_is_reloaded(pair, clients, sends):
    p, _ = clients
    storage = _storage(pair[0], replica_acks=1)
    exp_id = create_experiment(storage)
    trial = storage.register_trial(make_trial(exp_id))
    p.script_flush()  # what a restarted or newly promoted primary looks like
    sends["on"] = True
    storage.set_trial_status(trial, "interrupted", was="new")
    sends["on"] = False
    assert sends["count"] == 3  # EVALSHA+WAIT (NOSCRIPT), SCRIPT LOAD, EVALSHA+WAIT
    assert storage.get_trial(trial).status == "interrupted"


# -- unplanned Sentinel failover ----------------------------------------------------------------
@pytest.fixture
def own_sentinel(tmp_path):
    """1 primary, 1 replica, 3 sentinels of this test only (it kills the primary)."""
    from orion_track_redis.testing import SentinelDeployment

    with SentinelDeployment(tmp_path / "sentinel") as deployment:
        yield deployment


def _promoted(deployment, old, timeout=45.0):
    """The new primary's address once the sentinels agree on it and it runs as a primary."""
    return deployment.wait_promoted(old, timeout)


def _sentinel_uri(deployment, acks):
    return (
        f"{deployment.url}?replica_acks={acks}&replica_ack_timeout=300&retries=12&retry_backoff=0.1"
    )


def _stored(deployment, prefix, exp_id) -> dict:
    """The trials on the current primary, read by a fresh storage (no WAIT: reads only)."""
    return {t.id: t for t in Redis(uri=deployment.url, prefix=prefix).fetch_trials(uid=exp_id)}


@pytest.mark.topology
@pytest.mark.slow
def test_unplanned_failover_keeps_every_acknowledged_write(own_sentinel):
    deployment = own_sentinel
    prefix = _prefix()
    storage = Redis(uri=_sentinel_uri(deployment, 1), prefix=prefix)
    exp_id = create_experiment(storage)
    old = deployment.master_address()
    acked = {}  # trial id -> the last status a call that returned wrote
    killer = threading.Timer(1.0, deployment.primary.kill)  # SIGKILL mid-stream, no write pause
    killer.start()
    deadline = time.monotonic() + 30
    try:
        with pytest.raises(ConnectionFailed) as info:
            for i in itertools.count():
                acked[storage.register_trial(make_trial(exp_id, x=float(i))).id] = "new"
                trial = storage.reserve_trial(Exp(exp_id))
                acked[trial.id] = "reserved"
                trial.results = _result(float(i))
                storage.push_trial_results(trial)
                storage.set_trial_status(trial, "completed", was="reserved")
                acked[trial.id] = "completed"
                assert time.monotonic() < deadline, "the writes went on without a replica"
    finally:
        killer.join()
    # the call in flight at the kill was retried on the promoted replica, which has no
    # replica of its own: its write cannot be confirmed
    assert "not confirmed on 1 replica(s)" in str(info.value), info.value
    completed = sum(status == "completed" for status in acked.values())
    assert completed >= 10, f"only {completed} trials completed before the kill"
    new = _promoted(deployment, old)
    stored = _stored(deployment, prefix, exp_id)
    for trial_id, status in acked.items():
        assert trial_id in stored, f"acknowledged trial {trial_id} ({status}) was lost"
        assert ORDER.index(stored[trial_id].status) >= ORDER.index(status), (
            f"trial {trial_id}: acknowledged {status}, stored {stored[trial_id].status}"
        )
        if status == "completed":
            assert stored[trial_id].objective is not None
    # writes resume once a replica is back: the old primary rejoins as a replica
    promoted = deployment._node(new).client()
    try:
        promoted.config_set("repl-diskless-sync-delay", 0)  # Redis 7: full sync at once
    finally:
        promoted.close()
    deployment.primary.start()
    rejoined = deployment.primary.client()
    try:
        rejoined.execute_command("REPLICAOF", *new)
    finally:
        rejoined.close()
    attempts = itertools.count(1)
    _wait_for(lambda: _try_register(storage, exp_id, -next(attempts)), 30, "writes to resume")


def _try_register(storage, exp_id, x) -> bool:
    try:
        storage.register_trial(make_trial(exp_id, x=x))
        return True
    except ConnectionFailed:  # not confirmed yet: the replica is still syncing
        return False  # (but applied: the next attempt must register another trial)


@pytest.mark.topology
@pytest.mark.slow
@pytest.mark.parametrize("acks", [0, 1])
def test_a_write_the_replica_never_got(own_sentinel, acks):
    """Deterministic: stop the replica and cut its link, write, SIGKILL the primary, resume the
    replica; Sentinel promotes it. Without replica_acks the writes were acknowledged and are
    lost (the documented gap); with it they were refused, and nothing acknowledged is lost."""
    deployment = own_sentinel
    prefix = _prefix()
    storage = Redis(uri=_sentinel_uri(deployment, acks), prefix=prefix)
    exp_id = create_experiment(storage)
    before = [storage.register_trial(make_trial(exp_id, x=float(i))).id for i in range(5)]
    primary, replica = deployment.primary.client(), deployment.replicas[0].client()
    _wait_for(lambda: _caught_up(primary, replica), 10, "the replica to catch up")
    old = deployment.master_address()
    after, error = [], None
    os.kill(deployment.replicas[0].pid, signal.SIGSTOP)
    try:
        # from now on, what the primary acknowledges never reaches the replica
        primary.execute_command("CLIENT", "KILL", "TYPE", "replica")
        try:
            for i in range(5):
                after.append(storage.register_trial(make_trial(exp_id, x=100.0 + i)).id)
        except ConnectionFailed as exc:
            error = exc
        deployment.primary.kill()
    finally:
        os.kill(deployment.replicas[0].pid, signal.SIGCONT)
        primary.close()
        replica.close()
    _promoted(deployment, old)
    stored = _stored(deployment, prefix, exp_id)
    assert set(before) <= set(stored)
    if acks:
        assert after == [] and "not confirmed on 1 replica(s)" in str(error)
    else:
        assert error is None and len(after) == 5
        assert not set(after) & set(stored), "expected the unreplicated writes to be lost"


def test_a_retried_write_writes_so_its_wait_covers_the_first_attempt(monkeypatch):
    """A call retried after a lost reply returns the first result from its request key; it
    must still write (EXPIRE of that key), or a WAIT on the new connection would return at
    once without covering the first attempt's writes."""
    from orion_track_redis import keys as keys_module
    from orion_track_redis.store import writes as writes_module

    storage = Redis(uri=f"fakeredis://retry-{uuid.uuid4().hex[:6]}")
    exp_id = create_experiment(storage)
    ek = storage.backend.experiment_keys(exp_id)
    ids = iter(["reg", "reg", "res", "res", "hb", "hb"])  # each call, then its retry
    monkeypatch.setattr(writes_module, "new_request_id", lambda: next(ids))

    def first_then_retry(call, request):
        first = call()
        storage.client.expire(ek.request(request), 5)  # as if time passed
        again = call()
        assert storage.client.ttl(ek.request(request)) == keys_module.REQUEST_TTL
        return first, again

    trial = make_trial(exp_id)
    first, again = first_then_retry(lambda: storage.register_trial(trial), "reg")
    assert first.id == again.id
    first, again = first_then_retry(lambda: storage.reserve_trial(Exp(exp_id)), "res")
    assert first.id == again.id == trial.id
    assert first_then_retry(lambda: storage.update_heartbeat(first), "hb") == (1, 1)
