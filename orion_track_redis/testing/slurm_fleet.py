"""An ``orion hunt`` fleet as a Slurm job array, with the faults a shared cluster brings: the
scenario tests/faults/test_slurm_fleet.py checks and benchmarks/studies/slurm_recovery.py times.

One array of five tasks runs the fleet on this backend (even tasks ``exec orion hunt``, odd
ones a plain ``orion hunt`` line, the two forms users write). While each task runs a trial,
one fault hits it: ``scancel`` (tasks 0 and 1), ``scancel -b --signal=USR1`` (task 2, the
``--signal=B:USR1@T`` warning before a time limit), SIGKILL of every process of the task (task 3:
the OOM killer, a lost node) and ``scontrol requeue`` (task 4, preemption). A second array of
two tasks then finishes the experiment, as a user's resubmission would. The objective does not
import Oríon: it records its start, a beat every 0.2 s and its end, per run, so that runs of
one trial can be checked for overlap afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

from .slurm import SlurmCluster

OBJECTIVE = """\
import json, os, sys, time
from pathlib import Path
run = Path(sys.argv[1]) / f"{os.environ['ORION_TRIAL_ID']}-{os.getpid()}"
task = os.environ.get("SLURM_ARRAY_JOB_ID", "?") + "_" + os.environ.get("SLURM_ARRAY_TASK_ID", "?")
def note(kind):
    with open(run, "a") as f:
        f.write(f"{kind} {time.time():.3f} {task}\\n")
note("start")
end = time.time() + float(sys.argv[2])
while time.time() < end:
    time.sleep(0.2)
    note("beat")
note("end")
with open(os.environ["ORION_RESULTS_PATH"], "w") as f:
    json.dump([{"name": "y", "type": "objective", "value": float(sys.argv[4])}], f)
"""

SCRIPT = """\
#!/bin/bash
cd {workdir}
export ORION_REDIS_URI=""
if [ $((SLURM_ARRAY_TASK_ID % 2)) -eq 0 ]; then
  exec {orion} hunt --config {config} -n {name} --max-trials {trials} \\
    {python} {objective} {runs} {seconds} '-x~uniform(0, 1)'
fi
{orion} hunt --config {config} -n {name} --max-trials {trials} \\
  {python} {objective} {runs} {seconds} '-x~uniform(0, 1)'
"""

FAULTS = {  # array task -> the fault it gets
    0: "scancel",
    1: "scancel",
    2: "usr1",
    3: "sigkill",
    4: "requeue",
}


@dataclasses.dataclass
class Run:
    trial: str
    task: str
    start: float
    last: float  # the last note: its end, or the last beat before it was stopped
    ended: bool


@dataclasses.dataclass
class Fault:
    task: int
    kind: str
    form: str  # exec or plain
    at: float
    trial: str  # the trial its task was running
    gone_s: float | None = None  # until no process of the task was left


@dataclasses.dataclass
class Outcome:
    runs: list[Run]
    faults: list[Fault]
    statuses: dict[str, str]  # trial id -> final status
    recoveries: list[dict]  # recovery records of update_trial.lua, newest first
    released_s: dict[str, float]  # trial of a fault -> seconds until it left `reserved`


def read_runs(runs_dir: Path) -> list[Run]:
    runs = []
    for path in sorted(runs_dir.iterdir()):
        notes = [line.split() for line in path.read_text().splitlines() if line.strip()]
        if notes:
            trial = path.name.rsplit("-", 1)[0]
            times = [float(n[1]) for n in notes]
            runs.append(Run(trial, notes[0][2], times[0], times[-1], notes[-1][0] == "end"))
    return runs


def overlapping(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of one trial that ran at the same time (0.3 s of slack for the beat)."""
    pairs = []
    by_trial: dict[str, list[Run]] = {}
    for run in runs:
        by_trial.setdefault(run.trial, []).append(run)
    for group in by_trial.values():
        group.sort(key=lambda r: r.start)
        for a, b in zip(group, group[1:]):
            if b.start < a.last - 0.3:
                pairs.append((a, b))
    return pairs


def task_processes(job: int, task: int) -> list[int]:
    """Pids whose environment names this array task (escaped ones included)."""
    needles = (f"SLURM_ARRAY_JOB_ID={job}\0".encode(), f"SLURM_ARRAY_TASK_ID={task}\0".encode())
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read() + b"\0"
        except OSError:
            continue
        if all(needle in env for needle in needles):
            pids.append(int(entry))
    return pids


def _running_trial(runs_dir: Path, job: int, task: int, fresh_s: float) -> str | None:
    """The trial this task's objective started less than ``fresh_s`` ago and still runs."""
    now = time.time()
    for run in read_runs(runs_dir):
        if run.task == f"{job}_{task}" and not run.ended and now - run.start < fresh_s:
            return run.trial
    return None


class FleetScenario:
    """Set up with a running ``SlurmCluster`` and the URI of a real Redis; :meth:`run`."""

    def __init__(self, cluster: SlurmCluster, uri: str, workdir: Path, *, trials=16, seconds=4):
        self.cluster, self.uri, self.workdir = cluster, uri, Path(workdir)
        self.trials, self.seconds = trials, seconds
        self.runs_dir = self.workdir / "runs"
        self.name = "slurm-fleet"

    def _script(self) -> str:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        objective = self.workdir / "objective.py"
        objective.write_text(OBJECTIVE)
        config = self.workdir / "orion.yaml"
        config.write_text(
            f'storage:\n  type: redis\n  database:\n    host: "{self.uri}"\n'
            f'experiment:\n  working_dir: "{self.workdir / "trials"}"\n'
            "  algorithms:\n    random:\n      seed: 1\n"
        )
        orion = str(Path(sys.executable).with_name("orion"))
        return SCRIPT.format(
            workdir=self.workdir, orion=orion, config=config, name=self.name,
            trials=self.trials, python=sys.executable, objective=objective,
            runs=self.runs_dir, seconds=self.seconds,
        )  # fmt: skip

    def _apply(self, job: int, task: int, kind: str) -> None:
        target = f"{job}_{task}"
        if kind == "scancel":
            self.cluster.scancel(target)
        elif kind == "usr1":
            self.cluster.scancel(target, "-b", "--signal=USR1")
        elif kind == "requeue":
            self.cluster.requeue(target)
        else:  # sigkill: every process of the task at once, as a dead node or the OOM killer
            for pid in task_processes(job, task):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def run(self, storage, timeout: float = 300) -> Outcome:
        """The fleet with its faults, then the second array; waits for both to end."""
        script = self._script()
        logs = f"{self.workdir}/task-%A_%a.log"
        job = self.cluster.sbatch(script, "--array=0-4", "-o", logs, "--open-mode=append")
        faults, released = self._inject(storage, job, timeout)
        second = self.cluster.sbatch(script, "--array=0-1", "-o", logs)
        self._watch(storage, job, faults, released, until=time.time() + 60)
        self.cluster.wait_gone(job, timeout=timeout)
        self.cluster.wait_gone(second, timeout=timeout)
        return self._outcome(storage, faults, released)

    def _inject(self, storage, job: int, timeout: float) -> tuple[list[Fault], dict]:
        """Each task's fault while it runs a fresh trial; then until every faulted task is
        gone (a requeued task restarts only after the cluster's cred_expire: its first life
        is what counts)."""
        faults: list[Fault] = []
        released: dict[str, float] = {}
        pending = dict(FAULTS)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for task, kind in list(pending.items()):
                trial = _running_trial(self.runs_dir, job, task, fresh_s=self.seconds / 3)
                if trial is not None:
                    form = "exec" if task % 2 == 0 else "plain"
                    faults.append(Fault(task, kind, form, time.time(), trial))
                    self._apply(job, task, kind)
                    del pending[task]
            self._watch_once(storage, job, faults, released)
            time.sleep(0.1)
        if pending:
            raise TimeoutError(f"tasks {sorted(pending)} never ran a trial to fault")
        until = time.time() + self.cluster.kill_wait + 20
        self._watch(storage, job, faults, released, until, gone_only=True)
        return faults, released

    def _watch(self, storage, job, faults, released, until: float, gone_only=False) -> None:
        while time.time() < until:
            if all(f.gone_s is not None for f in faults) and (
                gone_only or len(released) == len(faults)
            ):
                return
            self._watch_once(storage, job, faults, released)
            time.sleep(0.1)

    def _watch_once(self, storage, job: int, faults: list[Fault], released: dict) -> None:
        """Record the faulted tasks whose processes are all gone, and the faulted trials that
        left ``reserved`` (released by their worker, or recovered by another)."""
        now = time.time()
        for fault in faults:
            if fault.gone_s is None and not task_processes(job, fault.task):
                fault.gone_s = now - fault.at
        docs = storage.fetch_experiments({"name": self.name})
        if faults and docs:
            statuses = {t.id: t.status for t in storage.fetch_trials(uid=docs[0]["_id"])}
            for fault in faults:
                if fault.trial not in released and statuses.get(fault.trial) != "reserved":
                    released[fault.trial] = now - fault.at

    def _outcome(self, storage, faults, released) -> Outcome:
        (doc,) = storage.fetch_experiments({"name": self.name})
        statuses = {t.id: t.status for t in storage.fetch_trials(uid=doc["_id"])}
        ek = storage.backend.experiment_keys(doc["_id"])
        records = [json.loads(r) for r in storage.client.lrange(ek.recoveries, 0, -1)]
        return Outcome(read_runs(self.runs_dir), faults, statuses, records, released)
