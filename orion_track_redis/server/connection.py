"""Options -> a redis-py client: standalone TCP, TLS, unix socket, fakeredis, embedded, Sentinel
(``Sentinel(...).master_for``) and Cluster (``RedisCluster``). The storage makes one client per
process (it rebuilds it after a fork or unpickling)."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING

import redis

from orion_track_redis.config.options import (
    CLUSTER,
    RETRY_OPTIONS,
    SENTINEL,
    SENTINEL_OPTIONS,
    Options,
)
from orion_track_redis.errors import ConfigurationError, ConnectionFailed
from orion_track_redis.keys import glob_escape

if TYPE_CHECKING:  # _sentinel_connection_classes' mixin calls up to a Sentinel connection
    from redis.sentinel import SentinelManagedConnection as _SentinelBase
else:
    _SentinelBase = object

log = logging.getLogger(__name__)

# fakeredis servers by name, so every storage of one process sees the same data
_FAKE_SERVERS: dict = {}
_FAKE_LOCK = threading.Lock()


def _fake_client(opts: Options):
    try:
        import fakeredis
    except ImportError:
        raise ConfigurationError(
            "fakeredis:// needs the fakeredis package: pip install 'orion-track-redis[fakeredis]'."
        ) from None
    name = opts.url.split("://", 1)[1].strip("/") or "default"
    with _FAKE_LOCK:
        server = _FAKE_SERVERS.setdefault(name, fakeredis.FakeServer())
    return fakeredis.FakeRedis(server=server)


def _embedded_url(opts: Options) -> str:
    from orion_track_redis.server.embedded import embedded_uri

    path = opts.url.split("://", 1)[1]
    return embedded_uri(path or None)


def _retry(kwargs: dict) -> None:
    """``retries``/``retry_backoff`` -> a redis-py ``Retry`` (exponential back-off with jitter,
    capped at 10 s or 10 x the base); without them redis-py's own default applies."""
    if not any(name in kwargs for name in RETRY_OPTIONS):
        return
    from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
    from redis.retry import Retry

    retries = kwargs.pop("retries", 3)
    base = kwargs.pop("retry_backoff", 1.0)
    backoff = (
        ExponentialWithJitterBackoff(base=base, cap=max(10.0, 10 * base)) if base else NoBackoff()
    )
    kwargs["retry"] = Retry(backoff, retries)


def _demoted(exc: Exception) -> bool:
    # A Lua script that writes on a demoted primary fails with "Error running script ...
    # -READONLY You can't write against a read only replica": a plain ResponseError, which
    # redis-py's Sentinel support (it handles READONLY replies of plain commands) lets through.
    return "READONLY You can't write against a read only replica" in str(exc)


def _sentinel_connection_classes():
    """redis-py's Sentinel-managed connections, also treating a script's READONLY error as
    "the primary was demoted": disconnect (the next connect asks the sentinels for the new
    primary) and raise ConnectionError, which the client's Retry retries. Safe to retry: on a
    replica a script fails at its first write, so it changed nothing."""
    from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

    class _Mixin(_SentinelBase):
        # redis-py 8 reconnects a dropped connection inside send_packed_command through
        # connect_check_health(), which reuses the last host/port instead of asking the
        # sentinels (only connect() does): after a failover every retry went back to the old
        # primary. Resolve the primary on every (re)connection of a primary connection.
        _resolving = False

        def connect_to(self, address):
            self._resolving = True
            try:
                return super().connect_to(address)
            finally:
                self._resolving = False

        def connect_check_health(self, *args, **kwargs):
            if not self._resolving and not self._sock and self.connection_pool.is_master:
                self.host, self.port = self.connection_pool.get_master_address()
            return super().connect_check_health(*args, **kwargs)

        def read_response(self, *args, **kwargs):
            try:
                return super().read_response(*args, **kwargs)
            except redis.ResponseError as exc:
                if self.connection_pool.is_master and _demoted(exc):
                    self.disconnect()
                    raise redis.ConnectionError(
                        "the Redis primary was demoted to a replica (Sentinel failover); "
                        "reconnecting to the new primary"
                    ) from exc
                raise

    class Connection(_Mixin, SentinelManagedConnection):
        pass

    class SSLConnection(_Mixin, SentinelManagedSSLConnection):
        pass

    return Connection, SSLConnection


def _sentinel_client(opts: Options, kwargs: dict):
    from redis.sentinel import Sentinel

    sentinel_kwargs = {
        name: kwargs[name]
        for name in ("socket_timeout", "socket_connect_timeout")
        if name in kwargs
    }
    if "sentinel_username" in kwargs:
        sentinel_kwargs["username"] = kwargs.pop("sentinel_username")
    if "sentinel_password" in kwargs:
        sentinel_kwargs["password"] = kwargs.pop("sentinel_password")
    if kwargs.pop("sentinel_ssl", False):
        # the sentinels use the same CA/client certificate as the data nodes
        sentinel_kwargs["ssl"] = True
        sentinel_kwargs.update({k: v for k, v in kwargs.items() if k.startswith("ssl_")})
    if "retry" in kwargs:
        sentinel_kwargs["retry"] = kwargs["retry"]
    plain, tls = _sentinel_connection_classes()
    kwargs["connection_class"] = tls if kwargs.pop("ssl", False) else plain
    sentinel = Sentinel(list(opts.hosts), sentinel_kwargs=sentinel_kwargs)
    # master_for: every connection asks the sentinels for the current primary, and a
    # connection to a demoted primary (READONLY) is dropped and retried on the new one.
    return sentinel.master_for(
        opts.service, username=opts.username, password=opts.password, **kwargs
    )


def _cluster_client(opts: Options, kwargs: dict):
    from redis.cluster import ClusterNode, RedisCluster

    nodes = [ClusterNode(host, port) for host, port in opts.hosts]
    return RedisCluster(
        startup_nodes=nodes, username=opts.username, password=opts.password, **kwargs
    )


def make_client(opts: Options):
    """A new client for ``opts`` (one per process: it holds sockets and locks)."""
    if opts.scheme == "fakeredis":
        return _fake_client(opts)
    kwargs = dict(opts.connection)
    _retry(kwargs)
    if opts.scheme in (SENTINEL, CLUSTER):
        if opts.scheme == CLUSTER:
            return _cluster_client(opts, kwargs)
        return _sentinel_client(opts, kwargs)
    for name in SENTINEL_OPTIONS:
        kwargs.pop(name, None)  # rejected by config/uri.py already; never reaches redis-py
    url = _embedded_url(opts) if opts.scheme == "embedded" else opts.url
    if opts.password is not None:  # kept out of the URI (password file, REDISCLI_AUTH)
        kwargs["password"] = opts.password
    return redis.Redis.from_url(url, **kwargs)


class RedisDB:
    """What ``storage._db`` shows: Oríon prints its class name (``orion serve``) and repr."""

    def __init__(self, opts: Options):
        self._opts = opts

    def __repr__(self) -> str:
        return f"RedisDB({self._opts.redacted}, prefix={self._opts.prefix})"


# Commands the storage sends (client side, and inside its Lua scripts: Redis checks both).
# Kept next to the client code so that a new command is added here too; docs/deployment.md's ACL
# section prints this list, and tests/faults/test_topologies.py runs the suite with exactly it.
ACL_COMMANDS = (
    # connection: health checks
    "ping",
    # scripts: EVALSHA, EVAL after NOSCRIPT (redis-py's Script), SCRIPT LOAD, and SCRIPT EXISTS
    # (a pipeline checks its scripts before sending them)
    "evalsha",
    "eval",
    "script|load",
    "script|exists",
    # replica_acks: WAIT after each write script
    "wait",
    # reads and the few writes outside scripts
    "get",
    "setnx",
    "incrby",
    "hsetnx",
    "hgetall",
    "hmget",
    "hexists",
    "exists",
    "zrange",
    "zrangebyscore",
    "zmscore",
    "zcard",
    "blpop",
    "del",
    "hset",
    "hdel",
    # batched observation: the backlog read at each hold
    "lrange",
    "llen",
    # update_experiment: optimistic transaction
    "watch",
    "unwatch",
    "multi",
    "exec",
    # inside the Lua scripts
    "hget",
    "hincrby",
    "incr",
    "pexpire",
    "pttl",
    "rpush",
    "set",
    "time",
    "zadd",
    "zrem",
    "zscore",
    "zremrangebyrank",
    "expire",
    "zrank",
    "ltrim",
    # lock_release: the hold durations read by orion-redis metrics
    "lpush",
)


def acl_rules(prefix: str = "orion") -> list[str]:
    """ACL SETUSER rules of a least-privilege user of ``prefix``: its two key patterns
    (``{P}*``: global keys; ``{P:*``: per-experiment keys) and :data:`ACL_COMMANDS`.
    A prefix with glob characters (``*?[]\\``) gets them escaped."""
    escaped = glob_escape(prefix)
    return [
        "resetkeys",
        f"~{{{escaped}}}*",
        f"~{{{escaped}:*",
        "-@all",
        *(f"+{cmd}" for cmd in ACL_COMMANDS),
    ]


@contextlib.contextmanager
def fail_fast(client):
    """No retries while a new storage checks its server: a wrong host, port or password must
    fail at once (within the timeouts), not after the retry budget meant for restarts."""
    get, put = getattr(client, "get_retry", None), getattr(client, "set_retry", None)
    saved = get() if get is not None else None
    if saved is None or put is None:
        yield
        return
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    put(Retry(NoBackoff(), 0))
    try:
        yield
    finally:
        put(saved)


def refuse_plain_server_for_tls(opts: Options, timeout: float = 2.0) -> None:
    """``rediss://`` at a server that answers plain Redis: fail now, not after the socket
    timeout (a plain server waits for the end of the TLS hello as if it were a command line).
    One plain ``PING`` on a separate socket: a TLS server answers it with an alert or by
    closing, a plain one with ``+PONG`` or an auth error."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(opts.url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return  # unreachable or not answering: the TLS connection reports it
    if reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR", b"-WRONGPASS")):
        raise ConnectionFailed(
            f"Redis at {opts.redacted} does not speak TLS (it answered a plain PING): use "
            "redis:// for this server, or enable TLS on it (tls-port)."
        )
