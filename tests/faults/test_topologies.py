"""Deployment topologies (issue 3): the URI grammar, Redis Cluster (one slot per script call,
experiments spread over shards, exactly-once reservation across processes), Sentinel failover
(storage level and during a 4-worker `orion hunt`), TLS-only servers and least-privilege ACL
users. The protocol suite itself runs on every topology through conftest's ``storage`` fixture.
Every server is started here on free loopback ports."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from orion.core.worker.trial import Trial
from orion.storage.base import LockAcquisitionTimeout
from redis.cluster import key_slot

from conftest import acl_user, tls_uri
from helpers import Exp, create_experiment, make_trial
from orion_track_redis import Redis
from orion_track_redis.config.uri import resolve
from orion_track_redis.errors import ConfigurationError, ConnectionFailed, redact

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ORION = str(Path(sys.executable).with_name("orion"))
CTX = multiprocessing.get_context("spawn")


def _prefix():
    return f"topo-{uuid.uuid4().hex[:10]}"


# -- URI grammar --------------------------------------------------------------------------------
def test_sentinel_uri_grammar():
    opts = resolve(
        "redis+sentinel://app:p%40ss@s1,s2:26380,[::1]:5000/mymaster/3"
        "?sentinel_password=spw&sentinel_username=sent&retries=7&retry_backoff=0.5"
        "&client_name=w1&health_check_interval=5&prefix=team"
    )
    assert opts.scheme == "redis+sentinel" and opts.service == "mymaster"
    assert opts.hosts == (("s1", 26379), ("s2", 26380), ("::1", 5000))
    assert (opts.username, opts.password) == ("app", "p@ss")
    conn = dict(opts.connection)
    assert conn["db"] == 3 and conn["sentinel_password"] == "spw" and conn["retries"] == 7
    assert conn["retry_backoff"] == 0.5 and conn["client_name"] == "w1"
    assert opts.prefix == "team"
    assert "p@ss" not in repr(opts) and "p%40ss" not in opts.redacted


def test_cluster_uri_grammar():
    opts = resolve(
        "redis+cluster://:pw@n1:7000,n2?ssl=true&ssl_ca_certs=/ca.pem&ssl_check_hostname=false"
    )
    assert opts.hosts == (("n1", 7000), ("n2", 6379)) and opts.service == ""
    assert opts.password == "pw" and opts.username is None
    conn = dict(opts.connection)
    assert conn["ssl"] is True and conn["ssl_check_hostname"] is False and "db" not in conn


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("redis+sentinel://:hunter2@s1,s2", "names no Sentinel service"),
        ("redis+sentinel://:hunter2@s1/svc/x", "only a database number"),
        ("redis+cluster://:hunter2@n1,n2/0", "Redis Cluster has no databases"),
        ("redis+cluster://:hunter2@n1?db=2", "only database 0"),
        ("redis+cluster://:hunter2@n1:notaport,n2", "malformed host"),
        ("redis+cluster://:hunter2@", "has no host"),
        ("redis+cluster://:hunter2@n1?sentinel_password=hunter2", "only applies to redis+sentinel"),
        ("redis+cluster://:hunter2@n1?ssl_ca_certs=/x", "add ssl=true"),
        ("redis://:hunter2@h?sentinel_ssl=true", "only applies to redis+sentinel"),
        ("redis://:hunter2@h?ssl=true", "use rediss://"),
        ("redis+sentinel://:hunter2@s1/svc?retries=-1", "retries and retry_backoff must be >= 0"),
        ("redis+sentinel://:hunter2@s1/svc?bogus=1", "unknown option 'bogus'"),
        ("redis+zk://:hunter2@a,b", "unsupported Redis URI"),
    ],
)
def test_uri_errors_name_the_problem_and_never_the_password(uri, fragment):
    with pytest.raises(ConfigurationError) as info:
        resolve(uri)
    message = str(info.value)
    assert fragment in message, message
    assert "hunter2" not in message, message
    if "malformed" in fragment or "unsupported" in fragment or "service" in fragment:
        assert "redis+sentinel://" in message and "redis+cluster://" in message  # accepted forms


@pytest.mark.parametrize(
    "text",
    [
        "redis+sentinel://user:hunter2@h1:1,h2:2/svc",
        "redis+cluster://:hunter2@h1:1,h2:2?prefix=a",
        "redis://:hun@ter2@h:1/0",
        "redis+sentinel://h1,h2/svc?sentinel_password=hunter2&prefix=a",
        "error at 'rediss://u:hunter2@h:6380/0': refused",
    ],
)
def test_redact_multi_host_and_password_options(text):
    assert "hunter2" not in redact(text) and "ter2" not in redact(text)


def test_retries_option_builds_a_retry():
    from orion_track_redis.server.connection import make_client

    client = make_client(resolve("redis://127.0.0.1:1/0?retries=2&retry_backoff=0.01"))
    retry = client.connection_pool.connection_kwargs.get("retry") or client.get_retry()
    assert retry._retries == 2


# -- Redis Cluster ------------------------------------------------------------------------------
def _spy_scripts(monkeypatch):
    """Record (script name, keys) of every script invocation, whatever the client."""
    from redis.commands.core import Script

    from orion_track_redis.store import scripts as scripts_module

    names = {}
    for name in scripts_module.NAMES:
        names[scripts_module.source(name)] = name
    calls = []
    original = Script.__call__

    def spy(self, keys=[], args=[], client=None):  # noqa: B006 - redis-py's own signature
        calls.append((names.get(self.script, "?"), list(keys)))
        return original(self, keys=keys, args=args, client=client)

    monkeypatch.setattr(Script, "__call__", spy)
    return calls


def _every_storage_method(storage):
    """A workload that calls every method of the storage protocol at least once."""
    storage.create_benchmark({"name": "bench", "algorithms": []})
    assert storage.fetch_benchmark({"name": "bench"})
    exp_id = create_experiment(storage, name="slots")
    other = create_experiment(storage, name="other", _id="ü {x}:y")
    assert storage.update_experiment(uid=exp_id, max_trials=20) == 1
    assert storage.update_experiment(uid=other, name="renamed") == 1
    assert len(storage.fetch_experiments({})) == 2
    for i in range(6):
        storage.register_trial(make_trial(exp_id, x=float(i), seconds=i))
    storage.register_trial(make_trial(other, x=1.0))
    trial = storage.reserve_trial(Exp(exp_id))
    assert storage.update_heartbeat(trial)
    trial.results = [Trial.Result(name="objective", type="objective", value=1.0)]
    storage.push_trial_results(trial)
    storage.set_trial_status(trial, "completed", was="reserved")
    second = storage.reserve_trial(Exp(exp_id))
    storage.set_trial_status(second, "interrupted")
    assert storage.get_trial(uid=trial.id, experiment_uid=exp_id).status == "completed"
    assert (
        storage.update_trial(
            uid=second.id,
            experiment_uid=exp_id,
            status="suspended",
            where={"status": "interrupted"},
        )
        == 1
    )
    assert storage.update_trials(uid=exp_id, where={"status": "new"}, status="new") >= 1
    assert storage.fetch_trials(uid=exp_id, where={"status": {"$in": ["new", "suspended"]}})
    assert storage.fetch_trials(uid=exp_id)  # cold: fills the cache
    storage.update_heartbeat(storage.reserve_trial(Exp(exp_id)))
    storage.backend.keeper().renew()  # lease_renew.lua, as its thread does every lease / 6 s
    assert storage.fetch_trials(uid=exp_id)  # warm: fetch_changes.lua
    storage.fetch_lost_trials(Exp(exp_id))
    assert storage.fetch_pending_trials(Exp(exp_id))
    assert storage.fetch_noncompleted_trials(Exp(exp_id))
    assert storage.fetch_trials_by_status(Exp(exp_id), "completed")
    assert storage.count_completed_trials(Exp(exp_id)) == 1
    assert storage.count_broken_trials(Exp(exp_id)) == 0
    storage.initialize_algorithm_lock(exp_id, {"random": {}})
    assert storage.observe_later(Exp(exp_id), trial) == 1  # batched observation's backlog
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=5) as locked:
        assert [t.id for t in locked.backlog] == [trial.id]
        locked.observed = 1
        locked.set_state({"n": 1})
    assert storage.get_algorithm_lock_info(uid=exp_id).state == {"n": 1}
    assert storage.backlog_length(uid=exp_id) == 0
    short = Redis(
        uri=storage.backend.opts.url,
        prefix=storage.backend.opts.prefix,
        lock_ttl=1,
        **dict(storage.backend.opts.connection),
    )
    with short.acquire_algorithm_lock(uid=exp_id, timeout=5):
        time.sleep(0.5)  # held past TTL/3: the renewal runs
        with pytest.raises(LockAcquisitionTimeout):  # a waiter that gives up leaves the queue
            with storage.acquire_algorithm_lock(uid=exp_id, timeout=0.1, retry_interval=0.05):
                pass
    assert storage.release_algorithm_lock(uid=exp_id)
    assert storage.delete_trials(uid=exp_id, where={"status": "completed"}) == 1
    assert storage.delete_trials(uid=other) == 1
    assert storage.delete_algorithm_lock(uid=other) == 1
    assert storage.delete_experiment(uid=other) == 1


@pytest.mark.topology
def test_every_script_call_touches_one_slot(redis_cluster, monkeypatch):
    from orion_track_redis.store.scripts import NAMES

    calls = _spy_scripts(monkeypatch)
    storage = Redis(uri=redis_cluster.url, prefix=_prefix())
    _every_storage_method(storage)
    assert calls, "the workload ran no script"
    for name, keys in calls:
        slots = {key_slot(k.encode() if isinstance(k, str) else k) for k in keys}
        assert len(slots) == 1, f"{name} touched keys of {len(slots)} slots: {keys}"
    unused = set(NAMES) - {name for name, _ in calls}
    assert not unused, f"the workload never ran {sorted(unused)}: extend it"


@pytest.mark.topology
def test_experiments_spread_over_shards(redis_cluster):
    storage = Redis(uri=redis_cluster.url, prefix=_prefix())
    nodes = set()
    for i in range(12):
        exp_id = create_experiment(storage, name=f"spread-{i}")
        storage.register_trial(make_trial(exp_id))
        node = storage.client.get_node_from_key(storage.backend.experiment_keys(exp_id).all)
        nodes.add(node.name)
    assert len(nodes) == 3, f"12 experiments landed on {nodes} only"
    assert len(storage.fetch_experiments({})) == 12  # the index walk reads every shard


def _reserve_all(storage, exp_id, queue):
    got = []
    while (trial := storage.reserve_trial(Exp(exp_id))) is not None:
        got.append(trial.id)
    queue.put(got)


@pytest.mark.topology
@pytest.mark.slow
def test_exactly_once_reservation_16_processes_on_cluster(redis_cluster):
    storage = Redis(uri=redis_cluster.url, prefix=_prefix())
    total = 1000
    exp_ids = [create_experiment(storage, name=f"eo-{i}") for i in range(2)]
    ids = {
        exp_id: {
            storage.register_trial(make_trial(exp_id, x=float(i))).id for i in range(total // 2)
        }
        for exp_id in exp_ids
    }
    queue = CTX.Queue()
    # 8 processes per experiment: the two experiments sit on different slots
    procs = [
        CTX.Process(target=_reserve_all, args=(storage, exp_ids[i % 2], queue)) for i in range(16)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    reserved = [tid for got in results for tid in got]
    assert len(reserved) == total, "every trial reserved exactly once"
    assert set(reserved) == ids[exp_ids[0]] | ids[exp_ids[1]]
    assert sum(1 for got in results if got) > 2, "the work was actually shared"
    for exp_id in exp_ids:
        assert storage.fetch_pending_trials(Exp(exp_id)) == []
        assert len(storage.fetch_trials_by_status(Exp(exp_id), "reserved")) == total // 2


# -- Sentinel -----------------------------------------------------------------------------------
@pytest.fixture
def own_sentinel(tmp_path):
    """A Sentinel deployment of this test only (a failover must not disturb the others)."""
    from orion_track_redis.testing import SentinelDeployment

    with SentinelDeployment(tmp_path / "sentinel") as deployment:
        yield deployment


def _wait_replicated(deployment):
    client = deployment.primary.client()
    try:
        client.wait(len(deployment.replicas), 5000)  # the replica has everything written so far
    finally:
        client.close()


@pytest.mark.topology
@pytest.mark.slow
def test_sentinel_failover_keeps_data_and_follows_the_new_primary(own_sentinel):
    uri = f"{own_sentinel.url}?retries=10&retry_backoff=0.1"
    storage = Redis(uri=uri, prefix=_prefix())
    exp_id = create_experiment(storage)
    for i in range(20):
        storage.register_trial(make_trial(exp_id, x=float(i), seconds=i))
    reserved = [storage.reserve_trial(Exp(exp_id)) for _ in range(5)]
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=5) as locked:
        locked.set_state({"round": 1})
    _wait_replicated(own_sentinel)
    old = own_sentinel.master_address()
    new = own_sentinel.failover()
    assert new != old
    # the same storage object keeps working: it asks the sentinels for the new primary
    assert len(storage.fetch_trials(uid=exp_id)) == 20
    assert {t.id for t in storage.fetch_trials_by_status(Exp(exp_id), "reserved")} == {
        t.id for t in reserved
    }
    assert storage.get_algorithm_lock_info(uid=exp_id).state == {"round": 1}
    more = [storage.reserve_trial(Exp(exp_id)) for _ in range(15)]
    assert all(t is not None for t in more) and storage.reserve_trial(Exp(exp_id)) is None
    assert len({t.id for t in reserved + more}) == 20, "no trial reserved twice"
    storage.set_trial_status(more[0], "completed", was="reserved")
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=5) as locked:
        assert locked.state == {"round": 1}
        locked.set_state({"round": 2})
    assert storage.get_algorithm_lock_info(uid=exp_id).state == {"round": 2}
    assert storage.client.connection_pool.get_master_address() == own_sentinel.master_address()


def _hunt_config(tmp_path, uri) -> Path:
    path = tmp_path / "orion_config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {"type": "redis", "database": {"host": uri}},
                "experiment": {
                    "algorithms": {"random": {"seed": None}},
                    "working_dir": str(path.parent / "trials"),
                },
                # a trial whose completion a failover lost is re-run after 5 x heartbeat
                "worker": {"heartbeat": 3},
            }
        )
    )
    return path


@pytest.mark.topology
@pytest.mark.slow
def test_sentinel_failover_during_a_4_worker_hunt(own_sentinel, tmp_path):
    prefix = _prefix()
    uri = f"{own_sentinel.url}?prefix={prefix}&retries=10&retry_backoff=0.1"
    config = _hunt_config(tmp_path, uri)
    name, max_trials = "failover", 12
    cmd = [
        ORION,
        "hunt",
        "--config",
        str(config),
        "-n",
        name,
        "--max-trials",
        str(max_trials),
        sys.executable,
        str(EXAMPLES / "objective.py"),
        "-x~uniform(-5, 5)",
        "-y~uniform(-5, 5)",
    ]
    env = dict(os.environ, ORION_REDIS_URI="")
    workers = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
        )
        for _ in range(4)
    ]
    try:
        storage = Redis(uri=uri)
        deadline = time.monotonic() + 120
        completed = 0
        while completed < 3 and time.monotonic() < deadline:  # failover mid-hunt
            exps = storage.fetch_experiments({"name": name})
            completed = storage.count_completed_trials(Exp(exps[0]["_id"])) if exps else 0
            time.sleep(0.1)
        assert completed >= 3, "the hunt did not start"
        old = own_sentinel.master_address()
        assert own_sentinel.failover(pause_writes=True) != old
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for worker, out in zip(workers, outputs):
        assert worker.returncode == 0, out[-3000:]
    (exp,) = storage.fetch_experiments({"name": name})
    trials = storage.fetch_trials(uid=exp["_id"])
    done = [t for t in trials if t.status == "completed"]
    assert len(done) >= max_trials, f"{len(done)} completed trials, expected {max_trials}"
    assert len({t.id for t in done}) == len(done)
    assert all(t.objective is not None for t in done)
    assert [t for t in trials if t.status == "reserved"] == []


# -- TLS ----------------------------------------------------------------------------------------
@pytest.mark.topology
def test_tls_server_refuses_plain_and_unverified_clients(tls_server, tls_files):
    good = Redis(uri=tls_uri(tls_server, tls_files), prefix=_prefix())
    assert good.client.ping()
    with pytest.raises(ConnectionFailed, match="Cannot reach Redis"):
        Redis(uri=f"redis://127.0.0.1:{tls_server.port}/0?socket_timeout=2", prefix=_prefix())
    # a CA that did not sign the server certificate: verification fails
    with pytest.raises(ConnectionFailed, match="(?i)certificate"):
        Redis(uri=f"{tls_server.url}/0?ssl_ca_certs={tls_files.client_cert}", prefix=_prefix())
    # the server requires a client certificate
    with pytest.raises(ConnectionFailed):
        Redis(uri=f"{tls_server.url}/0?ssl_ca_certs={tls_files.ca}", prefix=_prefix())


@pytest.mark.topology
def test_tls_options_need_a_tls_uri():
    with pytest.raises(ConfigurationError, match="rediss://"):
        Redis(uri="redis://127.0.0.1:1/0?ssl_ca_certs=/ca.pem")


# -- ACL ----------------------------------------------------------------------------------------
@pytest.mark.topology
def test_acl_rules_match_the_commands_the_suite_needs(acl_server):
    """The documented rules are enough for the whole workload (the protocol suite runs on the
    'acl' backend too) and grant neither KEYS/SCAN nor other prefixes."""
    from orion_track_redis.server.connection import ACL_COMMANDS, acl_rules

    prefix = _prefix()
    storage = Redis(uri=acl_user(acl_server, prefix), prefix=prefix)
    _every_storage_method(storage)
    assert not {"keys", "scan", "flushdb", "flushall", "config"} & set(ACL_COMMANDS)
    assert acl_rules("a*b")[1:3] == ["~{a\\*b}*", "~{a\\*b:*"]
    with pytest.raises(ConnectionFailed, match="(?i)key"), storage.backend.guard():
        storage.client.get("{someone-else}:exps")


def _without(prefix, command):
    from orion_track_redis.server.connection import acl_rules

    return [rule for rule in acl_rules(prefix) if rule != f"+{command}"]


@pytest.mark.topology
@pytest.mark.parametrize(
    "command, action",
    [
        ("evalsha", lambda s: create_experiment(s)),
        ("blpop", None),
        ("zadd", None),
    ],
)
def test_acl_user_missing_a_permission_gets_an_error_naming_it(acl_server, command, action):
    prefix = _prefix()
    admin = Redis(uri=f"redis://:admin-pw@127.0.0.1:{acl_server.port}/0", prefix=prefix)
    exp_id = create_experiment(admin)
    storage = Redis(uri=acl_user(acl_server, prefix, _without(prefix, command)), prefix=prefix)
    with pytest.raises(ConnectionFailed) as info:
        if command == "evalsha":
            action(storage)
        elif command == "blpop":  # only a waiter blocks on the wake-up list
            with admin.acquire_algorithm_lock(uid=exp_id, timeout=5):
                with storage.acquire_algorithm_lock(uid=exp_id, timeout=0.5, retry_interval=0.1):
                    pass
        else:  # a command run inside a Lua script
            storage.register_trial(make_trial(exp_id))
    message = str(info.value)
    assert command in message.lower(), message
    assert "ACL" in message and f"pw-{prefix}" not in message


# -- docker-compose and examples ----------------------------------------------------------------
def test_docker_compose_profiles_and_healthchecks():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    profiles = {}
    for name, service in services.items():
        for profile in service.get("profiles", []):
            profiles.setdefault(profile, []).append(name)
        assert "healthcheck" in service, f"service {name} has no healthcheck"
    assert set(profiles) == {"standalone", "sentinel", "cluster"}
    assert any(
        "appendonly" in " ".join(map(str, services[s].get("command", [])))
        for s in profiles["standalone"]
    )
    assert sum(s.startswith("sentinel-") and s[-1].isdigit() for s in profiles["sentinel"]) == 3
    assert len(profiles["cluster"]) >= 6  # 3 primaries + replicas (+ the init job)


@pytest.mark.parametrize("topology", ["standalone", "sentinel", "cluster"])
def test_example_configs_parse_and_resolve(topology):
    config = yaml.safe_load((EXAMPLES / f"orion_config_{topology}.yaml").read_text())
    assert config["storage"]["type"] == "redis"
    opts = resolve(database=config["storage"]["database"])
    assert opts.source == "database.host"
