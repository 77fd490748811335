"""A worker told to stop stops cleanly: Slurm's ``scancel``, preemption, requeue, ``--signal``.

What Oríon 0.2.7 does on SIGTERM, measured under a real Slurm (docs/slurm.md): its
handler raises ``KeyboardInterrupt`` in every process that inherited it, so a pool worker
running a trial dies, its task is never answered and ``orion hunt`` hangs in ``Pool.join``;
where the signal reaches only the worker, the objective (a grandchild) runs on to its end while
another worker re-runs the released trial; where it reaches nobody before SIGKILL, the trial
stays ``reserved``.

Here, for a ``Runner.run`` (``orion hunt``, ``workon``) whose experiment uses this backend
(orion_patches/runner.py wraps it), SIGTERM, SIGUSR1 and SIGUSR2 make the worker:

1. stop every process below it: SIGTERM, up to ``stop_grace`` seconds (an objective may save a
   checkpoint), then SIGKILL, so no objective outlives its released trial;
2. release the trials it holds as ``interrupted``, each only if it still holds it (the holder
   check of ``update_trial.lua``), so another worker takes them at once;
3. exit with 128 + the signal number, without joining Oríon's pool.

Forked children of the worker (Oríon's pool) get the default dispositions back, so a signal
that reaches them ends them and the worker, signalled too or not, is the one that cleans up; a
child forked while the worker stops (Oríon's pool replaces the workers it loses) exits at once,
or it would outlive the worker outside the job's reach.
On by default on the verified Oríon; ``trap_signals=false`` or ``ORION_REDIS_TRAP_SIGNALS=0``
run Oríon's own handling; any other Oríon runs its own (one log line).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time

from orion_track_redis.orion_patches.hold import env_allows
from orion_track_redis.store import lease

log = logging.getLogger(__name__)

ENV = "ORION_REDIS_TRAP_SIGNALS"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
_POLL_S = 0.05

_active_pid: int | None = None  # the trapping worker, while its Runner.run runs
_stopping = False


def allowed(opts) -> bool:
    """The clean stop applies to a run with these storage options."""
    return opts.trap_signals and env_allows(ENV)


@contextlib.contextmanager
def trapped(grace: float):
    """Handle SIGNALS as a clean stop while the block runs (main thread only: elsewhere Python
    cannot install handlers, and Oríon's own handling stays)."""
    global _active_pid
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler(grace)) for sig in SIGNALS}
    _active_pid = os.getpid()
    try:
        yield
    finally:
        _active_pid = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def defaults_in_child() -> None:
    """os.register_at_fork hook (orion_patches/runner.py registers it once)."""
    if _stopping:  # forked while its worker stops (a pool replacing a worker we stopped):
        os._exit(0)  # it would outlive the worker, reparented out of the job's reach
    if _active_pid is not None:  # a fork of a trapping worker (Oríon's pool): default deaths
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)


def _handler(grace: float):
    def stop(signum, frame):
        global _stopping
        if _stopping:  # a second signal (Slurm sends several) changes nothing
            return
        _stopping = True
        name = signal.Signals(signum).name
        held = sum(len(k.held()) for k in lease.keepers())
        log.warning(
            "orion-track-redis: %s: stopping this worker: its objective's processes, then "
            "%d reserved trial(s) released as interrupted",
            name,
            held,
        )
        stopped = stop_descendants(grace)
        released = 0
        for keeper in lease.keepers():
            try:
                released += keeper.release_all("interrupted")
            except Exception as exc:  # noqa: BLE001 - exit anyway: the lease recovers them
                log.error(
                    "orion-track-redis: could not release the held trials (%s): they are "
                    "recovered when their lease ends",
                    type(exc).__name__,
                )
        log.warning(
            "orion-track-redis: %s: %d process(es) stopped, %d trial(s) released; exiting",
            name,
            stopped,
            released,
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(128 + signum)

    return stop


# -- the processes below this one ----------------------------------------------------------------
def _state_and_parent(pid) -> tuple[bytes, int] | None:
    """(state letter, parent pid) of a process from /proc/<pid>/stat; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (fields[0], int(fields[1])) if len(fields) > 1 else None


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process, from /proc (Linux)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _state_and_parent(entry)
            if found is not None and found[0] != b"Z":  # a zombie is already gone
                table[int(entry)] = found[1]
    return table


def descendants(pid: int) -> set[int]:
    """Live processes below ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    found = _state_and_parent(pid)
    return found is not None and found[0] != b"Z"


def _send(pids, sig) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_descendants(grace: float) -> int:
    """SIGTERM every process below this one, SIGKILL those still alive after ``grace``
    seconds; processes forked meanwhile (a pool replacing its workers) are stopped too.
    Returns how many were signalled. Pids are kept once seen: an orphan reparented away
    from us is still ours to stop."""
    if not os.path.isdir("/proc"):
        log.warning("orion-track-redis: no /proc: the objective's processes are not stopped")
        return 0
    me = os.getpid()
    seen = descendants(me)
    _send(seen, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        fresh = descendants(me) - seen
        _send(fresh, signal.SIGTERM)
        seen |= fresh
        if not any(_alive(pid) for pid in seen):
            return len(seen)
        time.sleep(_POLL_S)
    for _ in range(20):  # SIGKILL until nothing below us is left (a pool may fork once more)
        seen |= descendants(me)
        alive = [pid for pid in seen if _alive(pid)]
        if not alive:
            break
        _send(alive, signal.SIGKILL)
        time.sleep(_POLL_S)
    return len(seen)
