"""The servers of benchmarks/peers.py: a PostgreSQL cluster in a temporary directory (Debian's
binaries, run as ``postgres`` when this process is root), Optuna's gRPC storage proxy in a
process of its own, and the CPU seconds a server process (and its children) has used, from
/proc. The redis-server comes from ``orion_track_redis.testing.RedisServer``."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu(pid: int | None, *, children: bool = False) -> float:
    """utime + stime of ``pid`` in seconds (0 if gone); with ``children``, plus its reaped
    children's (cutime, cstime) and every live child's own utime..cstime (PostgreSQL: the
    postmaster forks a backend per connection and background workers)."""
    if not pid:
        return 0.0
    fields = _stat(pid)
    if fields is None:
        return 0.0
    ticks = sum(int(v) for v in fields[11 : 15 if children else 13])
    if children:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                f = _stat(int(entry))
                if f is not None and f[1] == str(pid):  # f[1]: ppid
                    ticks += sum(int(v) for v in f[11:15])
    return ticks / TICK


def _wait_port(port: int, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def postgres_bindir() -> str | None:
    """Debian's newest /usr/lib/postgresql/N/bin, else the directory of ``initdb`` on PATH."""
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0,
    )
    for d in reversed(dirs):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return d
    found = shutil.which("initdb")
    return os.path.dirname(found) if found else None


class PostgresServer:
    """A PostgreSQL cluster on a free loopback port, in a temporary directory of its own
    (owned by ``postgres`` when we are root: postgres refuses to run as root). Trust
    authentication on loopback only; every other setting is PostgreSQL's default (fsync and
    synchronous_commit on)."""

    def __init__(self, database: str = "optuna"):
        self.bindir = postgres_bindir()
        self.database = database
        self.port = free_port()
        self.dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.version: str | None = None

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if not runuser:
                raise RuntimeError("running as root and no runuser to start PostgreSQL as postgres")
            return [runuser, "-u", "postgres", "--", *cmd]
        return cmd

    def start(self, timeout: float = 60.0) -> PostgresServer:
        if not self.bindir:
            raise RuntimeError("no PostgreSQL binaries (initdb) found")
        self.dir = Path(tempfile.mkdtemp(prefix="peers-pg-"))
        if os.geteuid() == 0:
            import pwd

            owner = pwd.getpwnam("postgres")  # KeyError: no postgres user
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        data, sock = self.dir / "data", self.dir
        init = subprocess.run(
            self._as_owner(
                [
                    f"{self.bindir}/initdb",
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[-500:]}")
        self._log = open(self.dir / "postgres.log", "w")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self._as_owner(
                [
                    f"{self.bindir}/postgres",
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(sock),
                    "-c",
                    "listen_addresses=127.0.0.1",
                ]
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_port(self.port, self._proc, timeout, "postgres")
        pidfile = data / "postmaster.pid"
        deadline = time.monotonic() + 10
        while self.pid is None and time.monotonic() < deadline:
            try:
                self.pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.1)
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:  # listening is not accepting: wait for the end of recovery
            try:
                conn = psycopg2.connect(self.admin_dsn)
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            self.version = cur.fetchone()[0]
            cur.execute(f'CREATE DATABASE "{self.database}"')
        conn.close()
        return self

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the benchmark's database (psycopg2)."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{self.database}"

    def database_size(self) -> int:
        import psycopg2

        conn = psycopg2.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname={self.database}"
        )
        try:
            with conn.cursor() as cur:
                cur.execute("CHECKPOINT")
                cur.execute("SELECT pg_database_size(current_database())")
                return int(cur.fetchone()[0])
        finally:
            conn.close()

    def cpu(self) -> float:
        return process_cpu(self.pid, children=True)

    def stop(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGINT)  # fast shutdown
            except (ProcessLookupError, PermissionError):
                pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
            self._log.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class GrpcProxy:
    """``optuna.storages.run_grpc_proxy_server`` in a process of its own, in front of
    ``get_storage(url)`` (the cached RDB storage, as Optuna's docs ask)."""

    def __init__(self, url: str):
        self.url = url
        self.port = free_port()
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> GrpcProxy:
        script = Path(__file__).resolve().with_name("peers.py")
        self._proc = subprocess.Popen(
            [sys.executable, str(script), "_grpc_proxy", self.url, str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_port(self.port, self._proc, timeout, "the gRPC proxy")
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def cpu(self) -> float:
        return process_cpu(self.pid)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def grpc_proxy_main(url: str, port: int) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.get_storage(url)
    optuna.storages.run_grpc_proxy_server(storage, host="127.0.0.1", port=port)
    return 0
