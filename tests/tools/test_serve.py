"""`orion-redis serve`: the redis-server a Slurm job runs for users with no Redis admin.

Each test starts `orion-redis serve --bind 127.0.0.1` as its own process (loopback only) and
talks to it through the connection file, as a worker of the array does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import Exp, create_experiment, make_trial
from orion_track_redis import Redis
from orion_track_redis.errors import ConfigurationError
from orion_track_redis.server import serve

pytestmark = pytest.mark.slow


@pytest.fixture
def started():
    """Start serve processes; whatever a failed test leaves running is stopped."""
    procs = []

    def start(ddir, *extra):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orion_track_redis",
                "serve",
                "--dir",
                str(ddir),
                "--bind",
                "127.0.0.1",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_uri(proc, conn_file: Path, timeout=20.0) -> str:
    deadline = time.monotonic() + timeout
    while not conn_file.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"serve exited with {proc.returncode}: {out} {err}")
        assert time.monotonic() < deadline, "no connection file"
        time.sleep(0.05)
    return conn_file.read_text().strip()


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def stop(proc) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return out, err


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_serve_restart_keeps_password_and_data(tmp_path, started):
    ddir, conn_file = tmp_path / "redis", tmp_path / "redis" / "connection.uri"
    proc = started(ddir)
    uri = wait_uri(proc, conn_file)
    password = (ddir / "password").read_text().strip()
    assert uri.startswith("redis://127.0.0.1:") and f"password_file={ddir}/password" in uri
    assert password not in uri
    for name in ("password", "connection.uri", "redis.conf", "redis.log", "serve.lock"):
        assert mode(ddir / name) == 0o600, name

    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="served")
    trial = make_trial(exp_id)
    storage.register_trial(trial)
    assert storage.reserve_trial(Exp(exp_id)).id == trial.id

    [server_pid] = children(proc.pid)
    for pid in (proc.pid, server_pid):  # what `ps` shows
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    out, err = stop(proc)
    assert password not in out + err
    assert out.count("\n") == 1 and "connection file" in out and uri in out
    assert not Path(f"/proc/{server_pid}").exists() and not conn_file.exists()

    proc = started(ddir)  # the server job's restart: same dir, same password, same data
    uri = wait_uri(proc, conn_file)
    assert (ddir / "password").read_text().strip() == password
    [again] = Redis(uri=uri).fetch_trials(Exp(exp_id))
    assert again.id == trial.id and again.status == "reserved"

    second = started(ddir)  # a second serve on the same dir is refused
    out, err = second.communicate(timeout=20)
    assert second.returncode == 2 and "already runs on" in err and "another --dir" in err
    assert conn_file.read_text().strip() == uri  # and leaves the running one alone
    stop(proc)


def test_serve_tls(tmp_path, started):
    from orion_track_redis.server.binaries import find_redis_server
    from orion_track_redis.testing import tls_capable

    if not tls_capable(find_redis_server()):
        pytest.skip("the redis-server on PATH has no TLS")
    ddir = tmp_path / "redis"
    proc = started(ddir, "--tls")
    uri = wait_uri(proc, ddir / "connection.uri")
    assert uri.startswith("rediss://") and f"ssl_ca_certs={ddir}/tls/ca.crt" in uri
    assert mode(ddir / "tls" / "ca.key") == 0o600 and mode(ddir / "tls" / "server.key") == 0o600
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage)
    storage.register_trial(make_trial(exp_id))
    assert storage.reserve_trial(Exp(exp_id)) is not None
    stop(proc)


def run_cli(capsys, *argv) -> tuple[int, str]:
    from orion_track_redis.ops.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def test_serve_refuses_newer_data(tmp_path, capsys):
    (tmp_path / "redis-version").write_text("99.1.0\n")
    code, err = run_cli(capsys, "serve", "--dir", str(tmp_path), "--bind", "127.0.0.1")
    assert code == 2 and "written by redis-server 99.1.0" in err and "ORION_REDIS_SERVER_BIN" in err
    assert not (tmp_path / "password").exists()  # refused before anything was made


def test_serve_refuses_a_dir_it_cannot_write(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, err = run_cli(capsys, "serve", "--dir", str(tmp_path / "file" / "redis"))
    assert code == 2 and "cannot write in --dir" in err


def test_default_bind_refuses_loopback(monkeypatch):
    monkeypatch.setattr(serve.socket, "gethostname", lambda: "node1")
    monkeypatch.setattr(serve.socket, "gethostbyname_ex", lambda name: (name, [], ["127.0.1.1"]))
    with pytest.raises(ConfigurationError, match="--bind"):
        serve._bind_address(None)
    assert serve._bind_address("127.0.0.1") == "127.0.0.1"
    monkeypatch.setattr(
        serve.socket, "gethostbyname_ex", lambda name: (name, [], ["127.0.1.1", "10.1.2.3"])
    )
    assert serve._bind_address(None) == "10.1.2.3"
