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
import contextvars
import logging
import threading
import time
import uuid

from orion.storage.base import LockAcquisitionTimeout, LockedAlgorithmState

from orion_track_redis import codec
from orion_track_redis.errors import RedisStorageError
from orion_track_redis.gcpause import no_gc
from orion_track_redis.keys import HOLDS_KEEP, REQUEST_TTL, ExperimentKeys, new_request_id
from orion_track_redis.state import delta as statedelta
from orion_track_redis.state.codec import dump_state, load_state
from orion_track_redis.store import codes
from orion_track_redis.store.held import Held

log = logging.getLogger(__name__)

# A waiter's lease covers this many of its polls (a late poll or two keeps its place) ...
LEASE_POLLS = 3
# ... and at least this long: a busy worker process may answer its poll late.
LEASE_MIN_S = 2.0
# A wake-up list outlives any wait for it (it is deleted when its waiter takes the lock).
WAKE_TTL_MS = 60_000
# A release writes a delta while the log stays under this fraction of the snapshot's bytes (or
# COMPACT_MIN), else a whole state (compaction): the log costs at most that much memory, and
# the snapshot's encoding, O(trials), is paid once per that many bytes of deltas.
COMPACT_RATIO = 1.0
COMPACT_MIN = 64 * 1024

# The state token of the caller's resident algorithm, set by orion_patches/hold.py around its
# call of the storage's acquire_algorithm_lock (whose signature stays Oríon's); "" reads the
# whole state.
RESIDENT: contextvars.ContextVar[str] = contextvars.ContextVar("orion_redis_resident", default="")


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
                lock=ek.lock,
                holder=ek.lock_holder,
                log=ek.lock_log,
                configuration=codec.dumps(configuration),
                state=raw_state,
                locked="1" if locked else "0",
                ttl_ms=self.ttl_ms,
                epoch=uuid.uuid4().hex,
            )
        )

    def info(self, ek: ExperimentKeys) -> LockedAlgorithmState | None:
        """The lock record, its state composed from the snapshot and the log (read in one
        transaction: a compaction between two reads would mix two generations)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hmget(ek.lock, "configuration", "state", "epoch", "version")
        pipe.lrange(ek.lock_log, 0, -1)
        pipe.exists(ek.lock_holder)
        (configuration, state, epoch, version), raws, locked = pipe.execute()
        if configuration is None:
            return None
        return LockedAlgorithmState(
            state=self._compose(state, raws, state_token(epoch, version), ek),
            configuration=codec.loads(configuration, ek.lock),
            locked=int(bool(locked)),
        )

    def delete(self, ek: ExperimentKeys) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(ek.lock)
        # one DEL per key: a Redis Cluster pipeline refuses multi-key DEL (same slot or not)
        pipe.delete(ek.lock_holder)
        pipe.delete(ek.lock_log)
        pipe.delete(ek.lock_queue)
        pipe.delete(ek.lock_leases)  # the waiters' wake lists expire by themselves
        pipe.delete(ek.unobserved)  # observations of a state that is gone
        pipe.delete(ek.holds)  # hold durations of a lock that is gone
        return int(pipe.execute()[0])

    def force_release(self, ek: ExperimentKeys, new_state=None) -> int:
        """Release whoever holds the lock (``orion db release``); 1 if the record exists."""
        write = ("0", b"") if new_state is None else ("1", dump_state(new_state, self.secret))
        return int(self._release(ek, "", (*write, "")) == 1)

    # -- holding ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, ek: ExperimentKeys, timeout: float, retry_interval: float):
        """Hold the lock; yields a :class:`Held` state. Its ``backlog`` reads, on first use,
        the trials waiting to be observed (batched observation); those the holder marks
        observed (``held.observed``) leave the backlog with the state write, atomically.
        With :data:`RESIDENT` set (orion_patches/hold.py), the state is read only as far as the
        caller's
        resident algorithm lacks it, and a ``held.delta`` is written as a delta."""
        token, reply = self._acquire(ek, timeout, retry_interval, RESIDENT.get())
        start = time.monotonic()
        locked = self._held(ek, reply)
        renewer = _Renewer(self, ek, token)
        renewer.start()
        failed = False
        try:
            yield locked
        except BaseException:
            # like Legacy: keep the state that was read. It is not written back: a copy-free
            # hold (orion_patches/hold.py) may have changed that very dict; the stored bytes are
            # intact.
            locked.reset()
            failed = True
            raise
        finally:
            renewer.stop()
            mode, raw = ("0", b"") if failed else self._write_of(locked)
            code = self._release(
                ek,
                token,
                (mode, raw, locked.token),
                0 if failed else locked.observed,
                held_since=start,
            )
            if code == codes.DONE:
                locked.written = locked.token if mode == "0" else _next(locked.token)
            else:
                self._warn_lost(ek, code)

    def _held(self, ek: ExperimentKeys, reply) -> Held:
        configuration, token, snap_bytes, log_bytes, mode = reply[:5]
        token, mode = token.decode(), mode.decode()
        locked = Held(
            configuration=codec.loads(configuration, ek.lock),
            token=token,
            mode=mode,
            sizes=(int(snap_bytes), int(log_bytes)),
            read_backlog=lambda: self.backlog(ek),
            read_state=lambda: self._whole_state(ek),
        )
        if mode == "log":
            locked.deltas = self._deltas(reply[5], token, ek)
        elif mode == "snap":
            locked.set_original(self._compose(reply[6], reply[5], token, ek))
        return locked

    def _write_of(self, locked: Held) -> tuple[str, bytes]:
        """What the release of ``locked`` writes: ("0", nothing) when nobody set or read its
        state, ("2", a delta) while the log stays small, ("1", a whole state) otherwise."""
        if locked.unread:
            return "0", b""
        snap_bytes, log_bytes = locked.sizes
        with no_gc():
            if locked.delta is not None and snap_bytes and not locked.token.startswith(":"):
                delta = dict(locked.delta, version=_version(locked.token) + 1)
                raw = dump_state(delta, self.secret)
                if log_bytes + len(raw) <= max(COMPACT_MIN, COMPACT_RATIO * snap_bytes):
                    return "2", raw
            state = locked.state
            return ("0", b"") if state is None else ("1", dump_state(state, self.secret))

    def _warn_lost(self, ek: ExperimentKeys, code: int) -> None:
        if code == codes.STALE_BASE:
            log.warning(
                "The algorithm state of experiment %s was replaced while this worker held its "
                "lock (orion db release or an import?): this hold's changes were NOT saved.",
                ek.exp_token,
            )
            return
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
                backlog=ek.unobserved,
                request=ek.request(new_request_id()),
                trial=raw,
                request_ttl=REQUEST_TTL,
            )
        )

    def backlog(self, ek: ExperimentKeys) -> list:
        """The trials waiting to be observed, oldest first (as ``observe_later`` got them)."""
        raws = self.client.lrange(ek.unobserved, 0, -1)
        with no_gc():
            return [load_state(raw, self.secret) for raw in raws]

    def backlog_length(self, ek: ExperimentKeys) -> int:
        return int(self.client.llen(ek.unobserved))

    def _acquire(self, ek: ExperimentKeys, timeout: float, retry_interval: float, have: str):
        """(holder token, the script's state reply) once this waiter's turn came (FIFO);
        ``have``: the state token of the caller's resident algorithm ("" for none)."""
        owner = uuid.uuid4().hex
        poll = retry_interval if retry_interval > 0 else 0.05
        lease_ms = int(max(LEASE_POLLS * poll, LEASE_MIN_S) * 1000)
        deadline = time.monotonic() + timeout
        try:
            while True:
                reply = self.scripts.lock_acquire(
                    lock=ek.lock,
                    holder=ek.lock_holder,
                    queue=ek.lock_queue,
                    leases=ek.lock_leases,
                    log=ek.lock_log,
                    owner=owner,
                    ttl_ms=self.ttl_ms,
                    lease_ms=lease_ms,
                    wake_prefix=ek.lock_wake_prefix,
                    wake_ttl_ms=WAKE_TTL_MS,
                    token=have,
                )
                code = int(reply[0])
                if code == codes.DONE:
                    return reply[1].decode(), reply[3]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockAcquisitionTimeout(
                        f"could not acquire the algorithm lock of experiment {ek.exp_token} "
                        f"within {timeout}s"
                        + ("" if code == codes.WAIT else " (the experiment has no lock record)")
                    )
                # Woken when our turn comes; polling every retry_interval keeps the lease. The
                # head also watches the holder's TTL: a dead holder never releases.
                wait = min(remaining, poll)
                if code == codes.WAIT and int(reply[2]) == 0 and int(reply[1]) > 0:
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
                queue=ek.lock_queue,
                leases=ek.lock_leases,
                holder=ek.lock_holder,
                wake=ek.lock_wake(owner),
                owner=owner,
                wake_prefix=ek.lock_wake_prefix,
                wake_ttl_ms=WAKE_TTL_MS,
            )
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.debug("could not leave the lock queue of %s: %s", ek.exp_token, exc)

    def renew(self, ek: ExperimentKeys, token: str) -> bool:
        renewed = self.scripts.lock_renew(
            holder=ek.lock_holder, holder_token=token, ttl_ms=self.ttl_ms
        )
        return int(renewed) == 1

    def _release(
        self,
        ek: ExperimentKeys,
        token: str,
        write: tuple[str, bytes, str],
        observed: int = 0,
        held_since: float | None = None,
    ) -> int:
        """``write``: (mode, bytes, the state token they apply to), see lock_release.lua.
        ``held_since``: monotonic time the hold began; its duration up to this release
        (state encoding included) goes to ``{P:E}:holds`` (capped list) for ``orion-redis
        metrics``. None records nothing (a forced release)."""
        mode, raw, base = write
        held_ms = None if held_since is None else (time.monotonic() - held_since) * 1000
        return int(
            self.scripts.lock_release(
                lock=ek.lock,
                holder=ek.lock_holder,
                queue=ek.lock_queue,
                leases=ek.lock_leases,
                request=ek.request(new_request_id()),
                backlog=ek.unobserved,
                holds=ek.holds,
                log=ek.lock_log,
                holder_token=token,
                mode=mode,
                state=raw,
                request_ttl=REQUEST_TTL,
                wake_prefix=ek.lock_wake_prefix,
                wake_ttl_ms=WAKE_TTL_MS,
                observed=observed,
                hold_ms="" if held_ms is None else f"{held_ms:.1f}",
                holds_keep=HOLDS_KEEP,
                base_token=base,
                epoch=uuid.uuid4().hex,
            )
        )

    # -- the state: snapshot + log of deltas ---------------------------------------------------
    def _deltas(self, raws, token: str, ek: ExperimentKeys) -> list[dict]:
        """The log entries ``raws`` decoded, checked to be the deltas that end at ``token``,
        in order (a gap or a repeat would give another state: refused, never applied)."""
        with no_gc():
            deltas: list = [load_state(raw, self.secret) for raw in raws]
        last = _version(token)
        expected = list(range(last - len(deltas) + 1, last + 1))
        if [d.get("version") for d in deltas] != expected:
            raise RedisStorageError(
                f"the algorithm state's log of experiment {ek.exp_token} is not the "
                f"sequence of versions {expected[0]}..{expected[-1]} it should be: the "
                "record was changed by something other than orion-track-redis. Restore it "
                "from an export (orion-redis import), or delete the key "
                f"{ek.lock_log} and accept losing the algorithm's latest observations."
            )
        return deltas

    def _whole_state(self, ek: ExperimentKeys):
        info = self.info(ek)
        return None if info is None else info.state

    def _compose(self, snapshot, raws, token: str, ek: ExperimentKeys):
        """The whole state: the snapshot with the log's deltas applied, oldest first."""
        state = self._state(snapshot, ek)
        for delta in self._deltas(raws, token, ek):
            statedelta.apply(state, delta)
        return state

    def _state(self, raw, ek: ExperimentKeys):
        if not raw:
            return None
        with no_gc():  # a state is thousands of objects: GC sweeps would only cost
            return load_state(raw, self.secret)


def state_token(epoch: bytes | None, version: bytes | None) -> str:
    """The token ``<epoch>:<version>`` of a lock record's state, from its two fields as read
    (a record written before versioned state has no epoch: ":0")."""
    return f"{(epoch or b'').decode()}:{int(version or 0)}"


def _version(token: str) -> int:
    return int(token.rpartition(":")[2] or 0)


def _next(token: str) -> str:
    """The token of the state a write on ``token`` makes (a record without an epoch gets one
    from its first write: its holder re-reads it once)."""
    epoch, _, version = token.rpartition(":")
    return f"{epoch}:{int(version or 0) + 1}" if epoch else ""


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
