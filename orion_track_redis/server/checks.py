"""Checks of the Redis server a storage connects to, run once per storage set-up.

Too old a server is refused (we need ZMSCORE and fractional BLPOP timeouts: Redis >= 6.2). An
eviction policy other than ``noeviction`` and disabled persistence do not stop a hunt but lose
trials and locks silently, so they are logged as loud warnings.
"""

from __future__ import annotations

import logging

from orion_track_redis.errors import MIN_VERSION, RedisStorageError

log = logging.getLogger(__name__)
_logged: set[str] = set()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(text).split(".")[:2] if part.isdigit())


def check_server(info: dict, where: str, log_warnings: bool = True) -> list[str]:
    """Raise for an unusable server; return (and log) warnings for risky settings."""
    version = _version(info.get("redis_version", "0.0"))
    if version < MIN_VERSION:
        raise RedisStorageError(
            f"Redis at {where} is version {info.get('redis_version')}; orion-track-redis needs "
            f"{'.'.join(map(str, MIN_VERSION))} or newer. Upgrade the server."
        )
    warnings = []
    policy = info.get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        warnings.append(
            f"Redis at {where} has maxmemory-policy {policy}: when memory runs out it will "
            "silently delete trials and algorithm locks. Set `maxmemory-policy noeviction`."
        )
    if not info.get("aof_enabled") and info.get("rdb_saves_configured") is False:
        warnings.append(
            f"Redis at {where} has persistence disabled (no AOF, no RDB): a restart loses every "
            "trial. Set `appendonly yes` (recommended with appendfsync everysec or always)."
        )
    for message in warnings if log_warnings else ():
        if message not in _logged:  # once per process: `orion status` sets up 3 storages
            _logged.add(message)
            log.warning(message)
    return warnings


def server_info(client) -> dict | None:
    """INFO plus whether RDB save points exist; None when INFO/CONFIG are not allowed."""
    import redis

    try:
        info = dict(client.info())
    except redis.ResponseError as exc:
        if "HELLO" in str(exc):  # Redis < 6: the connection itself failed (errors.py says so)
            raise
        return None  # INFO denied by ACL or not implemented: nothing to check
    try:
        info["rdb_saves_configured"] = bool(client.config_get("save").get("save"))
    except redis.ResponseError:  # CONFIG is often denied on managed Redis: unknown
        info["rdb_saves_configured"] = None
    return info
