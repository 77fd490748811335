"""Configuration: where the URI comes from, options, and clear errors without passwords."""

from __future__ import annotations

import logging
import pickle
import time

import pytest
from orion.storage.base import setup_storage

from orion_track_redis import ConfigurationError, ConnectionFailed, Redis
from orion_track_redis.config.uri import resolve
from orion_track_redis.testing import RedisServer, free_port


def test_resolution_order(monkeypatch):
    monkeypatch.setenv("ORION_REDIS_URI", "redis://env-host:1")
    db = {"host": "redis://db-host:2", "type": "PickledDB"}
    assert resolve("redis://arg-host:3", db).source == "uri argument"
    assert resolve(None, db).url == "redis://db-host:2"
    assert resolve(None, {"host": "/path/to/db.pkl"}).url == "redis://env-host:1"
    monkeypatch.delenv("ORION_REDIS_URI")
    opts = resolve(None, {"host": ""})
    assert opts.scheme == "embedded" and opts.source == "embedded default"


def test_options_from_query_and_keywords():
    opts = resolve(
        "redis://h:6379/2?prefix=team-a/x&lock_ttl=12.5&socket_timeout=5",
        options={"socket_connect_timeout": 3},
    )
    assert opts.prefix == "team-a/x" and opts.lock_ttl == 12.5
    assert dict(opts.connection)["socket_timeout"] == 5.0
    assert dict(opts.connection)["socket_connect_timeout"] == 3.0
    assert opts.url == "redis://h:6379/2"


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("http://h:1", "unsupported Redis URI"),
        ("redis://h:99999", "malformed Redis URI"),
        ("redis://:6379", "has no host"),
        ("unix://", "has no socket path"),
        ("redis://h?colour=blue", "unknown option 'colour'"),
        ("redis://h?prefix=a{b}", "prefix 'a{b}' is invalid"),
        ("redis://h?prefix=", "prefix '' is invalid"),
        ("redis://h?lock_ttl=0", "lock_ttl=0.0 is out of range"),
        ("redis://h?lock_ttl=soon", "lock_ttl='soon' is invalid"),
        ("redis://h?socket_timeout=1", "socket_timeout=1.0 is too short"),
        ("redis://h?socket_connect_timeout=-1", "must be a positive number"),
        ("redis://h?ssl_check_hostname=maybe", "not a boolean"),
        ("redis://h?lock_tll=5", "unknown option 'lock_tll'. Did you mean 'lock_ttl'?"),
        ("redis://h/zero", "the path must be a database number (/0, /1, ...), not '/zero'"),
        ("redis://h/0/1", "the path must be a database number (/0, /1, ...), not '/0/1'"),
        ("redis://h/2?db=3", "gives the database twice (path /2 and db=3)"),
        ("rediss://h/x", "the path must be a database number"),
    ],
)
def test_bad_configuration_is_explained(uri, fragment):
    with pytest.raises(
        ConfigurationError,
        match=fragment.replace("{", r"\{")
        .replace("}", r"\}")
        .replace("?", r"\?")
        .replace("(", r"\(")
        .replace(")", r"\)")
        .replace(".", r"\."),
    ):
        resolve(uri)


def test_a_database_the_server_lacks_is_explained(redis_server):
    with pytest.raises(ConfigurationError, match="has no such database") as info:
        Redis(uri=f"{redis_server.url}/99")
    assert "Traceback" not in str(info.value) and "/0 in the URI" in str(info.value)


def test_tls_option_needs_rediss():
    with pytest.raises(ConfigurationError, match="needs a TLS URI"):
        Redis(uri="redis://127.0.0.1:1?ssl_ca_certs=/tmp/ca.pem")


def test_tls_options_are_checked_once_at_resolve_time():
    """Before any connection: ssl_* needs rediss:// (or ssl=true on a multi-host form)."""
    with pytest.raises(ConfigurationError, match="use rediss:// instead of redis://"):
        resolve("redis://127.0.0.1:1?ssl_ca_certs=/tmp/ca.pem")
    with pytest.raises(ConfigurationError, match="use rediss:// instead of unix://"):
        resolve("unix:///tmp/r.sock?ssl_ca_certs=/tmp/ca.pem")
    with pytest.raises(ConfigurationError, match="add ssl=true to the redis\\+sentinel://"):
        resolve("redis+sentinel://h1:1,h2:2/svc?ssl_ca_certs=/tmp/ca.pem")
    assert resolve("rediss://127.0.0.1:1?ssl_ca_certs=/tmp/ca.pem").scheme == "rediss"
    assert resolve("redis+sentinel://h1:1/svc?ssl=true&ssl_ca_certs=/tmp/ca.pem").hosts


def test_uri_must_be_a_string():
    with pytest.raises(ConfigurationError, match="must be a string"):
        resolve(12)


def test_passwords_never_shown(caplog):
    caplog.set_level(logging.DEBUG)
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        Redis(uri=f"redis://user:hunter2@127.0.0.1:{port}/0?socket_connect_timeout=1")
    assert time.monotonic() - start < 10
    assert "hunter2" not in str(info.value)
    assert f"redis://user:***@127.0.0.1:{port}/0" in str(info.value)
    assert "hunter2" not in caplog.text
    opts = resolve(f"redis://user:hunter2@127.0.0.1:{port}")
    assert "hunter2" not in repr(opts)


@pytest.fixture(scope="module")
def password_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("pw"), password="right-pw") as server:
        yield server.start()


@pytest.mark.parametrize("auth", [":nope@", ""])
def test_wrong_or_missing_password_is_explained(password_server, auth):
    with pytest.raises(ConnectionFailed, match="password|credentials") as info:
        Redis(uri=password_server.url.replace("redis://", f"redis://{auth}"))
    assert "nope" not in str(info.value) and "right-pw" not in str(info.value)


def test_right_password_works(password_server):
    storage = Redis(uri=password_server.url.replace("redis://", "redis://:right-pw@"))
    assert storage.fetch_experiments({}) == []


def test_not_a_value_error_through_orion_factory():
    """setup_storage swallows ValueErrors from constructors; ours must come through."""
    with pytest.raises(ConfigurationError, match="unknown option"):
        setup_storage({"type": "redis", "uri": "fakeredis://x?bogus=1"})


def test_orion_factory_finds_the_backend():
    storage = setup_storage({"type": "redis", "uri": "fakeredis://factory"})
    assert isinstance(storage, Redis)


def test_pickle_keeps_configuration_not_connection():
    storage = Redis(uri="fakeredis://pickled?prefix=p1&lock_ttl=9", state_secret="s")
    _ = storage.client  # connected
    state = storage.__getstate__()
    assert set(state) == {"opts"}
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.backend.opts == storage.backend.opts and clone.backend._client is None
    assert clone.backend.opts.state_secret == b"s" and clone.backend.opts.lock_ttl == 9


def test_newer_schema_is_refused():
    from orion_track_redis import RedisStorageError

    storage = Redis(uri="fakeredis://schema?prefix=sch")
    storage.client.set(storage.backend.keys.schema, 99)
    with pytest.raises(RedisStorageError, match="schema version 99"):
        Redis(uri="fakeredis://schema?prefix=sch")


@pytest.mark.parametrize(
    "scheme, says",
    [
        ("redis+cluster://127.0.0.1:{port}", "is not a Redis Cluster node"),
        ("redis+sentinel://127.0.0.1:{port}/mymaster", "is not a Sentinel"),
    ],
)
def test_a_topology_scheme_on_a_plain_server_is_explained(redis_server, scheme, says, capsys):
    """redis+cluster:// or redis+sentinel:// pointed at a standalone server: a clear
    ConfigurationError naming the scheme that fits (exit 2 from orion-redis), not a raw
    RedisClusterException or a Sentinel error carrying whole client reprs."""
    from orion_track_redis.ops.cli import main

    uri = scheme.format(port=redis_server.port) + "?socket_timeout=2"
    with pytest.raises(ConfigurationError, match=says) as info:
        Redis(uri=uri)
    assert "redis://host:port/0" in str(info.value) and "<redis." not in str(info.value)
    assert main(["--uri", uri, "info"]) == 2
    assert says in capsys.readouterr().err


def test_password_kept_out_of_the_uri(password_server, tmp_path, monkeypatch, caplog):
    """A password file (option or ORION_REDIS_PASSWORD_FILE, the container-secrets way) or
    REDISCLI_AUTH (redis-cli's variable) authenticates; the URI's own password wins; the
    password shows nowhere; a missing or empty file is a clear error naming the file."""
    from orion_track_redis.config import uri as uri_module

    url = password_server.url  # no password in it
    secret = tmp_path / "redis-password"
    secret.write_text("right-pw\n")
    monkeypatch.delenv(uri_module.ENV_CLI_AUTH, raising=False)
    monkeypatch.delenv(uri_module.ENV_PASSWORD_FILE, raising=False)
    with caplog.at_level(logging.DEBUG):
        storage = Redis(uri=f"{url}/0?password_file={secret}")
        assert storage.fetch_experiments({}) == []
        assert "right-pw" not in repr(storage.backend.opts) and "right-pw" not in caplog.text
    monkeypatch.setenv(uri_module.ENV_PASSWORD_FILE, str(secret))
    assert Redis(uri=url).fetch_experiments({}) == []
    with pytest.raises(ConnectionFailed, match="credentials"):  # the URI's password wins
        Redis(uri=url.replace("redis://", "redis://:wrong@"))
    monkeypatch.delenv(uri_module.ENV_PASSWORD_FILE)
    monkeypatch.setenv(uri_module.ENV_CLI_AUTH, "right-pw")
    assert Redis(uri=url).fetch_experiments({}) == []
    monkeypatch.delenv(uri_module.ENV_CLI_AUTH)
    with pytest.raises(ConfigurationError, match="cannot read the Redis password file") as info:
        Redis(uri=f"{url}/0?password_file={tmp_path / 'missing'}")
    assert "missing" in str(info.value) and "Traceback" not in str(info.value)
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigurationError, match="is empty"):
        Redis(uri=url, password_file=str(tmp_path / "empty"))


def test_tls_uri_at_a_plain_server_fails_fast(redis_server):
    """rediss:// at a server without TLS: a clear error within seconds, not after the 30 s
    socket timeout."""
    start = time.monotonic()
    with pytest.raises(ConnectionFailed, match="does not speak TLS") as info:
        Redis(uri=f"rediss://127.0.0.1:{redis_server.port}/0")
    assert time.monotonic() - start < 8
    assert "redis://" in str(info.value)
