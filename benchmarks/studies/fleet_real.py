#!/usr/bin/env python
"""A real fleet (issue 13, part 1): N separate `orion hunt` processes on one experiment.

    python benchmarks/studies/fleet_real.py [--workers 64] [--trials 320] [--sleep 5]
        [--heartbeat 5]
        [--backends redis,pickleddb] [--env ORION_REDIS_ACCELERATE=1] [--out PATH]

Each backend gets the same fleet in the same run: `orion hunt --init-only` creates the experiment
(random search, two uniform parameters, cap ``--trials`` = the experiment's max_trials), then
``--workers`` `orion hunt` processes are launched at once on it. The objective sleeps
``--sleep`` seconds and imports nothing of Oríon (the cores go to Oríon and the storage, not to
the objective); it appends one JSON line per run (trial id, worker, params, start, end) to a file
of its worker. Workers run under this script's ``worker`` mode, which is `orion hunt` itself with
two timers added (nothing else changes): every algorithm-lock acquisition through the storage
(request -> acquired -> released, tagged produce/observe; a LockAcquisitionTimeout is recorded)
and every non-empty ``Experiment.fetch_lost_trials`` (the trials a worker is about to declare
lost). A sampler reads the fleet's memory every 2 s from /proc (RSS and PSS summed over every
worker's process tree: the hunt, its pool process, the running objective; plus redis-server).

Measured per backend (``analyse``): completed trials; trials/s over the whole run and over the
steady state (from the moment every worker has started its first trial to the last trial start,
after which the fleet only drains); utilisation = time in the objective / worker wall time (whole
run, and steady state: objective time inside the window / (workers x window)); workers that died
(exit code, last log line); duplicates (a trial run more than once, params completed twice);
trials declared lost while their worker was alive; lock wait (request -> acquired) and hold
(acquired -> released) p50/p99/max, the lock's busy share of the run; time from launch to a
worker's first trial (Oríon start-up on a loaded machine); peak memory.

Prints a table and writes ``benchmarks/results/fleet_real.json``. ``tests/faults/test_fleet64.py``
runs the same fleet (plain `orion hunt`, no timers) and asserts its invariants.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the package `benchmarks`
from benchmarks.sections.fleet import (  # noqa: E402 - run.py's fleet set-up
    _fleet_config,
    _fleet_storage,
    stop_workers,
)
from benchmarks.studies.fleet_real_analysis import (  # noqa: E402
    analyse,
    duplicates,  # noqa: F401 - re-exported for tests/faults/test_fleet64.py
)
from benchmarks.studies.fleet_real_proc import (  # noqa: E402
    _children_cpu,
    _process_cpu,
    _read_jsonl,
    _worker_record,
    memory_sample,
)
from benchmarks.studies.fleet_real_worker import worker_main  # noqa: E402

HERE = Path(__file__).resolve().parents[1]  # benchmarks/
ROOT = HERE.parent
RESULTS = HERE / "results"
ORION = str(Path(sys.executable).with_name("orion"))
SPACE = ("-x~uniform(-5, 5)", "-y~uniform(-5, 5)")

# The objective: no Oríon import (~2 s of CPU each on 2 cores), reports through
# $ORION_RESULTS_PATH like Oríon's report_objective does.
OBJECTIVE = """\
import json, os, sys, time
start = time.time()
args = dict(zip(sys.argv[1::2], map(float, sys.argv[2::2])))
time.sleep(float(os.environ["FLEET_SLEEP"]))  # pretend to train
value = (args["-x"] - 2) ** 2 + (args["-y"] + 1) ** 2
with open(os.environ["ORION_RESULTS_PATH"], "w") as fh:
    json.dump([{"name": "objective", "type": "objective", "value": value}], fh)
record = {"trial": os.environ["ORION_TRIAL_ID"], "worker": int(os.environ["FLEET_WORKER"]),
          "x": args["-x"], "y": args["-y"], "value": value, "start": start, "end": time.time()}
path = os.path.join(os.environ["FLEET_RUNS"], "runs-%s.jsonl" % os.environ["FLEET_WORKER"])
with open(path, "a") as fh:
    fh.write(json.dumps(record) + "\\n")
"""


@dataclasses.dataclass
class FleetSpec:
    workers: int = 64
    trials: int = 320
    sleep_s: float = 5.0
    heartbeat_s: int = 5  # ORION_HEARTBEAT: a reserved trial is lost after 5x this
    cap_s: float = 600.0  # wall-clock safety cap (then SIGINT, SIGKILL)
    stagger_s: float = 0.0  # pause between two launches
    instrument: bool = True  # run workers under the timers of ``worker`` mode
    extra_env: dict = dataclasses.field(default_factory=dict)
    idle_timeout: int | None = None  # None: Oríon's default
    min_available_gib: float = 2.0  # stop the fleet if the machine's MemAvailable drops below


# ------------------------------------------------------------------------------------------------
# one fleet
def run_fleet(
    spec: FleetSpec,
    backend: str,
    location: str,
    workdir: Path,
    *,
    redis_pid: int | None = None,
    on_tick=None,
    log=print,
) -> dict:
    """Run one fleet to completion; returns the raw records. The fleet is stopped (SIGINT,
    then SIGKILL; ``capped`` says why) after ``spec.cap_s``, when the machine's MemAvailable
    drops under ``spec.min_available_gib``, or when ``on_tick(elapsed_s)`` (called every 2 s)
    returns true."""
    workdir.mkdir(parents=True)
    objective = workdir / "objective.py"
    objective.write_text(OBJECTIVE)
    runs = workdir / "runs"
    runs.mkdir()
    config = _fleet_config(workdir / "orion_config.yaml", backend, location)
    name = f"fleet-{backend}"
    hunt = ["hunt", "--config", str(config), "-n", name, "--exp-max-trials", str(spec.trials)]
    if spec.idle_timeout is not None:
        hunt += ["--idle-timeout", str(spec.idle_timeout)]
    hunt += [sys.executable, str(objective), *SPACE]
    env = dict(
        os.environ,
        ORION_REDIS_URI="",
        ORION_HEARTBEAT=str(spec.heartbeat_s),
        FLEET_SLEEP=str(spec.sleep_s),
        FLEET_RUNS=str(runs),
        **spec.extra_env,
    )
    env.pop("ORION_DB_ADDRESS", None)
    env.pop("ORION_STORAGE_TYPE", None)
    cpu_before = _children_cpu()
    init = subprocess.run(
        [ORION, "hunt", "--init-only", *hunt[1:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=300,
    )
    if init.returncode != 0:
        raise RuntimeError(f"orion hunt --init-only failed:\n{init.stdout}\n{init.stderr}")
    init_cpu = _children_cpu() - cpu_before
    redis_cpu_before = _process_cpu(redis_pid) if redis_pid else 0.0

    logs = [workdir / f"worker-{i}.log" for i in range(spec.workers)]
    timers = [workdir / f"timers-{i}.jsonl" for i in range(spec.workers)]
    workers, handles = [], []
    launch = time.time()
    for i in range(spec.workers):
        cmd = (
            [sys.executable, str(Path(__file__).resolve()), "worker", str(timers[i]), *hunt]
            if spec.instrument
            else [ORION, *hunt]
        )
        handle = open(logs[i], "w")
        handles.append(handle)
        workers.append(
            subprocess.Popen(
                cmd,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=dict(env, FLEET_WORKER=str(i)),
                cwd=workdir,
                start_new_session=True,
            )
        )
        if spec.stagger_s:
            time.sleep(spec.stagger_s)
    log(f"  {backend}: {spec.workers} workers launched in {time.time() - launch:.1f}s")

    ended: dict[int, float] = {}
    memory, capped, stop, next_sample = [], False, None, 0.0
    next_note = time.monotonic() + 30
    while len(ended) < len(workers):
        now = time.time()
        for i, w in enumerate(workers):
            if i not in ended and w.poll() is not None:
                ended[i] = now
        if time.monotonic() >= next_sample:
            roots = [w.pid for i, w in enumerate(workers) if i not in ended]
            memory.append(memory_sample(roots + ([redis_pid] if redis_pid else [])))
            next_sample = time.monotonic() + 2.0
            if on_tick is not None and on_tick(now - launch):
                stop = "on_tick"  # the caller has seen enough
        if time.monotonic() >= next_note:
            done = sum(1 for _ in _read_jsonl(runs.glob("*.jsonl")))
            log(
                f"  {backend}: {now - launch:.0f}s, {done} trials run, "
                f"{len(workers) - len(ended)} workers up"
            )
            next_note = time.monotonic() + 30
        if memory and memory[-1]["mem_available_kib"] < spec.min_available_gib * 2**20:
            stop = "memory"  # protect the machine (and whoever shares it)
        if now - launch > spec.cap_s:
            stop = "time"
        if stop:
            capped = stop
            log(f"  {backend}: stopping the fleet ({capped})")
            stop_workers(workers)
            now = time.time()
            ended.update({i: now for i in range(len(workers)) if i not in ended})
            break
        time.sleep(0.2)
    for handle in handles:
        handle.close()
    fleet_cpu = _children_cpu() - cpu_before - init_cpu  # the workers and their children
    redis_cpu = (_process_cpu(redis_pid) - redis_cpu_before) if redis_pid else None

    storage = _fleet_storage(backend, location)
    (exp,) = storage.fetch_experiments({"name": name})
    trials = [
        {
            "id": t.id,
            "status": t.status,
            "params": dict(t.params),
            "objective": t.objective.value if t.objective else None,
        }
        for t in storage.fetch_trials(uid=exp["_id"])
    ]
    timer_records = _read_jsonl(p for p in timers if p.exists())
    return {
        "backend": backend,
        "spec": dataclasses.asdict(spec),
        "launch": launch,
        "capped": capped,
        "experiment_id": exp["_id"],
        "workers": [
            _worker_record(i, workers[i].returncode, ended[i], logs[i]) for i in range(len(workers))
        ],
        "runs": _read_jsonl(sorted(runs.glob("*.jsonl"))),
        "locks": [r for r in timer_records if r["kind"] == "lock"],
        "lost": [r for r in timer_records if r["kind"] == "lost"],
        "trials": trials,
        "memory": memory,
        "cpu": {"init_only_s": init_cpu, "fleet_s": fleet_cpu, "redis_server_s": redis_cpu},
    }


# ------------------------------------------------------------------------------------------------
# report
def _f(v, digits=2):
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _cause(last_line: str) -> str:
    """The exception class a worker's log ends with (its last line), else that line."""
    head = last_line.split(":", 1)[0].strip()
    return head.rsplit(".", 1)[-1] if head and " " not in head else last_line[:60]


def render(results: list[dict]) -> str:
    head = (
        "| backend | workers | completed | wall s | trials/s | steady trials/s | ideal | "
        "utilisation | steady util. | died | run twice / params twice | false lost | "
        "lock wait p50 / p99 / max s | hold p50 / p99 s | lock busy (steady) | "
        "first trial p50 / max s | CPU s/trial (outside lock) | steady cores fleet / machine"
        " | peak RSS / PSS GiB |"
    )
    rows = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for a in results:
        lock, mem, dup = a["lock"], a["memory"], a["duplicates"]
        causes = collections.Counter(_cause(d["last_line"]) for d in a["died"])
        died = ", ".join(f"{n} {c}" for c, n in causes.most_common()) or "-"
        rows.append(
            f"| {a['backend']} | {a['workers']} | {a['completed']}"
            f"{' (capped)' if a['capped'] else ''} | {_f(a['wall_s'], 0)} | "
            f"{_f(a['trials_per_s'])} | {_f(a['steady_trials_per_s'])} | "
            f"{_f(a['ideal_trials_per_s'], 1)} | {_f(a['utilisation'] * 100, 1)}% | "
            f"{_f((a['steady_utilisation'] or 0) * 100, 1)}% | {len(a['died'])} ({died}) | "
            f"{len(dup['trials_run_more_than_once'])} / {dup['params_completed_more_than_once']}"
            f" | {len(a['false_lost'])} | {_f(lock['wait_s']['p50'])} / "
            f"{_f(lock['wait_s']['p99'])} / {_f(lock['wait_s']['max'])} | "
            f"{_f(lock['hold_s']['p50'], 3)} / {_f(lock['hold_s']['p99'], 3)} | "
            f"{_f((lock['busy_share'] or 0) * 100, 0)}% "
            f"({_f((lock.get('steady_busy_share') or 0) * 100, 0)}%) | "
            f"{_f(a['first_trial_s']['p50'], 1)} / {_f(a['first_trial_s']['max'], 1)} | "
            f"{_f(a['cpu']['per_trial_s'], 3)} ({_f(a['cpu']['per_trial_outside_lock_s'], 3)})"
            f" | {_f(a['cpu'].get('steady_fleet_cores'))} / "
            f"{_f(a['cpu'].get('steady_machine_cores'))} | "
            f"{_f(mem['peak_rss_gib'], 1)} / {_f(mem['peak_pss_gib'], 1)} |"
        )
    notes = []
    for a in results:
        for d in a["died"][:5]:
            notes.append(
                f"- {a['backend']} worker {d['worker']} exited {d['exit']}: `{d['last_line']}`"
            )
        if len(a["died"]) > 5:
            notes.append(f"- {a['backend']}: {len(a['died']) - 5} more deaths (see JSON)")
        if a["lock"]["errors"]:
            notes.append(f"- {a['backend']} lock errors: {dict(a['lock']['errors'])}")
    return "\n".join(rows + ([""] + notes if notes else []))


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        return worker_main(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--trials", type=int, default=320, help="the experiment's max_trials")
    parser.add_argument("--sleep", type=float, default=5.0, help="objective seconds")
    parser.add_argument("--heartbeat", type=int, default=5, help="ORION_HEARTBEAT (s)")
    parser.add_argument("--cap", type=float, default=600.0, help="wall-clock cap per fleet (s)")
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds between launches")
    parser.add_argument("--backends", default="redis,pickleddb")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment variable for the workers (repeatable), "
        "e.g. ORION_REDIS_ACCELERATE=1",
    )
    parser.add_argument("--out", default=str(RESULTS / "fleet_real.json"))
    parser.add_argument(
        "--workdir",
        help="keep the fleets' files (logs, records) here instead of a temporary directory",
    )
    parser.add_argument(
        "--reanalyse",
        metavar="JSON",
        help="recompute the table from the raw records of an earlier run",
    )
    args = parser.parse_args(argv)
    if args.reanalyse:
        earlier = json.loads(Path(args.reanalyse).read_text())
        print(render([analyse(raw) for raw in earlier["raw"].values()]))
        return 0
    extra_env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env expects NAME=VALUE, got {item!r}")
        extra_env[key] = value
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"redis", "pickleddb"}
    if unknown:
        parser.error(f"unknown backend(s) {sorted(unknown)}: choose from redis, pickleddb")
    spec = FleetSpec(
        workers=args.workers,
        trials=args.trials,
        sleep_s=args.sleep,
        heartbeat_s=args.heartbeat,
        cap_s=args.cap,
        stagger_s=args.stagger,
        extra_env=extra_env,
    )
    from orion_track_redis.testing import RedisServer

    meta = {
        "started_utc": datetime.datetime.utcnow().isoformat(timespec="seconds"),
        "command": "python benchmarks/studies/fleet_real.py " + " ".join(argv),
        "machine": _machine(),
        "spec": dataclasses.asdict(spec),
    }
    results, raws = [], {}
    with contextlib.ExitStack() as stack:
        tmp = (
            Path(args.workdir)
            if args.workdir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orion-fleet-real-")))
        )
        tmp.mkdir(parents=True, exist_ok=True)
        with RedisServer(tmp / "redis") as server:
            server.start()
            meta["redis_version"] = server.client().info("server")["redis_version"]
            for backend in backends:
                location = (
                    f"{server.url}/0?prefix=fleet-{uuid.uuid4().hex[:6]}"
                    if backend == "redis"
                    else str(tmp / "fleet.pkl")
                )
                print(
                    f"fleet {backend}: {spec.workers} workers, max_trials {spec.trials}, "
                    f"sleep {spec.sleep_s}s",
                    flush=True,
                )
                raw = run_fleet(
                    spec,
                    backend,
                    location,
                    tmp / f"fleet-{backend}",
                    redis_pid=server.pid if backend == "redis" else None,
                    log=lambda m: print(m, flush=True),
                )
                raws[backend] = raw
                results.append(analyse(raw))
    meta["loadavg_end"] = os.getloadavg()
    table = render(results)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"meta": meta, "results": results, "raw": raws}, indent=1, default=str)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
