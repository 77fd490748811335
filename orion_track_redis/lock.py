"""The algorithm lock: server-side TTL, background renewal, fencing, FIFO hand-off.

A holder owns the key ``{P:E}:lock:holder`` (value ``"<fence>:<owner>"``, PX TTL). The key
expires by itself when a holder dies, so nobody ever needs ``orion db release``. While the
``with`` block runs, a daemon thread renews the TTL every TTL/3. The state is written at
release only if the holder token still matches (its fence); a holder whose lock expired logs a
warning and its state is dropped.

Waiters are served in arrival order. The first acquire call of a waiter gives it a ticket in
``{P:E}:lock:queue``; only the queue's head takes a free lock, and a release wakes the head
through its own list ``{P:E}:lock:wake:<owner>`` (one round trip, no polling delay). A waiter
polls every ``retry_interval`` (its BLPOP times out), which refreshes its lease in
``{P:E}:lock:leases``; a waiter whose lease has lapsed when it reaches the head (SIGKILLed, or
stalled for longer than the lease) is dropped and loses its place, so a dead waiter delays the
queue by at most ``lease + retry_interval`` (lease = max(LEASE_POLLS x retry_interval,
LEASE_MIN_S): 3 s + 1 s with Oríon's retry_interval of 1 s). A waiter that gives up leaves
the queue at once. So a waiter's wait is the holds of the waiters ahead of it plus one hand-off
each: it times out only when those exceed its timeout.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid

from orion.storage.base import LockAcquisitionTimeout, LockedAlgorithmState

from . import codec
from .gcpause import no_gc
from .keys import HOLDS_KEEP, REQUEST_TTL, ExperimentKeys, new_request_id
from .statecodec import dump_state, load_state

log = logging.getLogger(__name__)

# A waiter's lease covers this many of its polls (a late poll or two keeps its place) ...
LEASE_POLLS = 3
# ... and at least this long: a busy worker process may answer its poll late.
LEASE_MIN_S = 2.0
# A wake-up list outlives any wait for it (it is deleted when its waiter takes the lock).
WAKE_TTL_MS = 60_000


class LockClient:
    """Lock operations of one storage: its client, scripts, TTL and state secret."""

    def __init__(self, client, scripts, ttl: float, secret: bytes | None):
        self.client = client
        self.scripts = scripts
        self.ttl_ms = int(ttl * 1000)
        self.secret = secret

    # -- record -------------------------------------------------------------------------------
    def initialize(self, ek: ExperimentKeys, configuration, state=None, locked=False) -> int:
        raw_state = b"" if state is None else dump_state(state, self.secret)
        return int(
            self.scripts.lock_init(
                keys=[ek.lock, ek.lock_holder],
                args=[codec.dumps(configuration), raw_state, "1" if locked else "0", self.ttl_ms],
            )
        )

    def info(self, ek: ExperimentKeys) -> LockedAlgorithmState | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(ek.lock, "configuration", "state")
        pipe.exists(ek.lock_holder)
        (configuration, state), held = pipe.execute()
        if configuration is None:
            return None
        return LockedAlgorithmState(
            state=self._state(state, ek),
            configuration=codec.loads(configuration, ek.lock),
            locked=int(bool(held)),
        )

    def delete(self, ek: ExperimentKeys) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(ek.lock)
        # one DEL per key: a Redis Cluster pipeline refuses multi-key DEL (same slot or not)
        pipe.delete(ek.lock_holder)
        pipe.delete(ek.lock_queue)
        pipe.delete(ek.lock_leases)  # the waiters' wake lists expire by themselves
        pipe.delete(ek.unobserved)  # observations of a state that is gone
        pipe.delete(ek.holds)  # hold durations of a lock that is gone
        return int(pipe.execute()[0])

    def force_release(self, ek: ExperimentKeys, new_state=None) -> int:
        """Release whoever holds the lock (``orion db release``); 1 if the record exists."""
        return int(self._release(ek, "", new_state) == 1)

    # -- holding ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, ek: ExperimentKeys, timeout: float, retry_interval: float):
        """Hold the lock; yields a :class:`Held` state. Its ``backlog`` reads, on first use,
        the trials waiting to be observed (batched observation); those the holder marks
        observed (``held.observed``) leave the backlog with the state write, atomically."""
        token, configuration, raw_state = self._acquire(ek, timeout, retry_interval)
        start = time.monotonic()
        locked = Held(
            state=self._state(raw_state, ek),
            configuration=codec.loads(configuration, ek.lock),
            locked=True,
            read_backlog=lambda: self.backlog(ek),
        )
        renewer = _Renewer(self, ek, token)
        renewer.start()
        failed = False
        try:
            yield locked
        except BaseException:
            # like Legacy: keep the state that was read. It is not written back: a copy-free
            # hold (accel.py) may have changed that very dict; the stored bytes are intact.
            locked.reset()
            failed = True
            raise
        finally:
            renewer.stop()
            if (
                self._release(
                    ek,
                    token,
                    None if failed else locked.state,
                    0 if failed else locked.observed,
                    held_since=start,
                )
                != 1
            ):
                log.warning(
                    "The algorithm lock of experiment %s expired while this worker held it "
                    "(held longer than lock_ttl=%.0fs without renewal?): its algorithm state was "
                    "NOT saved; another worker took over.",
                    ek.exp_token,
                    self.ttl_ms / 1000,
                )

    # -- batched observation ------------------------------------------------------------------
    def encode_entry(self, trial) -> bytes:
        """``trial`` as a backlog entry (encoded as an algorithm state is)."""
        with no_gc():
            return dump_state(trial, self.secret)

    def observe_later(self, ek: ExperimentKeys, trial) -> int:
        """Append ``trial`` to the experiment's backlog; returns the backlog's length."""
        raw = self.encode_entry(trial)
        return int(
            self.scripts.observe_later(
                keys=[ek.unobserved, ek.request(new_request_id())], args=[raw, REQUEST_TTL]
            )
        )

    def backlog(self, ek: ExperimentKeys) -> list:
        """The trials waiting to be observed, oldest first (as ``observe_later`` got them)."""
        raws = self.client.lrange(ek.unobserved, 0, -1)
        with no_gc():
            return [load_state(raw, self.secret) for raw in raws]

    def backlog_length(self, ek: ExperimentKeys) -> int:
        return int(self.client.llen(ek.unobserved))

    def _acquire(self, ek: ExperimentKeys, timeout: float, retry_interval: float):
        """(holder token, configuration, raw state) once this waiter's turn came (FIFO)."""
        owner = uuid.uuid4().hex
        poll = retry_interval if retry_interval > 0 else 0.05
        lease_ms = int(max(LEASE_POLLS * poll, LEASE_MIN_S) * 1000)
        deadline = time.monotonic() + timeout
        try:
            while True:
                reply = self.scripts.lock_acquire(
                    keys=[ek.lock, ek.lock_holder, ek.lock_queue, ek.lock_leases],
                    args=[owner, self.ttl_ms, lease_ms, ek.lock_wake_prefix, WAKE_TTL_MS],
                )
                code = int(reply[0])
                if code == 1:
                    return reply[1].decode(), reply[3], reply[4]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockAcquisitionTimeout(
                        f"could not acquire the algorithm lock of experiment {ek.exp_token} "
                        f"within {timeout}s"
                        + ("" if code == 0 else " (the experiment has no lock record)")
                    )
                # Woken when our turn comes; polling every retry_interval keeps the lease. The
                # head also watches the holder's TTL: a dead holder never releases.
                wait = min(remaining, poll)
                if code == 0 and int(reply[2]) == 0 and int(reply[1]) > 0:
                    wait = min(wait, int(reply[1]) / 1000)
                self.client.blpop([ek.lock_wake(owner)], timeout=max(wait, 0.01))
        except BaseException:
            self._leave(ek, owner)
            raise

    def _leave(self, ek: ExperimentKeys, owner: str) -> None:
        """Leave the queue (timed out, interrupted) so the next waiter need not wait for our
        lease to lapse. Best effort: the lease bounds the delay anyway."""
        try:
            self.scripts.lock_leave(
                keys=[ek.lock_queue, ek.lock_leases, ek.lock_holder, ek.lock_wake(owner)],
                args=[owner, ek.lock_wake_prefix, WAKE_TTL_MS],
            )
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.debug("could not leave the lock queue of %s: %s", ek.exp_token, exc)

    def renew(self, ek: ExperimentKeys, token: str) -> bool:
        return int(self.scripts.lock_renew(keys=[ek.lock_holder], args=[token, self.ttl_ms])) == 1

    def _release(
        self,
        ek: ExperimentKeys,
        token: str,
        new_state,
        observed: int = 0,
        held_since: float | None = None,
    ) -> int:
        """``held_since``: monotonic time the hold began; its duration up to this release
        (state encoding included) goes to ``{P:E}:holds`` (capped list) for ``orion-redis
        metrics``. None records nothing (a forced release)."""
        write = new_state is not None
        with no_gc():
            raw = dump_state(new_state, self.secret) if write else b""
        held_ms = None if held_since is None else (time.monotonic() - held_since) * 1000
        return int(
            self.scripts.lock_release(
                keys=[
                    ek.lock,
                    ek.lock_holder,
                    ek.lock_queue,
                    ek.lock_leases,
                    ek.request(new_request_id()),
                    ek.unobserved,
                    ek.holds,
                ],
                args=[
                    token,
                    "1" if write else "0",
                    raw,
                    REQUEST_TTL,
                    ek.lock_wake_prefix,
                    WAKE_TTL_MS,
                    observed,
                    "" if held_ms is None else f"{held_ms:.1f}",
                    HOLDS_KEEP,
                ],
            )
        )

    def _state(self, raw, ek: ExperimentKeys):
        if not raw:
            return None
        with no_gc():  # a state is thousands of objects: GC sweeps would only cost
            return load_state(raw, self.secret)


class Held(LockedAlgorithmState):
    """Oríon's locked state plus the backlog of batched observation: ``backlog`` holds the
    trials waiting to be observed (read on first use, during the hold: the storage's
    ``acquire_algorithm_lock`` keeps Oríon's exact signature), ``observed`` how many of them
    (from the first) the new state has observed."""

    def __init__(self, state, configuration, locked=True, read_backlog=None):
        super().__init__(state, configuration, locked)
        self._read_backlog = read_backlog
        self._backlog: list | None = None
        self.observed = 0

    @property
    def backlog(self) -> list:
        if self._backlog is None:
            self._backlog = self._read_backlog() if self._read_backlog else []
        return self._backlog

    @backlog.setter
    def backlog(self, trials: list) -> None:
        self._backlog = trials


class _Renewer(threading.Thread):
    """Renews the holder's TTL every TTL/3 until stopped or the lock is lost."""

    def __init__(self, lock: LockClient, ek: ExperimentKeys, token: str):
        super().__init__(name=f"orion-redis-lock-{ek.exp_token}", daemon=True)
        self._lock, self._ek, self._token = lock, ek, token
        self._stopped = threading.Event()

    def run(self):
        period = self._lock.ttl_ms / 3000
        while not self._stopped.wait(period):
            try:
                if not self._lock.renew(self._ek, self._token):
                    log.warning(
                        "Lost the algorithm lock of experiment %s (TTL expired).",
                        self._ek.exp_token,
                    )
                    return
            except Exception as exc:  # keep trying: the TTL leaves room for a few failures
                log.warning("Could not renew the algorithm lock: %s", exc)

    def stop(self):
        self._stopped.set()
