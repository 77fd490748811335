"""A throw-away single-node Slurm (munged, slurmctld, slurmd as child processes) for tests and
benchmarks that run ``orion hunt`` as Slurm array tasks: submit, cancel, requeue, watch states.

Facts of /work/shared/slurm (Debian's slurm-wlm 22.05 and munge 0.5): root only, and ports
6817/6818 are fixed, so one cluster at a time. Everything lives in the workdir (config, state,
logs, a fresh munge key) except munged's socket: munged wants every directory above it
world-searchable, which a pytest tmp_path is not, so it goes to a short mode-755 dir under /tmp.
Slurm finds that socket through ``AuthInfo=socket=...`` in slurm.conf (libmunge reads no
environment variable), so ``SLURM_CONF`` is all a client needs.

Usage::

    with SlurmCluster(tmp_path / "slurm", proctrack="linuxproc", kill_wait=10) as cluster:
        job = cluster.sbatch("#!/bin/sh\\nexec python3 prog.py\\n", "--array=0-3")
        cluster.wait_gone(job, timeout=60)
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PORTS = (6817, 6818)
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def _sbin_path() -> str:
    """PATH as it is now (a caller may have changed it for its jobs), with the daemons' dirs."""
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


# Set in the daemons' and the jobs' environment: stop() kills whatever still carries it.
MARKER = "ORION_TRACK_REDIS_SLURM"

# From /work/shared/slurm/slurm.conf.template. Additions: the munge socket (AuthInfo), KillWait
# and the requeue delay (cred_expire, 120 s by default) as parameters, slurmd bound to loopback
# (NoInAddrAny with NodeAddr; slurmctld has no such option and binds all addresses).
SLURM_CONF = """\
ClusterName=otr
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=socket={munge_socket},cred_expire={cred_expire}
CommunicationParameters=NoInAddrAny
StateSaveLocation={dir}/ctld
SlurmdSpoolDir={dir}/d
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
SlurmdParameters=config_overrides
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/{proctrack}
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait={kill_wait}
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs=16 Boards=1 SocketsPerBoard=1 CoresPerSocket=16 \
ThreadsPerCore=1 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""

CGROUP_CONF = """\
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=no
"""

_RUNNING: set[SlurmCluster] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Clusters a test forgot to stop must not outlive the interpreter."""
    for cluster in list(_RUNNING):
        cluster.kill()


class SlurmError(RuntimeError):
    pass


class SlurmCluster:
    """munged + slurmctld + slurmd in the foreground (children of this process), one node with
    16 CPUs, one ProctrackType per instance (switching it needs both daemons restarted)."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        proctrack: str = "linuxproc",
        kill_wait: int = 10,
        *,
        cred_expire: int = 10,
    ):
        if proctrack not in ("linuxproc", "cgroup", "pgid"):
            raise ValueError(f"unknown proctrack {proctrack!r}")
        self.workdir = Path(workdir).absolute()
        self.proctrack = proctrack
        self.kill_wait = kill_wait
        self.cred_expire = cred_expire
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.workdir / "slurm.conf"
        self.logdir = self.workdir / "log"
        self._socket_dir: Path | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._scripts = 0

    # -- availability and lifecycle ------------------------------------------------------------

    @staticmethod
    def available() -> tuple[bool, str]:
        """Whether a cluster can start here, and if not why (for pytest.skip)."""
        missing = [b for b in BINARIES if shutil.which(b, path=_sbin_path()) is None]
        if missing:
            return False, f"not installed: {', '.join(missing)}"
        if os.geteuid() != 0:
            return False, "slurmd and munged need root"
        for port in PORTS:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("", port))
                except OSError:
                    return False, f"port {port} is taken (another Slurm cluster running?)"
        return True, ""

    def env(self) -> dict[str, str]:
        """Environment for sbatch/squeue/scancel/scontrol (and the jobs, via --export=ALL)."""
        return {
            **os.environ,
            "SLURM_CONF": str(self.conf),
            MARKER: str(self.workdir),
            "PATH": _sbin_path(),
        }

    def start(self, timeout: float = 60.0) -> SlurmCluster:
        """Write the configs, start the three daemons, wait until the node is idle."""
        if self._procs:
            return self
        ok, why = self.available()
        if not ok:
            raise SlurmError(f"cannot start Slurm: {why}")
        _RUNNING.add(self)
        try:
            self._write_configs()
            self._start_munged()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
            self._wait_idle(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _write_configs(self) -> None:
        for sub in ("ctld", "d", "log", "munge", "jobs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        # /tmp rather than tempfile.gettempdir(): the socket path must stay short
        self._socket_dir = Path(tempfile.mkdtemp(prefix="otr-munge-", dir="/tmp"))
        self._socket_dir.chmod(0o755)
        self.conf.write_text(
            SLURM_CONF.format(
                host=self.host,
                dir=self.workdir,
                proctrack=self.proctrack,
                kill_wait=self.kill_wait,
                cred_expire=self.cred_expire,
                munge_socket=self.munge_socket,
            )
        )
        (self.workdir / "cgroup.conf").write_text(CGROUP_CONF)

    @property
    def munge_socket(self) -> str:
        assert self._socket_dir is not None, "not started"
        return str(self._socket_dir / "munge.socket")

    def _start_munged(self) -> None:
        # Our own key, owned by root as munged (run as root) demands: nothing from /etc/munge.
        mdir = self.workdir / "munge"
        key = mdir / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(1024))
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={mdir / 'munged.pid'}",
                f"--seed-file={mdir / 'munged.seed'}",
                f"--log-file={self.logdir / 'munged.log'}",
            ],
        )
        self._wait(lambda: os.path.exists(self.munge_socket), 10, "munged's socket")

    def _spawn(self, name: str, argv: list[str]) -> None:
        argv = [shutil.which(argv[0], path=_sbin_path()) or argv[0], *argv[1:]]
        with open(self.logdir / f"{name}.out", "ab") as out:
            self._procs[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env()
            )

    def _wait_idle(self, timeout: float) -> None:
        last_resume = 0.0

        def idle() -> bool:
            nonlocal last_resume
            res = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = res.stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return True
            # first start: the node comes up down/drained (README); resume it now and then
            if ("drain" in state or "down" in state) and time.monotonic() - last_resume > 2:
                last_resume = time.monotonic()
                self.run("scontrol", "update", f"nodename={self.host}", "state=resume", check=False)
            return False

        self._wait(idle, timeout, "node idle in sinfo")

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            dead = [n for n, p in self._procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"timeout after {timeout:.0f} s"
                raise SlurmError(f"waiting for {what}: {why}\n{self.log_tails()}")
            time.sleep(0.2)

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every daemon log, for error messages."""
        parts = []
        for path in sorted(self.logdir.glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons, kill any job process left. Logs stay."""
        if not self._procs:
            return
        try:
            if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
                jobs = {j.split("_")[0] for j, _ in self.squeue()}
                if jobs:
                    self.run("scancel", *sorted(jobs), check=False)
                    try:
                        self._wait(lambda: not self.squeue(), self.kill_wait + 5, "queue empty")
                    except SlurmError:
                        pass  # killed below
        finally:
            self.kill()

    def kill(self) -> None:
        """Stop the daemons (SIGTERM, then SIGKILL) and SIGKILL every process that carries our
        marker in its environment: slurmstepd and job processes that outlived them."""
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        leftovers = self.marked_processes()
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while leftovers and time.monotonic() < deadline:
            leftovers = [p for p in leftovers if _alive(p)]
            time.sleep(0.05)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        _RUNNING.discard(self)

    def marked_processes(self) -> list[int]:
        """Pids (not ours) whose environment holds this cluster's marker: job processes,
        slurmstepd, including any that escaped their job."""
        needle = f"{MARKER}={self.workdir}\0".encode()
        mine = {os.getpid(), *[p.pid for p in self._procs.values()]}
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in mine:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read() + b"\0":
                        pids.append(int(entry))
            except OSError:
                continue
        return pids

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- client commands -----------------------------------------------------------------------

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster; text output captured."""
        res = subprocess.run(
            list(argv),
            env=self.env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            cwd=self.workdir,
        )
        if check and res.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
        return res

    def sbatch(self, script_text: str, *args: str) -> int:
        """Submit a batch script (written under workdir/jobs); returns the job id. Output goes
        to workdir/slurm-%j.out unless args say otherwise (the job runs in workdir)."""
        self._scripts += 1
        path = self.workdir / "jobs" / f"job-{self._scripts}.sh"
        path.write_text(script_text)
        out = self.run("sbatch", "--parsable", *args, str(path)).stdout
        return int(out.strip().split(";")[0])

    def scancel(self, job_or_task: int | str, *args: str) -> None:
        """``scancel ARGS JOB`` (JOB: ``123`` or ``123_4``); e.g. args ``--signal=USR1``, ``-b``."""
        self.run("scancel", *args, str(job_or_task))

    def requeue(self, job_or_task: int | str, *args: str) -> None:
        """``scontrol requeue JOB``: the task comes back after ``cred_expire`` seconds."""
        self.run("scontrol", "requeue", *args, str(job_or_task))

    def squeue(self, *args: str) -> list[tuple[str, str]]:
        """(job id such as ``123_4``, state) of every queued task, one per array task."""
        res = self.run("squeue", "-h", "-r", "-o", "%i %T", *args, check=False)
        if res.returncode != 0:
            if "Invalid job id" in res.stderr:
                return []
            raise SlurmError(f"squeue: {res.stderr.strip()}")
        rows = [line.split() for line in res.stdout.splitlines() if line.strip()]
        return [(row[0], row[1]) for row in rows]

    def wait_gone(self, job_id: int | str, timeout: float = 60) -> None:
        """Wait until no task of the job is queued, running or completing."""
        self._wait(lambda: not self.squeue("-j", str(job_id)), timeout, f"job {job_id} done")

    def job_states(self, job_id: int | str) -> dict[int | None, str]:
        """Array task id -> state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``CANCELLED``...)
        from ``scontrol show job`` (no accounting here; MinJobAge keeps finished jobs an
        hour). A job that is not an array is under ``None``; an unknown job gives {}."""
        res = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        states: dict[int | None, str] = {}
        for line in res.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobState" not in fields:
                continue
            tasks = fields.get("ArrayTaskId")
            if tasks is None:
                states[None] = fields["JobState"]
                continue
            for task in _expand(tasks):
                states[task] = fields["JobState"]
        return states

    def job_info(self, job_or_task: int | str) -> dict[str, str]:
        """``scontrol show job`` fields of one job or task (e.g. ``Restarts``, ``Reason``)."""
        res = self.run("scontrol", "-o", "show", "job", str(job_or_task))
        return dict(re.findall(r"(\w+)=(\S*)", res.stdout.splitlines()[0]))


def _expand(spec: str) -> list[int]:
    """``0-3,7%2`` -> [0, 1, 2, 3, 7] (pending remainder of an array)."""
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        step = 1
        if ":" in hi:
            hi, step_s = hi.split(":")
            step = int(step_s)
        out.extend(range(int(lo), int(hi or lo) + 1, step))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


__all__ = ["SlurmCluster", "SlurmError"]
