"""Oríon develop's storage protocol, beside 0.2.7's: ``DevelopProtocol``, a base of ``Redis``.

Oríon's ``develop`` branch (unreleased after 0.2.7; ``orion db dump``/``load`` use all of it):

- ``write_algorithm_lock(experiment_id, algorithm_config, locked=0, state=None,
  heartbeat=None)`` replaces ``initialize_algorithm_lock`` (which ``Redis`` keeps for 0.2.7);
- ``create_experiment(config, algo_locked=0, algo_state=None, algo_heartbeat=None)``: the lock's
  initial fields (``Redis.create_experiment`` passes them to :meth:`_init_lock`);
- ``delete_benchmark(query)``;
- ``LockedAlgorithmState(state, configuration, locked=True, heartbeat=None)``: the lock's
  heartbeat (:func:`locked_state` builds one with either Oríon's class).

The lock record (store/lock.py, ``{P:E}:lock``) gets one more field, ``heartbeat``: the JSON
datetime
(codec) it was written with, else the writer's UTC clock, as Legacy's. The heartbeat read back is
the later of that and ``acquired`` (server time of the last acquisition, lock_acquire.lua), as
Legacy's moves at each acquisition. Like Legacy's, whose write inserts a second document that
reads never reach, a write leaves an existing record as it is.
"""

from __future__ import annotations

import datetime
import inspect
from typing import TYPE_CHECKING, Any

from orion.storage.base import LockedAlgorithmState

from orion_track_redis import codec

if TYPE_CHECKING:
    from orion_track_redis.keys import ExperimentKeys
    from orion_track_redis.store.backend import Backend
    from orion_track_redis.store.lock import LockClient

HEARTBEAT = "heartbeat"  # field of the lock record

# develop's class takes the heartbeat; 0.2.7's does not (its instances get the attribute)
_TAKES_HEARTBEAT = "heartbeat" in inspect.signature(LockedAlgorithmState.__init__).parameters


def locked_state(state, configuration, locked, heartbeat) -> LockedAlgorithmState:
    """A ``LockedAlgorithmState`` with a ``heartbeat`` attribute, whichever Oríon is installed."""
    if _TAKES_HEARTBEAT:
        return LockedAlgorithmState(state, configuration, locked, heartbeat=heartbeat)
    info = LockedAlgorithmState(state, configuration, locked)
    info.heartbeat = heartbeat
    return info


def heartbeat_of(acquired: bytes | None, written: bytes | None, where: str) -> Any:
    """The later of the last acquisition (epoch seconds) and the heartbeat written."""
    stamp = codec.loads(written, where) if written else None
    if not acquired:
        return stamp
    seconds = float(acquired)
    given = codec.epoch(stamp)
    if given is not None and given >= seconds:
        return stamp
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).replace(tzinfo=None)


class DevelopProtocol:
    """What Oríon develop adds to the protocol, on ``Redis``'s lock client and experiments."""

    if TYPE_CHECKING:  # provided by storage.Redis
        backend: Backend

        @property
        def client(self) -> Any: ...

        @property
        def lock(self) -> LockClient: ...

    def _init_lock(
        self, ek: ExperimentKeys, configuration, state=None, locked=False, heartbeat=None
    ) -> int:
        """``LockClient.initialize`` plus the heartbeat; 1 if created, 0 if it existed."""
        created = self.lock.initialize(ek, configuration, state=state, locked=locked)
        if created:  # HSETNX: a first acquisition may already have stamped it
            stamp = codec.utcnow() if heartbeat is None else heartbeat
            self.client.hsetnx(ek.lock, HEARTBEAT, codec.dumps(stamp))
        return created

    def write_algorithm_lock(
        self, experiment_id, algorithm_config, locked=0, state=None, heartbeat=None
    ) -> int:
        """Create the lock record if absent (held when ``locked``: the hold expires after
        ``lock_ttl`` like any other); returns 1 if created, 0 if it existed (left as it is)."""
        with self.backend.guard():
            return self._init_lock(
                self.backend.experiment_keys(experiment_id),
                algorithm_config,
                state,
                bool(locked),
                heartbeat,
            )

    def _lock_info(self, ek: ExperimentKeys) -> LockedAlgorithmState | None:
        """``LockClient.info`` with the lock's heartbeat."""
        info = self.lock.info(ek)
        if info is None:
            return None
        acquired, written = self.client.hmget(ek.lock, "acquired", HEARTBEAT)
        heartbeat = heartbeat_of(acquired, written, ek.lock)
        return locked_state(info.state, info.configuration, info.locked, heartbeat)

    def delete_benchmark(self, query: dict) -> int:
        """Delete the benchmarks matching ``query``; returns the count deleted."""
        with self.backend.guard():
            docs = self.backend.experiments.fetch_benchmarks(query)
            if not docs:
                return 0
            names = [codec.dumps(doc.get("name")) for doc in docs]
            return int(self.client.hdel(self.backend.keys.benchmarks, *names))
