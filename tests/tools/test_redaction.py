"""No password or secret in any log line, at any verbosity, Oríon's own loggers included
(redaction.py and the start-up hook: orion_track_redis_redact.pth runs startup.py)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from orion_track_redis.redaction import redact
from orion_track_redis.testing import RedisServer

PASSWORD = "s3cr3t-Pw"
SECRET = "st4te-s3cret"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "text",
    [
        f"redis://:{PASSWORD}@h:1/0",
        f"redis+sentinel://user:{PASSWORD}@h1:1,h2:2/svc",
        f"{{'host': 'redis://u:{PASSWORD}@h:6379/0?prefix=a'}}",
        f"sentinel_password={PASSWORD}&x=1",
        f"{{'state_secret': '{SECRET}', 'password': '{PASSWORD}'}}",
        f'{{"state_secret": "{SECRET}"}}',
        f"Redis(state_secret=b'{SECRET}')",
    ],
)
def test_redact_hides_every_form(text):
    clean = redact(text)
    assert PASSWORD not in clean and SECRET not in clean and "***" in clean


def test_every_logger_is_redacted_in_process():
    """Any logger, any arguments: what a handler writes has no password (the hook is in the
    record factory, so it also covers loggers created before this package was imported)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("orion.core.io.experiment_builder")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug(
            "Using for storage %s",
            {
                "type": "redis",
                "database": {"host": f"redis://:{PASSWORD}@127.0.0.1:6379/0"},
                "state_secret": SECRET,
            },
        )
        try:
            raise RuntimeError(f"cannot reach redis://:{PASSWORD}@h:1")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    text = stream.getvalue()
    assert "Using for storage" in text and "RuntimeError" in text
    assert PASSWORD not in text and SECRET not in text


def test_startup_hook_is_active_in_a_fresh_interpreter():
    """The .pth runs at start-up: a process that never imports the package is redacted too,
    and the hook does not import Oríon or redis-py (it runs in every Python of the venv; Oríon's
    own namespace .pth creates the bare 'orion' module, not ours)."""
    code = (
        "import logging, sys; logging.basicConfig(level=logging.DEBUG); "
        f"logging.getLogger('any').info('uri redis://:{PASSWORD}@h:1'); "
        "print(sorted(m for m in ('orion.core', 'redis', 'orion_track_redis.storage') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "redis://:***@h:1" in proc.stderr and PASSWORD not in proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_startup_hook_can_be_turned_off():
    """ORION_REDIS_STARTUP=0: nothing of ours runs at interpreter start (no redaction, no
    module of the package imported beyond the hook's own check)."""
    code = (
        "import logging, sys; logging.basicConfig(level=logging.DEBUG); "
        f"logging.getLogger('any').info('uri redis://:{PASSWORD}@h:1'); "
        "print(sorted(m for m in ('orion_track_redis.redaction', 'orion_track_redis.quiet') "
        "if m in sys.modules and getattr(logging.getLogRecordFactory(), 'orion_track_redis', 0)))"
    )
    env = dict(os.environ, ORION_REDIS_STARTUP="0")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert f"redis://:{PASSWORD}@h:1" in proc.stderr  # not redacted: the hook did not run
    assert proc.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def secret_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redact"), password=PASSWORD) as server:
        yield server.start()


def test_orion_commands_at_full_verbosity_show_no_secret(secret_server, tmp_path):
    """`orion -vv` hunt, status, info and list, with the password in the URI and the state
    secret in the environment: every line they print is free of both."""
    uri = (
        secret_server.url.replace("redis://", f"redis://:{PASSWORD}@")
        + f"/0?prefix=redact-{uuid.uuid4().hex[:6]}"
    )
    config = tmp_path / "orion_config.yaml"
    config.write_text(f'storage:\n  type: redis\n  database:\n    host: "{uri}"\n')
    env = dict(
        os.environ,
        ORION_REDIS_STATE_SECRET=SECRET,
        ORION_STORAGE_TYPE="redis",
        ORION_DB_ADDRESS=uri,
        ORION_REDIS_URI="",
    )
    orion = str(Path(sys.executable).with_name("orion"))
    commands = [
        [
            "-vv",
            "hunt",
            "--config",
            str(config),
            "-n",
            "redact",
            "--max-trials",
            "2",
            sys.executable,
            str(ROOT / "examples" / "objective.py"),
            "-x~uniform(-5, 5)",
            "-y~uniform(-5, 5)",
        ],
        ["-vv", "status", "--config", str(config)],
        ["-vv", "info", "--config", str(config), "-n", "redact"],
        ["-vv", "list", "--config", str(config)],
    ]
    for command in commands:
        proc = subprocess.run(
            [orion, *command], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-3000:]
        assert "DEBUG" in output or "INFO" in output, output[-2000:]  # really verbose
        leaks = [line for line in output.splitlines() if PASSWORD in line or SECRET in line]
        assert not leaks, f"orion {command[1]}: {leaks[:5]}"
    assert "redact" in output


def test_orion_logs_the_password_before_it_imports_this_backend(secret_server, tmp_path):
    """Why the start-up hook (startup.py) exists: without it, `orion -vv` prints the storage
    configuration with the password before the first line of ours (logged when Oríon has
    imported this backend and builds its storage), so nothing imported later could redact it.
    The same command with the hook shows no password (the test above)."""
    uri = secret_server.url.replace("redis://", f"redis://:{PASSWORD}@") + "/0?prefix=why"
    config = tmp_path / "orion_config.yaml"
    config.write_text(f'storage:\n  type: redis\n  database:\n    host: "{uri}"\n')
    env = dict(os.environ, ORION_REDIS_STARTUP="0", ORION_REDIS_URI="")
    orion = str(Path(sys.executable).with_name("orion"))
    proc = subprocess.run(
        [orion, "-vv", "list", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, lines[-30:]
    leak = next(i for i, line in enumerate(lines) if PASSWORD in line)
    ours = next(i for i, line in enumerate(lines) if "orion-track-redis: using" in line)
    assert leak < ours, (lines[leak], lines[ours])
