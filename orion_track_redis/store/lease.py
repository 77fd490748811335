"""Reservation leases: a reserved trial stays its worker's exactly as long as the worker lives.

Oríon finds a dead worker's trial by its heartbeat, 5 x ``worker.heartbeat`` (600 s by default)
after the last one: too slow for a cluster where a preempted or OOM-killed job is routine, and a
shorter heartbeat declares long trials lost while they run. So ``reserve_trial.lua`` also gives
the trial a *lease* (``lease`` seconds, 30 by default, on the server clock) and records its
holder (:class:`Holder`: host, pid, Slurm job and array task); a daemon thread of the holding
process (:class:`LeaseKeeper`, its own connection) renews the leases of every trial the process
holds every ``lease / 6`` seconds in one ``lease_renew.lua`` call per experiment, and
``lost_trials.lua`` counts a trial whose lease ended as lost. The thread needs the CPU for a
few milliseconds once in six renewals' time, and the GIL only between bytecodes: a loaded node
or a busy objective does not starve it (tests/protocol/test_lease.py). A lease that lapsed during a
gap
in which no worker of the experiment reached Redis (a restart, a failover, a cut) is not taken
as a death until calls have flowed again for a whole lease (``include/lease_clock.lua``).

Oríon's heartbeat rule stays in force beside the lease (a trial is lost by either), so nothing
is declared lost later than before. ``lease=0`` turns leases off.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time

from orion_track_redis import codec
from orion_track_redis.config.options import Options
from orion_track_redis.keys import ExperimentKeys
from orion_track_redis.server.connection import make_client
from orion_track_redis.store.scripts import Scripts
from orion_track_redis.store.writes import TrialWriter

log = logging.getLogger(__name__)

RENEWALS_PER_LEASE = 6  # a live worker misses 5 renewals in a row before its lease ends
# Slurm's variables naming the job (an array task is "<array job>_<task>")
_SLURM = (("job", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID"), ("task", "SLURM_ARRAY_TASK_ID", None))


class Holder:
    """Who holds a reservation: this process. A forked child is another holder (new id)."""

    def __init__(self):
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self):
        self.id = os.urandom(8).hex()
        self._record: str | None = None

    def info(self) -> dict:
        info = {"host": socket.gethostname(), "pid": os.getpid()}
        for name, primary, fallback in _SLURM:
            value = os.environ.get(primary) or (os.environ.get(fallback) if fallback else None)
            if value:
                info[name] = value
        return info

    def record(self) -> str:
        """The holder field reserve_trial.lua stores: "<id> <JSON info>" (the id first: the
        scripts compare it as a prefix)."""
        if self._record is None:
            self._record = f"{self.id} {json.dumps(self.info(), separators=(',', ':'))}"
        return self._record


HOLDER = Holder()


def describe(record: str | bytes | None) -> dict:
    """A stored holder field as a dict (host, pid, job, task, id); {} when absent."""
    if not record:
        return {}
    text = record.decode() if isinstance(record, bytes) else record
    holder_id, _, info = text.partition(" ")
    try:
        parsed = json.loads(info) if info else {}
    except ValueError:
        parsed = {}
    return {"id": holder_id, **(parsed if isinstance(parsed, dict) else {})}


def where(info: dict) -> str:
    """One line for an operator: "host:pid (Slurm job 1234_7)"."""
    if not info:
        return "unknown holder"
    text = f"{info.get('host', '?')}:{info.get('pid', '?')}"
    if info.get("job"):
        task = f"_{info['task']}" if info.get("task") else ""
        text += f" (Slurm job {info['job']}{task})"
    return text


class LeaseKeeper:
    """The trials this process reserved; a daemon thread renews their leases (with ``lease``
    > 0), and :meth:`release_all` gives them back when the worker stops
    (orion_patches/shutdown.py)."""

    def __init__(self, opts: Options):
        self._opts = opts
        self._held: dict[ExperimentKeys, set[str]] = {}  # reserved here, leases renewed
        # reserved here and not yet given up by a call of this process: a result or status
        # change of these must come from their holder (a lapsed lease means another has it)
        self._mine: set[tuple[ExperimentKeys, str]] = set()
        # re-entrant: shutdown's signal handler may run while this thread holds it
        self._mutex = threading.RLock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._scripts: Scripts | None = None
        self._warned = 0.0

    @property
    def interval(self) -> float:
        return self._opts.lease / RENEWALS_PER_LEASE

    def hold(self, ek: ExperimentKeys, token: str) -> None:
        with self._mutex:
            self._held.setdefault(ek, set()).add(token)
            self._mine.add((ek, token))
            if self._thread is None and self._opts.lease > 0:
                self._thread = threading.Thread(
                    target=self._run, name="orion-redis-lease", daemon=True
                )
                self._thread.start()

    def holder_check(self, ek: ExperimentKeys, token: str) -> str:
        """The holder id update_trial.lua must find on this trial: ours if this process
        reserved it, else "" (another process may write it, as Oríon's other callers do)."""
        return HOLDER.id if (ek, token) in self._mine else ""

    def gave_up(self, ek: ExperimentKeys, token: str) -> None:
        """This process moved the trial out of ``reserved`` (completed, released...)."""
        with self._mutex:
            self._mine.discard((ek, token))
            self._held.get(ek, set()).discard(token)

    def held(self) -> list[tuple[ExperimentKeys, str]]:
        with self._mutex:
            return [(ek, token) for ek, tokens in self._held.items() for token in tokens]

    def _connect(self) -> Scripts:
        if self._scripts is None:  # its own connection: never waits behind the main thread's
            self._client = make_client(self._opts)
            self._scripts = Scripts(self._client)
        return self._scripts

    def renew(self) -> None:
        """One renewal of every held lease; trials no longer held are forgotten."""
        for ek, tokens in self._snapshot():
            dropped = self._connect().lease_renew(
                leases=ek.leases,
                holders=ek.holders,
                lease_clock=ek.lease_clock,
                reserved=ek.status("reserved"),
                holder=HOLDER.id,
                lease=self._opts.lease,
                tokens=tokens,
            )
            if dropped:
                with self._mutex:
                    self._held.get(ek, set()).difference_update(t.decode() for t in dropped)

    def _snapshot(self) -> list[tuple[ExperimentKeys, list[str]]]:
        with self._mutex:
            for ek in [ek for ek, tokens in self._held.items() if not tokens]:
                del self._held[ek]
            return [(ek, sorted(tokens)) for ek, tokens in self._held.items()]

    def _run(self) -> None:
        while not self._wake.wait(self.interval):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a renewal must never kill the thread
                self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned > 60:  # once a minute while Redis is unreachable
            self._warned = now
            log.warning(
                "orion-track-redis: could not renew the reservation leases at %s (%s); "
                "retrying every %.1f s (a trial is lost after lease=%g s without renewal)",
                self._opts.redacted,
                type(exc).__name__,
                self.interval,
                self._opts.lease,
            )

    def release_all(self, status: str = "interrupted") -> int:
        """Give back every trial this process holds, as ``status``, only where it still
        holds it (update_trial.lua's holder check); the count released."""
        self._connect()
        writer = TrialWriter(lambda: self._client, lambda: self._scripts)
        released = 0
        for ek, tokens in self._snapshot():
            for token in tokens:
                fields = ["status", codec.dumps(status), "heartbeat", codec.dumps(codec.utcnow())]
                rc = writer.patch(
                    ek,
                    ek.unescape_trial(token),
                    "reserved",
                    (fields, ()),
                    new_status=status,
                    holder=HOLDER.id,
                )
                released += rc == 1
        with self._mutex:
            self._held.clear()
            self._mine.clear()
        return released


def lost_tokens(scripts: Scripts, ek: ExperimentKeys) -> list:
    """lost_trials.lua: tokens of the reserved trials whose holder is gone (heartbeat older
    than 5 x Oríon's ``worker.heartbeat``, or lease ended)."""
    import orion.core

    threshold = orion.core.config.worker.heartbeat * 5
    return scripts.lost_trials(
        reserved=ek.status("reserved"),
        leases=ek.leases,
        lease_clock=ek.lease_clock,
        threshold_s=threshold,
    )


_KEEPERS: dict[Options, LeaseKeeper] = {}
_KEEPERS_LOCK = threading.RLock()  # re-entrant: see LeaseKeeper._mutex


def keeper(opts: Options) -> LeaseKeeper:
    """This process's keeper for the deployment ``opts`` points at."""
    with _KEEPERS_LOCK:
        found = _KEEPERS.get(opts)
        if found is None:
            found = _KEEPERS[opts] = LeaseKeeper(opts)
        return found


def keepers() -> list[LeaseKeeper]:
    with _KEEPERS_LOCK:
        return list(_KEEPERS.values())


@atexit.register
def stop_renewing() -> None:
    """Stop every keeper's renewal thread and forget the keepers (a later reservation starts a
    new one). At interpreter exit: no renewal attempt (and warning) against a server already
    gone; a test suite calls it when a module's servers are gone too."""
    with _KEEPERS_LOCK:
        for found in _KEEPERS.values():
            found._wake.set()
        _KEEPERS.clear()


def _forget_in_child() -> None:
    # a forked child holds nothing (its parent does) and has no renewal thread
    global _KEEPERS_LOCK
    _KEEPERS.clear()
    _KEEPERS_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_forget_in_child)
