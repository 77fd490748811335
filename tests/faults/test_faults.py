"""Bad data, hostile input and unfriendly servers: clear errors, nothing else damaged."""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
import uuid

import pytest

from helpers import Exp, create_experiment, make_trial
from orion_track_redis import ConnectionFailed, CorruptData, Redis, UnsafeStateError
from orion_track_redis.errors import RedisStorageError
from orion_track_redis.server.checks import check_server
from orion_track_redis.testing import RedisServer


class _Planted:
    """A pickle that would create a file when unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_planted_pickle_is_refused_and_never_run(redis_storage, tmp_path):
    victim = create_experiment(redis_storage, name="victim")
    healthy = create_experiment(redis_storage, name="healthy")
    marker = tmp_path / "pwned"
    ek = redis_storage.backend.experiment_keys(victim)
    redis_storage.client.hset(ek.lock, "state", pickle.dumps({"x": _Planted(marker)}))
    with pytest.raises(UnsafeStateError):
        with redis_storage.acquire_algorithm_lock(uid=victim, timeout=2):
            pass
    with pytest.raises(UnsafeStateError):
        redis_storage.get_algorithm_lock_info(uid=victim)
    assert not marker.exists(), "the payload was executed"
    assert not redis_storage.get_algorithm_lock_info(uid=healthy).locked
    with redis_storage.acquire_algorithm_lock(uid=healthy, timeout=2) as locked:
        locked.set_state({"ok": 1})


def test_planted_pickle_refused_even_with_a_secret(tmp_path):
    storage = Redis(uri=f"fakeredis://{uuid.uuid4().hex}", state_secret="team-secret")
    exp_id = create_experiment(storage)
    with storage.acquire_algorithm_lock(uid=exp_id) as locked:
        locked.set_state({"signed": True})
    assert storage.get_algorithm_lock_info(uid=exp_id).state == {"signed": True}
    marker = tmp_path / "pwned"
    storage.client.hset(
        storage.backend.experiment_keys(exp_id).lock, "state", pickle.dumps(_Planted(marker))
    )
    with pytest.raises(UnsafeStateError):
        storage.get_algorithm_lock_info(uid=exp_id)
    assert not marker.exists()


def test_corrupt_trial_names_the_key_and_spares_others(redis_storage):
    broken = create_experiment(redis_storage, name="broken")
    fine = create_experiment(redis_storage, name="fine")
    trial = redis_storage.register_trial(make_trial(broken))
    redis_storage.register_trial(make_trial(fine))
    key = redis_storage.backend.experiment_keys(broken).trial(trial.id)
    redis_storage.client.hset(key, "params", "{not json")
    with pytest.raises(CorruptData, match=r":t:") as info:
        redis_storage.fetch_trials(uid=broken)
    assert key in str(info.value) and "prefix" in str(info.value)
    assert len(redis_storage.fetch_trials(uid=fine)) == 1
    assert redis_storage.reserve_trial(Exp(fine)) is not None


def test_foreign_key_type_is_explained(redis_storage):
    exp_id = create_experiment(redis_storage)
    ek = redis_storage.backend.experiment_keys(exp_id)
    redis_storage.client.set(ek.status("new"), "someone else's string")
    with pytest.raises(CorruptData, match="foreign type"):
        redis_storage.register_trial(make_trial(exp_id))
    other = create_experiment(redis_storage, name="other")
    redis_storage.register_trial(make_trial(other))


def test_corrupt_experiment_document(redis_storage):
    exp_id = create_experiment(redis_storage, name="bad")
    create_experiment(redis_storage, name="good")
    redis_storage.client.hset(
        redis_storage.backend.keys.exp(redis_storage.backend.experiment_keys(exp_id).exp_token),
        "space",
        "\x00garbage",
    )
    with pytest.raises(CorruptData, match=":exp:"):
        redis_storage.fetch_experiments({})
    assert redis_storage.fetch_experiments({"_id": 2})[0]["name"] == "good"


@pytest.mark.parametrize("name", ["a" * 10_000, "ü名前 {x}:y", "{", "}", " ", "%41", "a\nb"])
def test_hostile_names_round_trip(redis_storage, name):
    exp_id = create_experiment(redis_storage, name=name)
    assert redis_storage.fetch_experiments({"name": name})[0]["_id"] == exp_id
    redis_storage.register_trial(make_trial(exp_id))
    assert redis_storage.reserve_trial(Exp(exp_id)) is not None


def test_huge_documents(redis_storage):
    blob = "x" * 2_000_000
    exp_id = create_experiment(redis_storage, name="huge", metadata={"user": "a", "blob": blob})
    assert redis_storage.fetch_experiments({"_id": exp_id})[0]["metadata"]["blob"] == blob
    trial = make_trial(exp_id)
    trial._params[0].type = "categorical"
    trial._params[0].value = list(range(100_000))
    redis_storage.register_trial(trial)
    assert redis_storage.fetch_trials(uid=exp_id)[0].params["/x"] == list(range(100_000))


@pytest.mark.parametrize("name", ['we"ird', "params#0", "back\\slash"])
def test_bad_field_names_are_refused(redis_storage, name):
    exp_id = create_experiment(redis_storage)
    redis_storage.register_trial(make_trial(exp_id))
    with pytest.raises(ValueError, match="cannot be stored"):
        redis_storage.update_trials(uid=exp_id, **{name: 1})
    assert [t.to_dict() for t in redis_storage.fetch_trials(uid=exp_id)] == [
        make_trial(exp_id).to_dict() | {"_id": make_trial(exp_id).id}
    ]


# -- servers that are not what they should be ------------------------------------------------
def _serve(handler):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    threading.Thread(target=handler, args=(listener,), daemon=True).start()
    return listener.getsockname()[1]


def test_port_speaking_another_protocol():
    def http(listener):
        while True:
            conn, _ = listener.accept()
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    port = _serve(http)
    with pytest.raises(ConnectionFailed, match="Redis protocol|Cannot reach") as info:
        Redis(uri=f"redis://:pw@127.0.0.1:{port}")
    assert "pw@" not in str(info.value)


def test_refused_connection_message_reads_cleanly():
    """One sentence per fact: redis-py's own message ends with a period; ours must not double
    it ("Connection refused.."), and the last line alone must say what to do."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ConnectionFailed) as info:
        Redis(uri=f"redis://:pw@127.0.0.1:{port}/0")
    message = str(info.value)
    assert ".." not in message and "pw" not in message
    assert "Connection refused" in message and "Check that the server runs" in message


@pytest.mark.slow
def test_orion_commands_end_on_our_message_not_a_traceback(tmp_path):
    """`orion hunt`/`orion status` at a server that is not there: one line saying what and
    what to do (Oríon prints a traceback through its builder for anything a storage raises);
    ORION_REDIS_TRACEBACK=1 brings the traceback back."""
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "ORION_STORAGE_TYPE": "redis",
        "ORION_DB_ADDRESS": f"redis://:pw@127.0.0.1:{port}/0",
    }
    orion = [os.path.join(os.path.dirname(sys.executable), "orion")]
    hunt = [
        *orion,
        "hunt",
        "-n",
        "gone",
        "--exp-max-trials",
        "1",
        sys.executable,
        "-c",
        "0",
        "-x~uniform(0,1)",
    ]
    for command in (hunt, [*orion, "status"]):
        done = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 1
        assert "Traceback" not in done.stderr and "pw" not in done.stderr
        last = done.stderr.strip().splitlines()[-2]
        assert last.startswith("orion: ConnectionFailed: Cannot reach Redis at redis://")
        assert f"127.0.0.1:{port}/0" in last and "Check that the server runs" in last
    env["ORION_REDIS_TRACEBACK"] = "1"
    done = subprocess.run(hunt, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "Traceback" in done.stderr and "ConnectionFailed" in done.stderr


def test_silent_server_fails_within_the_timeout():
    port = _serve(lambda listener: time.sleep(3600))  # accepts (backlog) but never answers
    start = time.monotonic()
    with pytest.raises(ConnectionFailed, match="Cannot reach"):
        Redis(uri=f"redis://127.0.0.1:{port}?socket_timeout=2&socket_connect_timeout=2")
    assert time.monotonic() - start < 30


def test_old_redis_is_refused():
    with pytest.raises(RedisStorageError, match="needs 6.2 or newer"):
        check_server({"redis_version": "5.0.14"}, "redis://h:1")
    assert (
        check_server(
            {"redis_version": "7.0.15", "maxmemory_policy": "noeviction", "aof_enabled": 1},
            "redis://h:1",
        )
        == []
    )


def test_eviction_and_no_persistence_warn_loudly(tmp_path, caplog):
    with RedisServer(
        tmp_path, appendonly=False, extra_args=["--maxmemory-policy", "allkeys-lru"]
    ) as server:
        server.start()
        Redis(uri=server.url, prefix="warn")
    text = caplog.text
    assert "allkeys-lru" in text and "noeviction" in text
    assert "persistence disabled" in text and "appendonly yes" in text


@pytest.mark.parametrize(
    "template",
    [
        "Error running script (call to f_{sha}): @user_script:{line}: "
        "The user executing the script can't run this command or subcommand",
        "The user executing the script can't run this command or subcommand script: {sha}, on "
        "@user_script:{line}.",
    ],
)
def test_acl_denial_in_a_script_names_the_command(template):
    """Both wordings Redis 7 uses for an ACL denial inside a script."""
    import hashlib

    from orion_track_redis.store import scripts
    from orion_track_redis.store.scripts import name_denial

    source = scripts.source("register_trial")
    line = next(n for n, text in enumerate(source.splitlines(), 1) if "'ZADD'" in text)
    msg = template.format(sha=hashlib.sha1(source.encode()).hexdigest(), line=line)
    own = (scripts.lua_dir() / "register_trial.lua").read_text(encoding="utf-8")
    first_zadd = next(n for n, text in enumerate(own.splitlines(), 1) if "'ZADD'" in text)
    assert line > first_zadd  # an include comes before: the source's lines are not the file's
    assert name_denial(msg) == f"the ZADD command (script register_trial.lua, line {first_zadd})"
