"""Options of the storage: the accepted names and their types, their validation, and the
frozen :class:`Options` a storage connects with (config/uri.py resolves the URI into one).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools

from orion_track_redis.errors import ConfigurationError, redact
from orion_track_redis.keys import validate_prefix

SENTINEL, CLUSTER = "redis+sentinel", "redis+cluster"

# option -> converter; the connection options go to redis-py, ours stay here
_CONNECTION_OPTIONS = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "health_check_interval": float,
    "client_name": str,
    "db": int,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_cert_reqs": str,
    "ssl_check_hostname": lambda v: _bool(v),
    "ssl": lambda v: _bool(v),  # TLS on the Sentinel/Cluster forms (rediss:// otherwise)
    "retries": int,
    "retry_backoff": float,
    "sentinel_username": str,
    "sentinel_password": str,
    "sentinel_ssl": lambda v: _bool(v),
}

# options that server/connection.py consumes itself instead of passing them to redis-py as they are
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password", "sentinel_ssl")

RETRY_OPTIONS = ("retries", "retry_backoff")

# what else a Redis URI is called elsewhere (redis-py's from_url, Oríon's database.host)
_URI_ALIASES = ("url", "host", "address", "redis_url", "redis_uri", "connection_string")

_OWN_OPTIONS = {
    "prefix": str,
    "lock_ttl": float,
    "replica_acks": lambda v: _int(v),
    "replica_ack_timeout": lambda v: _int(v),
    "accelerate": lambda v: _bool(v),
    "batch_observe": lambda v: _bool(v),
    "password_file": str,
    "lease": float,
    "stop_grace": float,
    "trap_signals": lambda v: _bool(v),
}

# no replicas to confirm a write: the in-process and embedded servers; Redis Cluster routes each
# pipelined command by its key, so WAIT (no key) would not reach the node that ran the script
_NO_REPLICA_ACKS = {
    "fakeredis": "an in-process server has no replicas",
    "embedded": "the embedded server has no replicas",
    CLUSTER: "a Cluster pipeline cannot send WAIT to the node of the script's key",
}

# redis-py 8's from_url() retries nothing by default; every write script is retry-safe
# (request ids), so ride out a restart or failover: 6 retries, back-off 0.25 s doubling to 10 s
# (about 16 s in all), then a clear ConnectionFailed.
DEFAULTS = {
    "socket_timeout": 30.0,
    "socket_connect_timeout": 10.0,
    "retries": 6,
    "retry_backoff": 0.25,
}


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (use true or false)")


def _int(value) -> int:
    """A whole number, strictly: 1.5, True or "2.0" are mistakes, not 1, 1 and 2."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{value!r} is not a whole number")


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything needed to (re)connect: picklable, so the storage survives cloudpickle."""

    scheme: str
    url: str  # connection URL without our own options; may hold a password: never log it
    source: str  # which configuration source won, for the log line
    prefix: str = "orion"
    lock_ttl: float = 30.0
    replica_acks: int = 0  # replicas that must confirm each write script (WAIT); 0 = no WAIT
    replica_ack_timeout: int = 1000  # milliseconds WAIT blocks for them
    accelerate: bool = True  # copy-free algorithm-lock holds (orion_patches/hold.py) where verified
    batch_observe: bool = True  # completions observed by the next hold (needs accelerate)
    lease: float = 30.0  # seconds a reservation survives its worker's last renewal (store/lease.py)
    stop_grace: float = 10.0  # seconds a stopping worker's objective gets before SIGKILL
    trap_signals: bool = True  # stop cleanly on SIGTERM/SIGUSR1/SIGUSR2 (orion_patches/shutdown.py)
    connection: tuple = ()  # (name, value) pairs of connection options for redis-py
    state_secret: bytes | None = dataclasses.field(default=None, repr=False)
    # Sentinel/Cluster forms only: the host list, the Sentinel service, the data nodes' account
    hosts: tuple = ()  # ((host, port), ...)
    service: str = ""
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)

    @functools.cached_property  # read by every storage call (error messages name the endpoint)
    def redacted(self) -> str:
        return redact(self.url)

    def __repr__(self) -> str:  # never show the password
        return f"Options(url={self.redacted!r}, prefix={self.prefix!r}, source={self.source!r})"


def _convert(name: str, value, table: dict):
    try:
        return table[name](value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"option {name}={value!r} is invalid: {exc}. Fix its value in the URI or config."
        ) from None


def split_options(query_items, extra: dict) -> tuple[dict, dict]:
    """Separate our options from the connection ones; reject unknown names."""
    own, conn = {}, dict(DEFAULTS)
    for name, value in list(query_items) + list(extra.items()):
        if name in _OWN_OPTIONS:
            own[name] = _convert(name, value, _OWN_OPTIONS)
        elif name in _CONNECTION_OPTIONS:
            conn[name] = _convert(name, value, _CONNECTION_OPTIONS)
        else:
            known = sorted(_OWN_OPTIONS) + sorted(_CONNECTION_OPTIONS)
            # `uri` is the constructor's own argument: named here so that url=/host= find it
            near = (
                ["uri"]
                if str(name).lower() in _URI_ALIASES
                else difflib.get_close_matches(str(name), ["uri", *known], n=1)
            )
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ConfigurationError(
                f"unknown option {name!r}.{hint} Accepted: uri (the Redis URI), and the options "
                f"{', '.join(known)}."
            )
    return own, conn


def validate_own(own: dict) -> None:
    if "prefix" in own:
        validate_prefix(own["prefix"])
    ttl = own.get("lock_ttl")
    if ttl is not None and not 1 <= ttl <= 86400:
        raise ConfigurationError(
            f"lock_ttl={ttl} is out of range: give the algorithm-lock TTL in seconds, "
            "between 1 and 86400 (default 30)."
        )
    lease = own.get("lease")
    if lease is not None and lease != 0 and not 3 <= lease <= 86400:
        raise ConfigurationError(
            f"lease={lease} is out of range: give the seconds a reservation survives a dead "
            "worker, between 3 and 86400 (default 30), or 0 to rely on Oríon's heartbeat alone."
        )
    grace = own.get("stop_grace")
    if grace is not None and not 0 <= grace <= 3600:
        raise ConfigurationError(
            f"stop_grace={grace} is out of range: give the seconds a stopping worker's objective "
            "gets between SIGTERM and SIGKILL, 0 to 3600 (default 10; keep it below Slurm's "
            "KillWait)."
        )


def validate_acks(own: dict, conn: dict, scheme: str) -> None:
    acks, timeout = own.get("replica_acks", 0), own.get("replica_ack_timeout", 1000)
    if acks < 0:
        raise ConfigurationError(
            f"replica_acks={acks} is out of range: give how many replicas must confirm each "
            "write, 0 (no confirmation, the default) or more."
        )
    if timeout <= 0:
        raise ConfigurationError(
            f"replica_ack_timeout={timeout} is out of range: give the milliseconds a write "
            "waits for its replica confirmations, more than 0 (default 1000)."
        )
    # WAIT blocks the reply: a socket that times out first would retry the call instead
    socket_ms = conn.get("socket_timeout", DEFAULTS["socket_timeout"]) * 1000
    if acks and timeout > socket_ms - 1000:
        raise ConfigurationError(
            f"replica_ack_timeout={timeout} ms is too long for socket_timeout="
            f"{socket_ms / 1000:g} s: make it at least 1 s shorter than socket_timeout."
        )
    if acks and scheme in _NO_REPLICA_ACKS:
        raise ConfigurationError(
            f"replica_acks is not supported with {scheme}:// ({_NO_REPLICA_ACKS[scheme]}): "
            "remove it, or use a standalone primary with replicas or redis+sentinel://."
        )


def validate_conn(conn: dict) -> None:
    for name in ("socket_timeout", "socket_connect_timeout", "health_check_interval"):
        if name in conn and not conn[name] > 0:
            raise ConfigurationError(f"{name}={conn[name]} must be a positive number of seconds.")
    if conn.get("retries", 0) < 0 or conn.get("retry_backoff", 0) < 0:
        raise ConfigurationError(
            "retries and retry_backoff must be >= 0 (a count, and the back-off base in seconds)."
        )
    # BLPOP on the lock's wake-up list blocks up to ~1 s; a shorter read timeout breaks it
    if conn.get("socket_timeout", 30) < 2:
        raise ConfigurationError(
            f"socket_timeout={conn['socket_timeout']} is too short: use at least 2 seconds "
            "(waiting for the algorithm lock blocks on the server for up to 1 s)."
        )
