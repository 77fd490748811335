"""Fixtures: real redis-server processes started on free loopback ports, fakeredis, and Oríon's
Legacy storage over EphemeralDB as the reference implementation."""
from __future__ import annotations

import uuid

import orion.core
import pytest

from orion_track_redis import Redis
from orion_track_redis.server import RedisServer

BACKENDS = ("fakeredis", "redis", "legacy")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session (AOF on); tests isolate themselves by prefix."""
    with RedisServer(tmp_path_factory.mktemp("redis-server")) as server:
        server.start()
        yield server


def make_storage(kind: str, request, **options):
    """A fresh, isolated storage of ``kind``; ``request`` gives access to session fixtures."""
    if kind == "legacy":
        from orion.storage.legacy import Legacy

        return Legacy(database={"type": "EphemeralDB"})
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    if kind == "fakeredis":
        return Redis(uri=f"fakeredis://{prefix}", prefix=prefix, **options)
    server = request.getfixturevalue("redis_server")
    return Redis(uri=server.url, prefix=prefix, **options)


@pytest.fixture(params=BACKENDS)
def storage(request):
    return make_storage(request.param, request)


@pytest.fixture(params=("fakeredis", "redis"))
def redis_storage(request):
    """Only our backend (for behaviour Legacy does not have)."""
    return make_storage(request.param, request)


@pytest.fixture
def heartbeat():
    """Set Oríon's worker.heartbeat (seconds) for lost-trial tests; restored afterwards."""
    previous = orion.core.config.worker.heartbeat

    def set_heartbeat(seconds):
        orion.core.config.worker.heartbeat = seconds

    yield set_heartbeat
    orion.core.config.worker.heartbeat = previous
