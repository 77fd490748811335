"""A worker told to stop (SIGTERM, Slurm's --signal USR1) stops cleanly
(orion_patches/shutdown.py): its
objective is stopped, its trial released as interrupted, and it exits at once. Differential:
the same signal to unmodified Oríon (ORION_REDIS_TRAP_SIGNALS=0) leaves the objective running
and the worker waiting for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import Exp, hunt_config
from orion_track_redis import Redis
from orion_track_redis.orion_patches.shutdown import descendants

pytestmark = pytest.mark.slow
ORION = str(Path(sys.executable).with_name("orion"))

# The objective: records its pid, then works for a long time; a run that ends writes a marker.
OBJECTIVE = """
import json, os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
(out / f"started-{os.getpid()}").write_text(str(os.getpid()))
time.sleep(float(sys.argv[2]))
(out / f"finished-{os.getpid()}").write_text("done")
json.dump([{"name": "y", "type": "objective", "value": 1.0}],
          open(os.environ["ORION_RESULTS_PATH"], "w"))
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(predicate, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _start_hunt(redis_server, tmp_path, trap: bool, sleep_s: float = 120):
    uri = f"{redis_server.url}/0?prefix=sd-{uuid.uuid4().hex[:8]}&stop_grace=3"
    config = hunt_config(tmp_path / "orion.yaml", uri, tmp_path / "trials")
    (tmp_path / "objective.py").write_text(OBJECTIVE)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, ORION_REDIS_URI="", ORION_REDIS_TRAP_SIGNALS="1" if trap else "0")
    cmd = [
        ORION,
        "hunt",
        "--config",
        str(config),
        "-n",
        "sd",
        "--max-trials",
        "1",
        sys.executable,
        str(tmp_path / "objective.py"),
        str(out),
        str(sleep_s),
        "-x~uniform(0, 1)",
    ]
    log = open(tmp_path / "hunt.log", "w")  # noqa: SIM115 - closed by the caller's finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    assert _wait(lambda: list(out.glob("started-*")), 120), (tmp_path / "hunt.log").read_text()
    (marker,) = out.glob("started-*")
    return proc, int(marker.read_text()), Redis(uri=uri), out


def _left_behind(tmp_path) -> list[int]:
    """Processes still running with this test's hunt config on their command line: a worker,
    or a pool process it forked, that outlived the stop."""
    needle = str(tmp_path / "orion.yaml").encode()
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read() and _alive(int(entry)):
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def _trials(storage):
    (doc,) = storage.fetch_experiments({"name": "sd"})
    return storage.fetch_trials(uid=doc["_id"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["TERM", "USR1"])
def test_a_signalled_worker_stops_its_objective_releases_and_exits(redis_server, tmp_path, sig):
    """The signal reaches the worker only (Slurm's exec form under proctrack/cgroup): the
    objective, its grandchild, must still stop, and the trial must come back interrupted."""
    proc, objective, storage, out = _start_hunt(redis_server, tmp_path, trap=True)
    try:
        start = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        took = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    log = (tmp_path / "hunt.log").read_text()
    assert code == 128 + sig, log
    assert took < 3 + 5, f"exit took {took:.1f} s (stop_grace=3)"
    assert not _alive(objective), "the objective must not outlive its released trial"
    assert _left_behind(tmp_path) == [], "a process of the stopped worker outlived it"
    assert not list(out.glob("finished-*"))
    (trial,) = _trials(storage)
    assert trial.status == "interrupted", log
    assert "1 trial(s) released" in log


def test_unmodified_orion_leaves_the_objective_running(redis_server, tmp_path):
    """The oracle: without our trap, the same SIGTERM leaves the objective running and the
    worker waiting in Pool.join for it (what the test above guards against)."""
    proc, objective, storage, _ = _start_hunt(redis_server, tmp_path, trap=False)
    try:
        proc.send_signal(signal.SIGTERM)
        time.sleep(8)
        assert proc.poll() is None, "Oríon's worker waits for its pool (its Pool.join)"
        assert _alive(objective), "Oríon does not stop the objective"
    finally:
        for pid in (*descendants(proc.pid), proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_stop_descendants_terms_then_kills_the_whole_tree():
    """A child that ignores SIGTERM and its grandchild: both gone after the grace. Run from a
    process of its own (from pytest's, it would stop the session's redis-server too)."""
    script = (
        "import os, signal, subprocess, sys, time\n"
        "from orion_track_redis.orion_patches.shutdown import descendants, stop_descendants\n"
        "child = ('import signal, subprocess, sys, time\\n'\n"
        "         'signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n'\n"
        '         \'subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])\\n\'\n'
        "         'time.sleep(600)\\n')\n"
        "subprocess.Popen([sys.executable, '-c', child])\n"
        "while len(descendants(os.getpid())) < 2: time.sleep(0.05)\n"
        "time.sleep(0.5)  # the child ignores SIGTERM by now\n"
        "tree = sorted(descendants(os.getpid()))\n"
        "start = time.monotonic()\n"
        "count = stop_descendants(1.0)\n"
        "print(count, round(time.monotonic() - start, 2), *tree)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    count, took, tree = int(out[0]), float(out[1]), [int(pid) for pid in out[2:]]
    assert count == len(tree) == 2
    assert 1.0 <= took < 10, "SIGTERM first, SIGKILL only after the grace"
    assert not any(_alive(pid) for pid in tree)


def test_trial_released_as_interrupted_is_taken_by_the_next_worker(redis_server, tmp_path):
    """After the stop, the trial is pending again: another worker reserves it at once."""
    proc, _, storage, _ = _start_hunt(redis_server, tmp_path, trap=True)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    (doc,) = storage.fetch_experiments({"name": "sd"})
    again = storage.reserve_trial(Exp(doc["_id"]))
    assert again is not None and again.status == "reserved"
