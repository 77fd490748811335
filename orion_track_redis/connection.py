"""Options -> a redis-py client: standalone TCP, TLS, unix socket, fakeredis, embedded."""
from __future__ import annotations

import logging
import threading

import redis

from .errors import ConfigurationError
from .uri import Options

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
    from .embedded import embedded_uri

    path = opts.url.split("://", 1)[1]
    return embedded_uri(path or None)


def make_client(opts: Options):
    """A new client for ``opts`` (one per process: it holds sockets and locks)."""
    if opts.scheme == "fakeredis":
        return _fake_client(opts)
    url = _embedded_url(opts) if opts.scheme == "embedded" else opts.url
    kwargs = dict(opts.connection)
    if not url.startswith("rediss://"):
        for name in [k for k in kwargs if k.startswith("ssl_")]:
            raise ConfigurationError(
                f"option {name} needs a TLS URI: use rediss:// instead of "
                f"{url.split('://', 1)[0]}://."
            )
    return redis.Redis.from_url(url, **kwargs)


class RedisDB:
    """What ``storage._db`` shows: Oríon prints its class name (``orion serve``) and repr."""

    def __init__(self, opts: Options):
        self._opts = opts

    def __repr__(self) -> str:
        return f"RedisDB({self._opts.redacted}, prefix={self._opts.prefix})"
