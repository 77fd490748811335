"""Exception tree of orion-track-redis and the one boundary that translates redis-py errors.

Oríon's own exceptions (DuplicateKeyError, FailedUpdate, LockAcquisitionTimeout, ...) are raised
as-is where Oríon expects them; everything else that goes wrong is a :class:`RedisStorageError`
whose message names the problem and the fix. None of these is a ``ValueError`` subclass:
``orion.storage.base.setup_storage`` swallows ValueErrors raised by a backend's constructor.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

import redis.exceptions as rex

from orion_track_redis.redaction import redact

# This module imports nothing of the package but redaction (stdlib only): every other module
# stands on it. What a message needs from above (a script's source) is passed in.

MIN_VERSION = (6, 2)  # the oldest Redis served (checked by serverchecks, named in messages)


class RedisStorageError(Exception):
    """Base class of every error raised by orion-track-redis itself."""


class ConfigurationError(RedisStorageError):
    """The configuration (URI, options, environment) is invalid."""


class ConnectionFailed(RedisStorageError):
    """Redis could not be reached, or refused us (auth, ACL, TLS)."""


class CorruptData(RedisStorageError):
    """Data stored under our keys cannot be decoded."""


class UnsafeStateError(RedisStorageError):
    """Algorithm state read from Redis was refused: unsigned/forged and not allow-listed."""


class EmbeddedServerError(RedisStorageError):
    """The embedded redis-server could not be found or started."""


ENV_TRACEBACK = "ORION_REDIS_TRACEBACK"


def install_cli_excepthook() -> None:
    """In an ``orion`` command (``orion hunt``, ``orion status``...), end on one line for an
    error of ours instead of Oríon's traceback through its builder and our boundary: our
    message already names the problem and the fix. Other exceptions, other programs (the
    Python API) and ``ORION_REDIS_TRACEBACK=1`` keep Python's traceback."""
    if os.path.basename(sys.argv[0] if sys.argv else "") != "orion":
        return
    if getattr(sys.excepthook, "_orion_track_redis", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not issubclass(kind, RedisStorageError) or os.environ.get(ENV_TRACEBACK):
            return previous(kind, value, tb)
        print(
            f"orion: {kind.__name__}: {value}\n({ENV_TRACEBACK}=1 shows the traceback)",
            file=sys.stderr,
        )

    hook._orion_track_redis = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _short(exc: Exception) -> str:
    """redis-py's Sentinel errors embed whole client reprs: keep the message, drop those."""
    return re.sub(r"<redis\.client\.Redis\(.*\)>", "<sentinel>", str(exc))


def _scrub(msg: str) -> str:
    """Redis echoes the arguments of an unknown command (HELLO 3 AUTH user password...)."""
    return redact(
        re.sub(
            r"with args beginning with:.*", "with args beginning with: (hidden)", msg, flags=re.S
        )
    )


class translate_errors:
    """``with translate_errors(where):`` turns redis-py exceptions into our own, with a message
    that says what to do. ``where`` names the endpoint (already redacted) so the user knows
    which server failed; ``name_denial(msg)`` (scripts.name_denial) names what an ACL denial
    inside a Lua script hit. A class, not a generator context manager: it wraps every storage
    call and costs a third as much."""

    __slots__ = ("where", "name_denial")

    def __init__(self, where: str, name_denial: Callable[[str], str] | None = None):
        self.where = where
        self.name_denial = name_denial

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> None:
        # RedisClusterException is no RedisError (redis-py's own hierarchy)
        if isinstance(exc, (rex.RedisError, rex.RedisClusterException)):
            _raise_translated(exc, self.where, self.name_denial)
        # not ours, or untranslated: propagates unchanged


def _raise_translated(
    error: Exception, where: str, name_denial: Callable[[str], str] | None = None
) -> None:
    """Raise our exception for ``error``; return to let the original propagate."""
    try:
        raise error
    except rex.RedisClusterException as exc:
        if "Cluster mode is not enabled" in str(exc):
            raise ConfigurationError(
                f"{where} is not a Redis Cluster node (cluster mode is not enabled on it): for a "
                "standalone server use redis://host:port/0; redis+cluster:// is for the nodes of "
                "a Redis Cluster."
            ) from None
        raise ConnectionFailed(f"Redis Cluster at {where}: {redact(exc)}") from None
    except rex.AuthenticationError as exc:
        raise ConnectionFailed(
            f"Redis at {where} rejected the credentials ({redact(exc)}). "
            "Fix the user/password in the URI (redis://user:password@host:port)."
        ) from None
    except rex.NoPermissionError as exc:
        raise ConnectionFailed(
            f"Redis at {where} denied a command to this ACL user ({redact(exc)}). "
            "Grant the user the commands and key pattern listed in docs/deployment.md "
            "(section 'Least privilege (ACL)')."
        ) from None
    except rex.ReadOnlyError as exc:
        raise ConfigurationError(
            f"Redis at {where} is a read-only replica: it refused a write ({redact(exc)}). "
            "Point the URI at the primary (`INFO replication` on the replica names it: "
            "master_host, master_port), or use redis+sentinel:// to follow the primary."
        ) from None
    except rex.ResponseError as exc:
        msg = _scrub(str(exc))
        if "unknown command" in msg and "HELLO" in msg:
            raise ConnectionFailed(
                f"Redis at {where} is older than 6.0 (it does not know the HELLO command); "
                f"orion-track-redis needs {'.'.join(map(str, MIN_VERSION))} or newer. Upgrade "
                "the server."
            ) from None
        if "DB index is out of range" in msg:
            raise ConfigurationError(
                f"Redis at {where} has no such database ({msg}). Use a database number the "
                "server has (0 to its `databases` setting minus 1; 16 by default): /0 in the URI."
            ) from None
        if msg.startswith("NOAUTH"):
            raise ConnectionFailed(
                f"Redis at {where} requires a password. "
                "Put it in the URI: redis://:password@host:port or redis://user:password@host:port."
            ) from None
        if "can't run this command" in msg or "no permissions to access" in msg:
            # an ACL denial inside a Lua script: Redis names neither the command nor the key
            denied = name_denial or (lambda _: "a command or key")
            raise ConnectionFailed(
                f"Redis at {where} denied {denied(msg)} to this ACL user inside a "
                f"script ({redact(msg)}). Grant the user the commands and key pattern listed "
                "in docs/deployment.md (section 'Least privilege (ACL)')."
            ) from None
        if isinstance(exc, rex.OutOfMemoryError):
            # refused at the script's first write (Redis lets a script that wrote finish), so
            # the call changed nothing; redis-py does not retry it
            raise ConnectionFailed(
                f"Redis at {where} is full: it refused a write (used memory > maxmemory, "
                "policy noeviction); the call changed nothing. Raise maxmemory (CONFIG SET "
                "maxmemory) or free memory on the server, then run this worker again."
            ) from None
        if "WRONGTYPE" in msg:
            raise CorruptData(
                f"a key under this prefix on {where} holds a value of a foreign type ({msg}). "
                "Another program writes under the same prefix: give orion-track-redis its own "
                "`prefix` (or database) and remove the foreign keys."
            ) from None
        if msg != str(exc):
            raise type(exc)(msg) from None
    except rex.InvalidResponse as exc:
        raise ConnectionFailed(
            f"{where} does not speak the Redis protocol ({redact(exc)[:120]}). Check the host "
            "and port (is it another service?) and the scheme (rediss:// for TLS)."
        ) from None
    except rex.ConnectionError as exc:
        if "unknown command 'SENTINEL'" in str(exc):  # MasterNotFoundError from every sentinel
            raise ConfigurationError(
                f"{where} names a server that is not a Sentinel (it does not know the SENTINEL "
                "command): for a standalone server use redis://host:port/0; redis+sentinel:// "
                "takes the sentinels' addresses (port 26379 by default) and the service name."
            ) from None
        raise ConnectionFailed(
            f"Cannot reach Redis at {where}: {redact(_short(exc)).rstrip('.')}. Check that the "
            "server runs and the URI (host, port, TLS, timeouts) is right."
        ) from None
    except rex.TimeoutError as exc:
        raise ConnectionFailed(
            f"Cannot reach Redis at {where}: {redact(exc).rstrip('.')}. Check that the server "
            "runs and the URI (host, port, TLS, timeouts) is right."
        ) from None
