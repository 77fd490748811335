"""``orion-redis serve``: a password-protected redis-server in the foreground, for users with no
Redis admin (one Slurm job runs it, the workers' array reads its connection file).

Its directory, on the filesystem the nodes share: ``password`` (made on first start, 0600,
reused after), ``redis.conf`` (0600, rewritten at each start: the password stays off every
command line), the AOF, ``redis.log``, ``redis-version`` (of the last server on this data),
``serve.lock``, ``tls/`` (--tls: a CA made once, a server certificate per start, as a restart
may land on another node) and ``connection.uri``: written once the server answers PING,
removed when it stops. That URI holds no secret (``redis://host:port/0?password_file=
DIR/password``): a worker on any node reads the password through the ``password_file`` option.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orion_track_redis.errors import ConfigurationError, EmbeddedServerError
from orion_track_redis.redaction import redact
from orion_track_redis.server.binaries import (
    LOG_NAME,
    STAMP_NAME,
    find_redis_server,
    log_tail,
    server_version,
)

PASSWORD_NAME = "password"
CONF_NAME = "redis.conf"
LOCK_NAME = "serve.lock"
CONNECTION_NAME = "connection.uri"
START_TIMEOUT = 60.0  # until the server listens; loading a large AOF may take longer: allowed
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# liveness probes: short timeouts, no retries; RESP2 answers on any server version
PROBE: dict[str, Any] = dict(
    socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0), protocol=2
)


def serve(
    directory: str | os.PathLike,
    bind: str | None = None,
    port: int = 0,
    tls: bool = False,
    connection_file: str | os.PathLike | None = None,
) -> int:
    """Run the server until it stops; 0 after a clean stop (a signal), 1 if it died."""
    ddir = _prepare_dir(directory)
    conn_file = Path(connection_file).absolute() if connection_file else ddir / CONNECTION_NAME
    with _exclusive(ddir):
        _refuse_if_serving(ddir, conn_file)
        conn_file.unlink(missing_ok=True)  # workers must not read a dead server's address
        binary = find_redis_server(ddir)  # the newest, never older than the data
        version = server_version(binary)
        host = _bind_address(bind)
        srv = _Server(binary, version, ddir, host, _uri_host(host), _password(ddir))
        if tls:
            srv.tls = _tls_files(ddir / "tls", srv.client_host)
        stopper = _Stopper()
        previous = {sig: signal.signal(sig, stopper) for sig in STOP_SIGNALS}
        try:
            return _run(srv, port or _free_port(host), conn_file, stopper)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@dataclasses.dataclass
class _Server:
    binary: str
    version: tuple[int, int, int]
    ddir: Path
    host: str  # the bound address
    client_host: str  # in URIs: bracketed if IPv6, this node's address for a wildcard bind
    password: str
    tls: dict[str, str] | None = None  # ca, cert, key paths
    log_offset: int = 0  # where this start's lines begin in redis.log


def _run(srv: _Server, port: int, conn_file: Path, stopper: _Stopper) -> int:
    """Start the server, publish its URI once it answers, wait until it stops."""
    proc = _start(srv, port, stopper)
    if proc is None:  # stopped while starting
        return 0
    try:
        _write_private(srv.ddir / STAMP_NAME, _dotted(srv.version) + "\n")
        uri = _connection_uri(srv, port)
        _write_private(conn_file, uri + "\n")
        where = f"redis-server {_dotted(srv.version)}, data {srv.ddir}"
        print(f"orion-redis serve: {redact(uri)} ({where}); connection file {conn_file}")
        sys.stdout.flush()  # a Slurm output file is block-buffered
        return _wait(proc, srv)
    finally:
        conn_file.unlink(missing_ok=True)
        _stop(proc)


def _prepare_dir(directory: str | os.PathLike) -> Path:
    """The absolute data dir, created 0700 if needed; refused unless we can write in it."""
    ddir = Path(os.path.expanduser(directory)).absolute()
    probe = ddir / f".write-test-{os.getpid()}"
    try:
        ddir.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe.write_bytes(b"")  # os.access lies for root and on some network filesystems
        probe.unlink()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write in --dir {ddir} ({exc.strerror}): give a directory you can write, "
            "on the filesystem that the workers' nodes share (e.g. $SCRATCH/orion-redis)."
        ) from None
    return ddir


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` with mode 0600, atomically: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@contextlib.contextmanager
def _exclusive(ddir: Path):
    """Hold ``serve.lock`` for the whole run: a second serve on the same dir is refused."""
    path = ddir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _already_serving(ddir, path.read_text(errors="replace").strip()) from None
        except OSError as exc:  # no flock on this filesystem: _refuse_if_serving still probes
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _already_serving(ddir: Path, who: str) -> ConfigurationError:
    return ConfigurationError(
        f"another `orion-redis serve` already runs on {ddir} ({who or 'see its serve.lock'}): "
        "stop it first (scancel its job), or give another --dir."
    )


def _refuse_if_serving(ddir: Path, conn_file: Path) -> None:
    """The lock may be node-local (some Lustre mounts): a server that still answers at the
    address of the last connection file is a serve running on another node."""
    try:
        parts = urlsplit(conn_file.read_text().strip())
        host, port, password = parts.hostname, parts.port, _read_password(ddir / PASSWORD_NAME)
    except (OSError, ValueError, ConfigurationError):
        return
    ca = parse_qs(parts.query).get("ssl_ca_certs", [None])[0]
    if host and port and _answers(host, port, password, ca) is not None:
        raise _already_serving(ddir, f"answering at {parts.hostname}:{parts.port}")


def _password(ddir: Path) -> str:
    """Made on first start, the same after every restart: the workers' URI stays valid."""
    path = ddir / PASSWORD_NAME
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(32) + "\n")
    return _read_password(path)


def _read_password(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigurationError(
            f"{path} is readable by others (mode {mode:o}): `chmod 600 {path}`, or delete it to "
            "get a new password (then restart the workers)."
        )
    password = path.read_text(encoding="utf-8").rstrip("\r\n")
    if not password:
        raise ConfigurationError(f"{path} is empty: delete it, serve makes a new password.")
    return password


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _bind_address(bind: str | None) -> str:
    """The address to listen on: ``--bind`` (an address or a name), else this node's first
    non-loopback address; a loopback default is refused: the workers' nodes could not connect."""
    name = bind or socket.gethostname()
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(name))
    try:
        found = socket.gethostbyname_ex(name)[2]
    except OSError as exc:
        raise ConfigurationError(f"cannot resolve {name!r} ({exc}): give --bind ADDR.") from None
    address = next((a for a in found if not ipaddress.ip_address(a).is_loopback), found[0])
    if bind is None and ipaddress.ip_address(address).is_loopback:
        raise ConfigurationError(
            f"this node's name {name!r} resolves to {address}, which other nodes cannot reach: "
            "give --bind with the node's address on the cluster network (`hostname -I` lists "
            "them), or --bind 127.0.0.1 to serve this node only."
        )
    return address


def _uri_host(address: str) -> str:
    """Where clients connect: the bound address (IPv6 in brackets), this node's if wildcard."""
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:
        ip = ipaddress.ip_address(_bind_address(None))
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _connection_uri(srv: _Server, port: int) -> str:
    """The workers' URI: no password in it, only the file that holds it."""
    query = f"password_file={quote(str(srv.ddir / PASSWORD_NAME))}"
    if srv.tls:
        query += f"&ssl_ca_certs={quote(srv.tls['ca'])}"
    return f"{'rediss' if srv.tls else 'redis'}://{srv.client_host}:{port}/0?{query}"


def _openssl(tls_dir: Path, command: str) -> None:
    """Run ``openssl`` with ``command``'s words (no argument here holds a space)."""
    try:
        proc = subprocess.run(
            ["openssl", *command.split()], cwd=tls_dir, capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise ConfigurationError(
            "--tls needs the openssl command to make certificates: install it, or drop --tls."
        ) from None
    if proc.returncode:
        raise EmbeddedServerError(f"openssl {command} failed: {proc.stderr.strip()}")


EC_KEY = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
MAKE_CA = (
    f"req -x509 {EC_KEY} -keyout ca.key -out ca.crt -days 3650 -subj /CN=orion-redis-serve-CA "
    "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
)
SIGN_SERVER = (
    "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt "
    "-days 365 -extfile server.ext"
)


def _tls_files(tls_dir: Path, client_host: str) -> dict[str, str]:
    """The CA (made once: the workers' URI names it) and a certificate for this node (made at
    each start: a restarted job may land on another node)."""
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    if not (tls_dir / "ca.crt").exists() or not (tls_dir / "ca.key").exists():
        _openssl(tls_dir, MAKE_CA)
    node = socket.gethostname()
    names = sorted({node, socket.getfqdn(), "localhost"})
    ips = sorted({client_host.strip("[]"), "127.0.0.1"})
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{ip}" for ip in ips])
    (tls_dir / "server.ext").write_text(
        f"subjectAltName={san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(tls_dir, f"req {EC_KEY} -keyout server.key -out server.csr -subj /CN={node}")
    _openssl(tls_dir, SIGN_SERVER)
    for key in ("ca.key", "server.key"):
        os.chmod(tls_dir / key, 0o600)
    return {name: str(tls_dir / file) for name, file in TLS_FILES.items()}


TLS_FILES = {"ca": "ca.crt", "cert": "server.crt", "key": "server.key"}


def _quote(value: str) -> str:
    """A redis.conf string argument (sdssplitargs' double-quoted form)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _config(srv: _Server, port: int) -> str:
    lines = [
        "# written by `orion-redis serve` at each start; it holds the password: keep it 0600",
        f"bind {srv.host}",
        "protected-mode yes",
        f"dir {_quote(str(srv.ddir))}",
        f"logfile {_quote(str(srv.ddir / LOG_NAME))}",
        "daemonize no",
        'save ""',
        "appendonly yes",
        "appendfsync everysec",
        f"requirepass {_quote(srv.password)}",
    ]
    if srv.tls:  # TLS only, the plain port off; clients prove themselves with the password
        lines += ["port 0", f"tls-port {port}", "tls-auth-clients no"]
        lines += [f"tls-{k}-file {_quote(srv.tls[k])}" for k in ("cert", "key")]
        lines += [f"tls-ca-cert-file {_quote(srv.tls['ca'])}"]
    else:
        lines.append(f"port {port}")
    return "\n".join(lines) + "\n"


class _Stopper:
    """Our stop signals (scancel's SIGTERM, Ctrl-C, ``--signal=B:USR1``) become a SIGTERM to
    the server, which then fsyncs its AOF and exits."""

    proc: subprocess.Popen | None = None
    requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


def _child_setup():
    """Before exec: the server's files (AOF, log) private, and (Linux) a SIGTERM from the kernel
    when serve dies, even by SIGKILL, so the server never outlives the job step's process."""
    if not sys.platform.startswith("linux"):
        return lambda: os.umask(0o077)
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    return lambda: (os.umask(0o077), prctl(1, signal.SIGTERM))  # 1: PR_SET_PDEATHSIG


def _start(srv: _Server, port: int, stopper: _Stopper) -> subprocess.Popen | None:
    """Start the server and wait until it answers (None: a stop signal came first)."""
    log = srv.ddir / LOG_NAME
    srv.log_offset = log.stat().st_size if log.exists() else 0
    _write_private(srv.ddir / CONF_NAME, _config(srv, port))
    # errors before redis opens its log go to stderr: into the log too
    with open(log, "ab", opener=lambda path, flags: os.open(path, flags, 0o600)) as out:
        stopper.proc = subprocess.Popen(
            [srv.binary, str(srv.ddir / CONF_NAME)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches serve only, which stops the server once
            preexec_fn=_child_setup(),
        )
    if stopper.requested:  # a signal came before stopper.proc was set
        stopper(signal.SIGTERM, None)
    if _wait_up(stopper.proc, srv, port):
        return stopper.proc
    if stopper.requested:
        return None
    tail = log_tail(log, srv.log_offset).replace(srv.password, "***")
    raise EmbeddedServerError(
        f"redis-server ({srv.binary}) did not start on {srv.host}:{port}; {log}:\n{tail}"
    )


def _answers(host: str, port: int, password: str, ca: str | None) -> bool | None:
    """True: our server answers PING; False: it is loading its AOF; None: nothing of ours."""
    tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": ca} if ca else {}
    client = redis.Redis(host=host.strip("[]"), port=port, password=password, **PROBE, **tls)
    try:
        return bool(client.ping())
    except redis.BusyLoadingError:
        return False
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return None  # not listening, or someone else's server
    finally:
        client.close()


def _wait_up(proc: subprocess.Popen, srv: _Server, port: int) -> bool:
    """Wait for PING; a server loading a large AOF is waited for as long as it loads."""
    ca = srv.tls["ca"] if srv.tls else None
    deadline = time.monotonic() + START_TIMEOUT
    while proc.poll() is None:
        state = _answers(srv.client_host, port, srv.password, ca)
        if state:
            return True
        if state is None and time.monotonic() > deadline:
            _stop(proc)
            return False
        time.sleep(0.05)
    return False


def _wait(proc: subprocess.Popen, srv: _Server) -> int:
    """Until the server exits: 0 after a clean shutdown (a stop signal to serve or to the
    server itself, as scancel sends to every process of the job), 1 otherwise."""
    code, log = proc.wait(), srv.ddir / LOG_NAME
    tail = log_tail(log, srv.log_offset).replace(srv.password, "***")
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    what = f"{how}; {log}:\n{tail}" if code else "stopped (AOF written)"
    print(f"orion-redis serve: redis-server {what}", file=sys.stderr)
    return 1 if code else 0


def _stop(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM (the AOF is flushed), then SIGKILL if the server hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
