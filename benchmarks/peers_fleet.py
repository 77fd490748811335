"""Fleets of benchmarks/peers.py (the fleet, tpe, faults and restart workloads): W worker
processes of one peer on a fresh experiment/study, their objective logs and the final trial
states. A ``tick`` object, called every 0.1 s while the fleet runs, injects the faults: SIGKILL
of workers (``Killer``, here) or a redis-server restart (``benchmarks.peers_restart``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks.peers_common import API, OBJECTIVE, ORION, OURS, SCRIPT, Env, _log, _optuna_storage
from benchmarks.sections.fleet import stop_workers

ERROR = re.compile(r"^[\w.]+(Error|Exception)\b")


def read_records(runs: Path) -> list[dict]:
    out = []
    for path in sorted(runs.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line cut by a SIGKILL
                    pass
    return out


def _orion_config(path: Path, peer: str, location: str, algo: str) -> Path:
    if peer == OURS:
        storage = f'storage:\n  type: redis\n  database:\n    host: "{location}"\n'
    else:
        storage = (
            f'storage:\n  type: legacy\n  database:\n    type: pickleddb\n    host: "{location}"\n'
        )
    # a shared working_dir: see benchmarks/sections/fleet.py's _fleet_config
    path.write_text(
        storage + f'experiment:\n  working_dir: "{path.parent / "trials"}"\n'
        f"  algorithms:\n    {algo}:\n      seed: null\n"
    )
    return path


def _orion_summary(peer: str, location: str, name: str):
    def summary():
        if peer in (OURS, API):
            from orion_track_redis import Redis

            storage = Redis(uri=location)
        else:
            from orion.storage.legacy import Legacy

            storage = Legacy(database={"type": "pickleddb", "host": location})
        (exp,) = storage.fetch_experiments({"name": name})
        return [{"id": t.id, "state": t.status} for t in storage.fetch_trials(uid=exp["_id"])]

    return summary


def _prepare_orion(env: Env, peer, wdir, name, trials, algo, sleep_s, lease):
    location = env.orion_location(peer, name, lease)
    (wdir / "objective.py").write_text(OBJECTIVE)
    config = _orion_config(wdir / "orion_config.yaml", peer, location, algo)
    hunt = [
        "hunt",
        "--config",
        str(config),
        "-n",
        name,
        "--exp-max-trials",
        str(trials),
        "--exp-max-broken",
        "1000",
        "--idle-timeout",
        "600",
        sys.executable,
        str(wdir / "objective.py"),
        "-x~uniform(-5, 5)",
        "-y~uniform(-5, 5)",
    ]
    base = dict(
        os.environ, ORION_REDIS_URI="", PEER_SLEEP=str(sleep_s), PEER_RUNS=str(wdir / "runs")
    )
    base.pop("ORION_DB_ADDRESS", None)
    base.pop("ORION_STORAGE_TYPE", None)
    init = subprocess.run(
        [ORION, "hunt", "--init-only", *hunt[1:]],
        capture_output=True,
        text=True,
        env=base,
        cwd=wdir,
        timeout=300,
    )
    if init.returncode != 0:
        raise RuntimeError(f"orion hunt --init-only failed:\n{init.stdout}\n{init.stderr}")

    def cmds(i):
        return [ORION, *hunt], dict(base, PEER_WORKER=str(i))

    info = {"location": location.split("?")[-1] if peer == OURS else "file"}
    return cmds, _orion_summary(peer, location, name), info


def _prepare_api(env: Env, wdir, name, trials, algo, sleep_s, lease):
    """Oríon's Python API workers (``_orion_api_worker``): the experiment is built here first,
    so that the workers do not race to create it."""
    from benchmarks.peers_worker import build_api_experiment

    location = env.orion_location(API, name, lease)
    build_api_experiment(location, name, trials, algo).close()
    spec = dict(uri=location, name=name, trials=trials, algo=algo, sleep_s=sleep_s)
    spec["runs"] = str(wdir / "runs")

    def cmds(i):
        return [
            sys.executable,
            str(SCRIPT),
            "_orion_api_worker",
            json.dumps(dict(spec, worker=i)),
        ], dict(os.environ)

    return cmds, _orion_summary(API, location, name), {"location": location.split("?")[-1]}


def _prepare_optuna(env: Env, peer, wdir, name, trials, algo, sleep_s, heartbeat, n_trials=None):
    import optuna

    spec = env.optuna_spec(peer, name)
    if heartbeat and spec["kind"] == "rdb":
        spec.update(heartbeat_s=env.mode["heartbeat_s"], grace_s=env.mode["grace_s"])
    optuna.create_study(study_name=spec["study"], storage=_optuna_storage(spec))
    spec.update(
        trials=trials,
        n_trials=n_trials,  # one worker's own count (memory) instead of MaxTrialsCallback
        algo=algo,
        sleep_s=sleep_s,
        runs=str(wdir / "runs"),
        heartbeat=bool(heartbeat and spec["kind"] == "rdb"),
    )

    def cmds(i):
        return [
            sys.executable,
            str(SCRIPT),
            "_optuna_worker",
            json.dumps(dict(spec, worker=i)),
        ], dict(os.environ)

    def summary():
        study = optuna.load_study(study_name=spec["study"], storage=_optuna_storage(spec))
        return [
            {
                "id": t.number,
                "state": t.state.name,
                "x": t.params.get("x"),
                "y": t.params.get("y"),
                "retry_of": t.system_attrs.get("failed_trial"),
            }
            for t in study.get_trials(deepcopy=False)
        ]

    return cmds, summary, {"study": spec["study"], "heartbeat": spec.get("heartbeat"), "spec": spec}


def prepare(
    env: Env, peer, wdir, name, trials, algo, sleep_s, *, lease=None, heartbeat=False, n_trials=None
):
    if peer == API:
        return _prepare_api(env, wdir, name, trials, algo, sleep_s, lease)
    if peer.startswith("orion"):
        return _prepare_orion(env, peer, wdir, name, trials, algo, sleep_s, lease)
    return _prepare_optuna(env, peer, wdir, name, trials, algo, sleep_s, heartbeat, n_trials)


class Killer:
    """SIGKILL of ``kills`` workers' process groups, each in a trial for > 0.1 s, once every
    worker has started a trial and ``after_s`` more have passed."""

    def __init__(self, kills: int, after_s: float):
        self.kills, self.after_s = kills, after_s
        self.killed: list[dict] = []
        self.steady_at = None

    def __call__(self, now, procs, runs: Path) -> None:
        if len(self.killed) >= self.kills:
            return
        recs = read_records(runs)
        started = {r["w"] for r in recs if r["ev"] == "start"}
        if self.steady_at is None and len(started) == len(procs):
            self.steady_at = now
        if self.steady_at is None or now - self.steady_at < self.after_s:
            return
        ended = {(r["w"], str(r["trial"])) for r in recs if r["ev"] == "end"}
        last_open = {}
        for r in recs:  # the newest open trial of each worker
            if r["ev"] == "start" and (r["w"], str(r["trial"])) not in ended:
                last_open[r["w"]] = r
        done = {k["worker"] for k in self.killed}
        for w, rec in sorted(last_open.items()):
            if (
                len(self.killed) < self.kills
                and w not in done
                and procs[w].poll() is None
                and now - rec["t"] > 0.1
            ):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(procs[w].pid, signal.SIGKILL)
                self.killed.append(
                    {
                        "worker": w,
                        "trial": str(rec["trial"]),
                        "x": rec["x"],
                        "y": rec["y"],
                        "t": time.time(),
                        "in_trial_s": now - rec["t"],
                    }
                )


def run_fleet(
    env: Env,
    peer: str,
    *,
    workers: int,
    trials: int,
    sleep_s: float,
    cap_s: float,
    algo: str = "random",
    kills: int = 0,
    kill_after_s: float = 0.0,
    lease: int | None = None,
    heartbeat: bool = False,
    tag: str = "fleet",
    tick=None,
) -> dict:
    """One fleet of ``workers`` processes on a fresh experiment/study; raw records."""
    wdir = env.tmp / f"{tag}-{peer}-{uuid.uuid4().hex[:4]}"
    (wdir / "runs").mkdir(parents=True)
    name = f"{tag}-{algo}"
    cmds, summary, info = prepare(
        env, peer, wdir, name, trials, algo, sleep_s, lease=lease, heartbeat=heartbeat
    )
    info.pop("spec", None)
    if tick is None and kills:
        tick = Killer(kills, kill_after_s)
    cpu0 = env.server_cpu(peer)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, once waited for
    client0 = usage.ru_utime + usage.ru_stime
    logs = [open(wdir / f"worker-{i}.log", "w") for i in range(workers)]  # noqa: SIM115
    launch = time.time()
    procs = []
    for i in range(workers):
        cmd, penv = cmds(i)
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=logs[i],
                stderr=subprocess.STDOUT,
                env=penv,
                cwd=wdir,
                start_new_session=True,
            )
        )
    capped, next_note = None, time.monotonic() + 30
    while any(p.poll() is None for p in procs):
        now = time.time()
        if tick is not None:
            tick(now, procs, wdir / "runs")
        if time.monotonic() >= next_note:
            ended = sum(1 for r in read_records(wdir / "runs") if r["ev"] == "end")
            _log(f"    {peer}: {now - launch:.0f}s, {ended} trials")
            next_note = time.monotonic() + 30
        if now - launch > cap_s:
            capped = "time"
            stop_workers(procs, grace_s=15.0)
            break
        time.sleep(0.1)
    end = time.time()
    # after a redis-server restart the pid is another process: no CPU delta
    cpu1 = None if getattr(tick, "restarted", None) else env.server_cpu(peer)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = usage.ru_utime + usage.ru_stime - client0
    for fh in logs:
        fh.close()
    records = read_records(wdir / "runs")
    killed = getattr(tick, "killed", [])
    killed_workers = {k["worker"] for k in killed}
    died = []
    for i, p in enumerate(procs):
        if i not in killed_workers and p.returncode not in (0, None) and not capped:
            lines = (wdir / f"worker-{i}.log").read_text(errors="replace").strip().splitlines()
            errors = [ln for ln in lines if ERROR.match(ln)]  # the first: the cause of a chain
            died.append(
                {
                    "worker": i,
                    "exit": p.returncode,
                    "last_line": lines[-1][-300:] if lines else "",
                    "first_error": errors[0][-300:] if errors else "",
                }
            )
    return {
        "peer": peer,
        "algo": algo,
        "workers": workers,
        "trials": trials,
        "sleep_s": sleep_s,
        "cap_s": cap_s,
        "capped": capped,
        "launch": launch,
        "end": end,
        "server_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
        "client_cpu_s": client_cpu,
        "records": records,
        "killed": killed,
        "events": getattr(tick, "events", None),
        "died": died,
        "final": summary(),
        "info": info,
    }
