"""Crash tests with assertions on the data: workers killed with SIGKILL mid-hunt."""

from __future__ import annotations

import datetime
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import hunt_config
from orion_track_redis import Redis

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ORION = str(Path(sys.executable).with_name("orion"))


def _config(tmp_path, uri, heartbeat) -> Path:
    return hunt_config(
        tmp_path / "orion_config.yaml",
        uri,
        tmp_path / "trials",
        worker={"heartbeat": heartbeat, "idle_timeout": 120},
    )


class _Exp:
    def __init__(self, exp_id):
        self.id = self._id = exp_id


# Reports through $ORION_RESULTS_PATH without importing Oríon: importing orion.client costs
# ~4 s of CPU, and 8 of them on 2 cores outlast the 15 s lost-trial threshold of these tests.
OBJECTIVE = """\
import json, os, random, sys, time
args = dict(zip(sys.argv[1::2], map(float, sys.argv[2::2])))
time.sleep(random.uniform(0.5, 1.5))  # pretend to train
# a test may slow every later trial down ("pace", next to this script: seconds more): the fleet
# then outlasts lost-trial detection however fast this machine runs the trials, while each
# trial stays far below the 15 s after which a live one would be declared lost (Oríon 0.2.7's
# pacemaker beats only every 60 s)
pace = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pace")
if os.path.exists(pace):
    time.sleep(float(open(pace).read()))
with open(os.environ["ORION_RESULTS_PATH"], "w") as fh:
    json.dump([{"name": "objective", "type": "objective",
                "value": (args["-x"] - 2) ** 2 + (args["-y"] + 1) ** 2}], fh)
"""


def _hunt(config, name, max_trials, tmp_path, heartbeat=3):
    objective = tmp_path / "objective.py"
    if not objective.exists():
        objective.write_text(OBJECTIVE)
    # --heartbeat: the hunt's own setting (Oríon 0.2.7's pacemaker beats every 60 s anyway);
    # ORION_HEARTBEAT: fetch_lost_trials reads the *global* worker.heartbeat
    cmd = [
        ORION,
        "hunt",
        "--config",
        str(config),
        "-n",
        name,
        "--max-trials",
        str(max_trials),
        "--heartbeat",
        str(heartbeat),
        sys.executable,
        str(objective),
        "-x~uniform(-5, 5)",
        "-y~uniform(-5, 5)",
    ]
    env = dict(os.environ, ORION_REDIS_URI="", ORION_HEARTBEAT=str(heartbeat))
    # the worker writes through its own copy of the descriptor: ours closes at once
    with open(tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log", "w") as log:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True
        )


def test_killed_workers_trials_come_back(redis_server, tmp_path, heartbeat):
    heartbeat(3)  # what the workers run with: lost after 15 s without a heartbeat
    uri = f"{redis_server.url}/0?prefix=crash-{uuid.uuid4().hex[:8]}"
    config = _config(tmp_path, uri, heartbeat=3)
    name, max_trials = "crash", 80
    workers = [_hunt(config, name, max_trials, tmp_path) for _ in range(8)]
    storage = Redis(uri=uri)
    deadline = time.monotonic() + 300
    exp = None
    while time.monotonic() < deadline:  # wait until the fleet is busy
        docs = storage.fetch_experiments({"name": name})
        if docs:
            exp = docs[0]
            trials = storage.fetch_trials(uid=exp["_id"])
            if sum(t.status == "completed" for t in trials) >= 4 and any(
                t.status == "reserved" for t in trials
            ):
                break
        time.sleep(0.2)
    assert exp is not None, "the hunt never started"
    reserved_at_kill = {
        t.id for t in storage.fetch_trials(uid=exp["_id"]) if t.status == "reserved"
    }
    kill_time = datetime.datetime.utcnow()
    victims = random.Random(1).sample(workers, 2)  # 25% of the fleet
    for victim in victims:
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and its running objective
    # the survivors' trials take 3 s more from now on: ~70 trials left for 6 workers outlast the
    # 15 s after which the dead's trials are lost, so a later reserve_trial finds them (holding
    # every objective until then, as before, made the survivors' own trials 20 s long: lost
    # while alive, and their workers died with "Reservation ... has been lost")
    (tmp_path / "pace").write_text("3")
    for worker in workers:
        worker.wait(timeout=600)
    survivors = [w for w in workers if w not in victims]
    logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("worker-*.log"))
    assert all(w.returncode == 0 for w in survivors), logs

    trials = storage.fetch_trials(uid=exp["_id"])
    completed = [t for t in trials if t.status == "completed"]
    assert len(completed) >= max_trials
    assert len({t.id for t in completed}) == len(completed), "no trial completed twice"
    assert reserved_at_kill, "workers held trials when they were killed"
    # Oríon stops once max_trials completed; a killed worker's trial still reserved then must
    # be one the dead held, and be reported lost (any later worker resets it)
    time.sleep(15.5)
    lost = {t.id for t in storage.fetch_lost_trials(_Exp(exp["_id"]))}
    still_reserved = {t.id for t in trials if t.status == "reserved"}
    assert still_reserved <= reserved_at_kill and still_reserved <= lost
    # a trial reserved before the kill but (re)started after it went through lost-trial
    # detection: a survivor's trial keeps its start_time, a dead worker's is reserved anew
    recovered = {
        t.id
        for t in trials
        if t.id in reserved_at_kill and t.status == "completed" and t.start_time > kill_time
    }
    assert recovered, "a killed worker's trial was reset through lost-trial detection and rerun"
    assert not storage.get_algorithm_lock_info(uid=exp["_id"]).locked


def test_redis_killed_and_restarted_mid_hunt(tmp_path, heartbeat):
    """kill -9 of redis-server (AOF, appendfsync always) during a 4-worker hunt, restarted on
    the same port: the workers ride through on their retries; nothing acknowledged is lost."""
    from orion_track_redis.testing import RedisServer

    heartbeat(30)
    with RedisServer(tmp_path / "redis", appendfsync="always") as server:
        server.start()
        uri = f"{server.url}/0?prefix=restart"
        config = _config(tmp_path, uri, heartbeat=30)
        name, max_trials = "restart", 30
        workers = [_hunt(config, name, max_trials, tmp_path, heartbeat=30) for _ in range(4)]
        storage = Redis(uri=uri)
        deadline = time.monotonic() + 300
        completed_before = set()
        while time.monotonic() < deadline and len(completed_before) < 5:
            docs = storage.fetch_experiments({"name": name})
            if docs:
                completed_before = {
                    t.id
                    for t in storage.fetch_trials(uid=docs[0]["_id"])
                    if t.status == "completed"
                }
            time.sleep(0.2)
        assert len(completed_before) >= 5, "the hunt never got going"
        server.kill()  # SIGKILL: no shutdown, no final fsync
        time.sleep(1.0)
        server.restart()
        for worker in workers:
            worker.wait(timeout=600)
        logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("worker-*.log"))
        assert all(w.returncode == 0 for w in workers), logs

        exp = storage.fetch_experiments({"name": name})[0]
        trials = storage.fetch_trials(uid=exp["_id"])
        completed = {t.id for t in trials if t.status == "completed"}
        assert completed_before <= completed, "an acknowledged completion was lost"
        assert len(completed) >= max_trials
        assert [t for t in trials if t.status == "reserved"] == []
