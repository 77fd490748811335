"""Schema versions: data written by 0.1.0 (schema 1) is refused until `orion-redis upgrade`,
then reads back identical, smaller, and writable; the change log stays trimmed."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
import redis

from helpers import Exp, create_experiment, make_trial
from orion_track_redis import Redis
from orion_track_redis.errors import RedisStorageError
from orion_track_redis.keys import GlobalKeys
from orion_track_redis.ops.cli import main
from orion_track_redis.store import migrations
from orion_track_redis.store import writes as writes_module

FIXTURE = json.loads((Path(__file__).parents[1] / "data" / "schema1.json").read_text())


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def _load_schema1(client, prefix: str) -> None:
    """Write the keys that schema-1 code stored (tests/data/make_schema1.py) under ``prefix``."""
    old = "{" + FIXTURE["prefix"]
    for key, item in FIXTURE["keys"].items():
        name = "{" + prefix + key[len(old) :]
        kind, value = item["type"], item["value"]
        if kind == "string":
            client.set(name, _b(value))
        elif kind == "hash":
            client.hset(name, mapping={_b(k): _b(v) for k, v in value.items()})
        elif kind == "zset":
            client.zadd(name, {_b(m): score for m, score in value})
        elif kind == "list":
            client.rpush(name, *map(_b, value))


def _docs(storage: Redis, exp_id) -> list:
    return [
        json.loads(json.dumps(t.to_dict(), default=str)) for t in storage.fetch_trials(uid=exp_id)
    ]


def _trial_keys(client, prefix):
    return [k for k in client.scan_iter(match="{" + prefix + ":*}:t:*")]


@pytest.fixture
def schema1(redis_server):
    prefix = f"mig-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server.url)
    _load_schema1(client, prefix)
    yield f"{redis_server.url}/0?prefix={prefix}", prefix, client
    client.close()


def test_schema1_is_refused_with_the_upgrade_command_and_no_password(schema1):
    uri, prefix, _ = schema1
    secret_uri = uri.replace("redis://", "redis://:s3cret-pw@")  # the server ignores it
    with pytest.raises(RedisStorageError) as info:
        Redis(uri=uri)
    message = str(info.value)
    assert "schema version 1" in message and "orion-redis" in message and "upgrade" in message
    assert prefix in message
    with pytest.raises(Exception) as info:
        Redis(uri=secret_uri)
    assert "s3cret-pw" not in str(info.value)


def test_upgrade_keeps_every_trial_and_the_lock_and_shrinks_memory(schema1, capsys):
    uri, prefix, client = schema1
    before = sum(client.memory_usage(k, samples=0) for k in _trial_keys(client, prefix))
    assert main(["--uri", uri, "upgrade", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["from"] == 1 and report["to"] == migrations.SCHEMA_VERSION
    assert report["trials_rewritten"] == sum(len(v) for v in FIXTURE["trials"].values())

    storage = Redis(uri=uri)
    for exp_id in FIXTURE["experiments"].values():
        assert _docs(storage, exp_id) == FIXTURE["trials"][str(exp_id)]
    keys = _trial_keys(client, prefix)
    assert all(client.object("encoding", k) in (b"listpack", b"ziplist") for k in keys)
    assert all(not client.hexists(k, "params") for k in keys)
    after = sum(client.memory_usage(k, samples=0) for k in keys)
    assert after < before * 0.75, (before, after)  # measured: 0.60

    alpha = FIXTURE["experiments"]["alpha"]
    lock = storage.get_algorithm_lock_info(uid=alpha)
    assert lock.state == {"registry": {"n": 3}, "rng": (1, 2, 3)} and not lock.locked

    # the upgraded data is writable: finish every trial that is left
    while (trial := storage.reserve_trial(Exp(alpha))) is not None:
        trial.results = [trial.Result(name="objective", type="objective", value=1.0)]
        storage.push_trial_results(trial)
        storage.set_trial_status(trial, "completed", was="reserved")
    assert Redis(uri=uri).fetch_trials(uid=alpha) == storage.fetch_trials(uid=alpha)
    assert storage.fetch_pending_trials(Exp(alpha)) == []


def test_upgrade_is_idempotent_and_exclusive(schema1, capsys):
    uri, prefix, client = schema1
    assert main(["--uri", uri, "upgrade"]) == 0
    assert main(["--uri", uri, "upgrade", "--json"]) == 0
    capsys.readouterr()
    assert main(["--uri", uri, "upgrade", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["from"] == again["to"] == migrations.SCHEMA_VERSION
    assert again["trials_rewritten"] == 0
    client.set("{" + prefix + "}:upgrading", "someone")
    with pytest.raises(RedisStorageError, match="another upgrade"):
        migrations.upgrade(client, GlobalKeys(prefix))


def test_interrupted_upgrade_finishes_on_a_rerun(schema1):
    uri, prefix, client = schema1
    first = _trial_keys(client, prefix)[0]
    fields = client.hgetall(first)
    client.delete(first)  # as if the upgrade died after rewriting this one trial
    from orion_track_redis import codec

    pairs, _ = codec.encode_trial(codec.decode_trial_fields(fields, first.decode()))
    client.hset(first, mapping=dict(zip(pairs[::2], pairs[1::2])))
    report = migrations.upgrade(client, GlobalKeys(prefix))
    assert report["trials_rewritten"] == sum(len(v) for v in FIXTURE["trials"].values()) - 1
    storage = Redis(uri=uri)
    for exp_id in FIXTURE["experiments"].values():
        assert _docs(storage, exp_id) == FIXTURE["trials"][str(exp_id)]


def test_fresh_prefix_gets_the_current_schema(redis_server):
    uri = f"{redis_server.url}/0?prefix=fresh-{uuid.uuid4().hex[:8]}"
    storage = Redis(uri=uri)
    assert (
        migrations.stored_version(storage.client, storage.backend.keys) == migrations.SCHEMA_VERSION
    )


def test_change_log_is_trimmed_and_old_readers_reload(monkeypatch):
    monkeypatch.setattr(writes_module, "CHANGE_LOG_KEEP", 8)
    writer = Redis(uri="fakeredis://trim?prefix=trim")
    reader = Redis(uri="fakeredis://trim?prefix=trim")
    exp_id = create_experiment(writer)
    writer.register_trial(make_trial(exp_id, x=0.0))
    assert len(reader.fetch_trials(uid=exp_id)) == 1
    cache = reader.backend.reads.caches[reader.backend.experiment_keys(exp_id).exp_token]
    for i in range(1, 30):
        writer.register_trial(make_trial(exp_id, x=float(i), seconds=i))
    ek = writer.backend.experiment_keys(exp_id)
    assert writer.client.zcard(ek.changed) <= 8 + 8 // 4
    floor = int(writer.client.get(ek.floor))
    assert floor > cache.rev  # the reader is older than the trimmed part of the log
    fetched = reader.fetch_trials(uid=exp_id)
    assert reader.backend.reads.caches[ek.exp_token] is not cache  # it reloaded everything
    assert [t.to_dict() for t in fetched] == [
        t.to_dict() for t in Redis(uri="fakeredis://trim?prefix=trim").fetch_trials(uid=exp_id)
    ]
    assert len(fetched) == 30
    # a reader within the kept part of the log refreshes incrementally
    cache = reader.backend.reads.caches[ek.exp_token]
    writer.register_trial(make_trial(exp_id, x=99.0, seconds=99))
    assert len(reader.fetch_trials(uid=exp_id)) == 31
    assert reader.backend.reads.caches[ek.exp_token] is cache


# -- schema 3: versioned algorithm state; the release before it is a real worker here ----------
SCHEMA2_RELEASE = "fcd4e63"  # the last commit writing schema 2 (whole algorithm states)


@pytest.fixture(scope="module")
def schema2_release(tmp_path_factory):
    """That release's package, from this repository's history (skipped without it)."""
    import subprocess
    import tarfile

    root = Path(__file__).resolve().parents[2]
    out = tmp_path_factory.mktemp("schema2")
    archive = out / "release.tar"
    made = subprocess.run(
        [
            "git",
            "-C",
            str(root),
            "archive",
            "-o",
            str(archive),
            SCHEMA2_RELEASE,
            "orion_track_redis",
            "lua",
        ],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(
            f"commit {SCHEMA2_RELEASE} (schema 2) is not in this checkout's history: "
            f"{made.stderr.strip()[:200]}"
        )
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return out


def _run_release(release: Path, code: str):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(release)},
    )


def test_a_schema2_worker_refuses_versioned_state_saying_to_upgrade(schema2_release, redis_server):
    """Mixed-version fleet: a worker of the previous release (whole states) meets a prefix a
    current worker set up: it refuses, naming the fix, before it could read a stale snapshot."""
    prefix = f"mixed-{uuid.uuid4().hex[:8]}"
    uri = f"{redis_server.url}/0?prefix={prefix}"
    Redis(uri=uri)  # a current worker: schema 3
    code = (
        "import orion_track_redis\n"
        "print(orion_track_redis.__file__, flush=True)\n"
        "from orion_track_redis import Redis\n"
        f"Redis(uri={uri!r})\n"
    )
    proc = _run_release(schema2_release, code)
    assert proc.stdout.startswith(str(schema2_release))  # the old release ran, not this one
    assert proc.returncode != 0
    assert "schema version 3, newer than this" in proc.stderr
    assert "pip install -U orion-track-redis" in proc.stderr


def test_schema2_state_is_refused_then_upgraded_and_read_whole(schema2_release, redis_server):
    """A prefix the previous release wrote (an experiment whose algorithm state it wrote as a
    whole): refused until `orion-redis upgrade`, then the state reads back as it was and the
    next holds write deltas on top of it."""
    from orion.client import build_experiment

    prefix = f"old-{uuid.uuid4().hex[:8]}"
    uri = f"{redis_server.url}/0?prefix={prefix}"
    code = (
        "from orion.client import build_experiment\n"
        "import orion_track_redis\n"
        f"c = build_experiment('old', space={{'x': 'uniform(0, 1)'}}, "
        f"algorithm={{'random': {{'seed': 1}}}}, storage={{'type': 'redis', 'uri': {uri!r}}})\n"
        "for _ in range(3):\n    c.observe(c.suggest(), 1.0)\n"
        "c.close()\nprint(orion_track_redis.__file__)\n"
    )
    proc = _run_release(schema2_release, code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith(str(schema2_release))
    with pytest.raises(RedisStorageError, match="schema version 2, older .* upgrade"):
        Redis(uri=uri)
    assert main(["--uri", uri, "upgrade"]) == 0
    client = build_experiment("old", storage={"type": "redis", "uri": uri})
    storage = client._experiment._storage
    exp_id = client._experiment.id
    before = storage.get_algorithm_lock_info(uid=exp_id).state
    assert len(before["algorithm"]["registry"]["_trials"]) == 3
    for _ in range(2):
        client.observe(client.suggest(), 1.0)
    ek = storage.backend.experiment_keys(exp_id)
    assert storage.client.llen(ek.lock_log) >= 1  # deltas now
    after = storage.get_algorithm_lock_info(uid=exp_id).state
    assert set(before["algorithm"]["registry"]["_trials"]) < set(
        after["algorithm"]["registry"]["_trials"]
    )
    assert len(after["algorithm"]["registry"]["_trials"]) == 5
    client.close()
