"""The storage's default when no Redis URI is given: one daemonized redis-server per data dir.

The server persists its AOF under Oríon's user data directory (``<user_data_dir>/redis``,
or ``$ORION_REDIS_EMBEDDED_DIR``), listens on a unix socket only (``--port 0``: nothing on the
network) and is shared by every process of the host: the first user starts it, daemonized, so it
outlives that process; later users reuse it. Starting is serialised with ``flock`` on
``redis.lock`` in the data dir, so concurrent first uses start exactly one server.

AF_UNIX paths are limited to ~104 bytes. When ``<data_dir>/redis.sock`` is longer than that, the
socket lives in ``/tmp/orion-redis-<uid>-<hash of data dir>/redis.sock`` (mode 700) instead; every
process derives the same path from the data dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import redis

from orion_track_redis.errors import EmbeddedServerError
from orion_track_redis.server.binaries import (
    ENV_BIN,
    LOG_NAME,
    SOCKET_NAME,
    UNIX_PATH_MAX,
    find_redis_server,
    log_tail,
    ping_client,
    server_version,
    stamp_version,
)

logger = logging.getLogger(__name__)

ENV_DIR = "ORION_REDIS_EMBEDDED_DIR"
PID_NAME = "redis.pid"
LOCK_NAME = "redis.lock"
START_TIMEOUT = 30.0
LOCK_TIMEOUT = 60.0  # > START_TIMEOUT: waiters must outlast one slow start


def data_dir_path(data_dir: str | os.PathLike | None = None) -> Path:
    """Absolute data dir: ``data_dir``, else ``$ORION_REDIS_EMBEDDED_DIR``, else Oríon's."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_DIR) or None
    if data_dir is None:
        import orion.core  # heavy: only when the default is really needed

        data_dir = os.path.join(orion.core.DIRS.user_data_dir, "redis")
    # realpath: every process must derive the same socket path (and hash) from it.
    return Path(os.path.realpath(os.path.expanduser(data_dir)))


def socket_path(data_dir: Path) -> Path:
    """Where the server of ``data_dir`` listens (see the module docstring for long paths)."""
    natural = data_dir / SOCKET_NAME
    if len(os.fsencode(natural)) < UNIX_PATH_MAX:
        return natural
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    short = Path("/tmp") / f"orion-redis-{os.getuid()}-{digest}"
    _ensure_private_dir(short)
    return short / SOCKET_NAME


def _ensure_private_dir(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    # /tmp is shared: refuse a dir someone else planted to catch our socket.
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise EmbeddedServerError(
            f"{path} (socket dir of the embedded redis-server) must be a directory owned by you "
            "with mode 700. Remove it, or set ORION_REDIS_EMBEDDED_DIR to a shorter path."
        )


def _probe(sock: Path) -> str:
    """``"up"`` (a server answers), ``"busy"`` (accepts but stays silent) or ``"down"``."""
    if not sock.exists():
        return "down"
    client = ping_client(unix_path=str(sock), timeout=2.0)
    try:
        client.ping()
        return "up"
    except (redis.BusyLoadingError, redis.AuthenticationError, redis.ResponseError):
        return "up"  # loading the AOF, or protected by a password: a server is there all the same
    except redis.TimeoutError:
        return "busy"
    except redis.ConnectionError:
        return "down"
    finally:
        client.close()


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_redis_process(pid: int) -> bool:
    """True if ``pid`` runs a redis-server of ours (not a reused pid, not an unreaped zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: the pid was reused
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True  # no procfs (macOS): kill(0) is all we can check
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        comm = (proc / "comm").read_text().strip()  # executable name: cmdline may mention anything
    except (OSError, IndexError):
        return False
    # Daemons are reparented to pid 1, which in containers may never reap them: zombies are dead.
    return state not in ("Z", "X") and comm in _server_names()


def _server_names() -> set[str]:
    names = {"redis-server", "valkey-server"}
    configured = os.environ.get(ENV_BIN)
    if configured:
        names.add(os.path.basename(configured))
    return {name[:15] for name in names}  # the kernel truncates comm to 15 bytes


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_redis_process(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@contextlib.contextmanager
def _locked(data_dir: Path, timeout: float = LOCK_TIMEOUT):
    """Exclusive ``flock`` on ``data_dir/redis.lock``, shared with every process of the host."""
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"Timed out after {timeout:.0f}s waiting for {data_dir / LOCK_NAME}: "
                        "another process is starting or stopping the embedded redis-server."
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


def is_running(data_dir: str | os.PathLike | None = None) -> bool:
    """Whether the embedded server of ``data_dir`` answers (starts nothing, creates nothing)."""
    return _probe(socket_path(data_dir_path(data_dir))) == "up"


def embedded_uri(data_dir: str | os.PathLike | None = None) -> str:
    """``unix:///.../redis.sock`` of the shared embedded server of ``data_dir``, started if
    needed."""
    ddir = data_dir_path(data_dir)
    ddir.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = socket_path(ddir)
    if _probe(sock) != "up":  # fast path takes no lock
        with _locked(ddir):
            _ensure_running(ddir, sock)
    return f"unix://{sock}"


def _ensure_running(ddir: Path, sock: Path) -> None:
    """Under the lock: reuse a live server, clear what a dead one left behind, or start one."""
    state = _probe(sock)  # re-check: another process may have started it while we waited
    if state == "up":
        return
    pidfile = ddir / PID_NAME
    pid = _read_pid(pidfile)
    if pid is not None and _is_redis_process(pid):
        if state == "busy":
            if _wait_up(sock, START_TIMEOUT):
                return
            raise EmbeddedServerError(
                f"The embedded redis-server (pid {pid}, {ddir}) accepts connections on {sock} but "
                f"does not answer. Stop it (`kill {pid}`) and retry; see {ddir / LOG_NAME}."
            )
        # Alive but unreachable (socket deleted, e.g. by a /tmp cleaner): nobody can use it, and a
        # second server must not write the same AOF. SIGTERM flushes the AOF before exiting.
        logger.warning("Stopping unreachable embedded redis-server pid %d (%s)", pid, ddir)
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 10.0):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)
    # Left by a server that died without cleaning up (kill -9, reboot): remove, start fresh.
    for stale in (sock, pidfile):
        stale.unlink(missing_ok=True)
    _start_daemon(ddir, sock)


def _wait_up(sock: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _probe(sock) == "up":
            return True
        time.sleep(0.05)
    return False


def _start_daemon(ddir: Path, sock: Path) -> None:
    binary = find_redis_server(ddir)  # the newest, never older than the data
    found = server_version(binary)
    version = ".".join(map(str, found))
    log, pidfile = ddir / LOG_NAME, ddir / PID_NAME
    # WARNING: which server runs must show at Oríon's default verbosity (once per start)
    logger.warning(
        "orion-track-redis: starting the embedded redis-server %s (v%s): data in %s, socket %s, "
        "log %s",
        binary,
        version,
        ddir,
        sock,
        log,
    )
    args = [
        binary,
        "--port",
        "0",  # unix socket only: nothing listens on the network
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(ddir),
        "--logfile",
        str(log),
        "--pidfile",
        str(pidfile),
        "--daemonize",
        "yes",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
    ]
    offset = log.stat().st_size if log.exists() else 0

    def fail(what: str) -> EmbeddedServerError:
        return EmbeddedServerError(
            f"The embedded redis-server ({binary}) for {ddir} {what}. "
            f"Log tail ({log}):\n{log_tail(log, offset)}"
        )

    # Argument errors are printed before daemonizing, to stderr: keep them in the log.
    # start_new_session: the daemon must not receive our terminal's Ctrl-C.
    with open(log, "ab") as out:
        try:
            rc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                timeout=START_TIMEOUT,
            ).returncode
        except subprocess.TimeoutExpired:
            raise fail("did not daemonize") from None
    if rc != 0:
        raise fail(f"exited with code {rc}")
    stamp_version(ddir, found)  # a later start never picks an older server for this data
    deadline = time.monotonic() + START_TIMEOUT
    while _probe(sock) != "up":
        pid = _read_pid(pidfile)
        if pid is not None and not _is_redis_process(pid):
            raise fail(f"(pid {pid}) died while starting")
        if time.monotonic() > deadline:
            raise fail(f"did not answer on {sock} within {START_TIMEOUT:.0f}s")
        time.sleep(0.02)


def stop_embedded(data_dir: str | os.PathLike | None = None, timeout: float = 10.0) -> bool:
    """SHUTDOWN the embedded server of ``data_dir`` (AOF flushed). False if none was running."""
    ddir = data_dir_path(data_dir)
    if not ddir.is_dir():
        return False
    sock = socket_path(ddir)
    with _locked(ddir):
        if _probe(sock) != "up":
            return False
        pid = _read_pid(ddir / PID_NAME)
        client = ping_client(unix_path=str(sock), timeout=timeout)
        try:
            client.shutdown(nosave=True)  # save is off anyway; AOF is flushed regardless
        except redis.RedisError as exc:
            raise EmbeddedServerError(
                f"SHUTDOWN of the embedded redis-server at {sock} failed: {exc}"
            ) from None
        finally:
            client.close()
        # Hold the lock until it is gone, so a concurrent embedded_uri() cannot see a half-dead one.
        if pid is not None and not _wait_gone(pid, timeout):
            logger.warning(
                "Embedded redis-server pid %d still running %.0fs after SHUTDOWN", pid, timeout
            )
        return True
