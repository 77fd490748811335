"""Oríon's per-step reads that grow with the experiment, answered from the status indexes.

Oríon 0.2.7's ``Experiment.is_done`` (twice per ``suggest``, and in every worker loop) fetches
every trial of the experiment's EVC tree to count two numbers: the completed trials and the
pending ones (new, reserved, interrupted); ~55-63 ms per call at 5,000 trials, more than the
hold itself once the state is versioned (state/delta.py). On this backend each status has its own
index, so when the tree is the experiment alone (no EVC parent, no children: Oríon's node looks
them up once per process, as its own is_done does) the counts are two ZCARD-sums in one round
trip, whatever the experiment's size. Same answer: the same counts at the time of the read, and
``algorithm.is_done`` asked only when Oríon asks it. With a parent or children, and for every
other storage, Oríon's own property runs.

Installed with the hold accelerator (accel.install: verified Oríon only) and active for a
storage with ``accelerated_holds`` (off with ``accelerate=false`` or ORION_REDIS_ACCELERATE=0).
``tests/protocol/test_stepreads.py`` is its oracle against unmodified Oríon.
"""

from __future__ import annotations

PENDING = ("new", "reserved", "interrupted")  # Oríon's is_done counts these as pending


def patch() -> None:
    from orion.core.worker.experiment import Experiment

    oriones = Experiment.is_done

    def is_done(self):
        storage = self._storage
        if not getattr(storage, "accelerated_holds", False) or not alone(self):
            return oriones.fget(self)
        completed, *pending = storage.count_by_status(self, ("completed", *PENDING))
        return completed >= self.max_trials or (self.algorithm.is_done and sum(pending) == 0)

    is_done.__wrapped_by_orion_track_redis__ = oriones  # type: ignore[attr-defined]
    Experiment.is_done = property(is_done, doc=oriones.__doc__)


def alone(experiment) -> bool:
    """True when the experiment's EVC tree is itself: no parent, no children."""
    node = getattr(experiment, "_node", None)
    return node is not None and node.parent is None and not node.children
