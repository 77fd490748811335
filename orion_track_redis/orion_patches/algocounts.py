"""Oríon's algorithm ``is_done`` counted as the registry changes, not recounted per call.

``BaseAlgorithm.is_done`` (Oríon 0.2.7) asks ``has_completed_max_trials``, which walks the
whole registry to count completed trials (at the maximum fidelity, if there is one), and
``has_suggested_all_possible_values``, which walks it again when the space has a fidelity. A
wrapper asks it of its own registry and then of the wrapped algorithm's: a hunt step asks it
~7 times, each O(trials) (~40 % of a step at 10,000 trials once the hold is versioned).

For registries of a resident algorithm of this backend (tracked: a copy-free hold installed
their entries, orion_patches/hold.py), those counts are kept per registry: computed once when first
asked,
then changed by each ``register`` by what it replaced and what it stored (a registry replaces
entries and never changes a stored trial in place, state/delta.py), and by each delta a hold
applies in place (:func:`adjust`); a registry whose entries are installed anew (``set_state``
or a hold adopting a whole state) starts over. Every
other registry, and every algorithm whose registry is not tracked, runs Oríon's own walk.

Same answers: the counted predicates are Oríon's own (status "completed"; the fidelity value
flattened from the params compared with the fidelity dimension's upper bound).
``tests/protocol/test_statedelta.py`` compares them with Oríon's walk after every step of its
oracle.
"""

from __future__ import annotations

_COUNTS = "_orion_redis_counts"  # attribute of a tracked Registry: {key: count}


def track(registry) -> None:
    """Count ``registry`` from now on (its entries were just installed: counts start over)."""
    registry.__dict__[_COUNTS] = {}


def keep(registry) -> None:
    """Count ``registry`` from now on, keeping its counts if it is counted already (a registry
    only ``register`` changed since: its counts are current)."""
    registry.__dict__.setdefault(_COUNTS, {})


def adjust(registry, changed: dict, gone) -> None:
    """``registry``'s entries are about to be replaced by ``changed`` and lose ``gone`` (a
    hold applying deltas in place): its counts follow, so that they need no recount."""
    counts = registry.__dict__.get(_COUNTS)
    if not counts:
        return
    old = registry._trials
    for key in counts:
        counts[key] += sum(_counted(key, t) - _counted(key, old.get(k)) for k, t in changed.items())
        counts[key] -= sum(_counted(key, old.get(k)) for k in gone)


def same_counts(registry, source) -> None:
    """``registry``'s entries were just made a copy of ``source``'s: so are its counts."""
    registry.__dict__[_COUNTS] = dict(source.__dict__.get(_COUNTS) or {})


def untrack(registry) -> None:
    registry.__dict__.pop(_COUNTS, None)


def patch() -> None:
    from orion.algo.base import BaseAlgorithm
    from orion.algo.base.registry import Registry, _get_id

    own_register = Registry.register
    own_completed = BaseAlgorithm.has_completed_max_trials
    own_all_values = BaseAlgorithm.has_suggested_all_possible_values

    def register(self, trial):
        counts = self.__dict__.get(_COUNTS)
        if not counts:
            return own_register(self, trial)
        trial_id = _get_id(trial)
        old = self._trials.get(trial_id)
        result = own_register(self, trial)
        new = self._trials.get(trial_id)
        for key in counts:
            counts[key] += _counted(key, new) - _counted(key, old)
        return result

    def has_completed_max_trials(self):
        if self.max_trials is None or _COUNTS not in self.registry.__dict__:
            return own_completed.fget(self)
        return _count(self, "completed") >= self.max_trials

    def has_suggested_all_possible_values(self):
        if self.fidelity_index is None or _COUNTS not in self.registry.__dict__:
            return own_all_values(self)
        return _count(self, "top") >= self.space.cardinality

    for own, new in (
        (own_register, register),
        (own_all_values, has_suggested_all_possible_values),
        (own_completed.fget, has_completed_max_trials),
    ):
        new.__doc__ = own.__doc__
        setattr(new, "__wrapped_by_orion_track_redis__", own)  # noqa: B010 - a marker, for tests
    Registry.register = register
    BaseAlgorithm.has_completed_max_trials = property(
        has_completed_max_trials, doc=own_completed.__doc__
    )
    BaseAlgorithm.has_suggested_all_possible_values = has_suggested_all_possible_values


def _count(algorithm, kind: str) -> int:
    index = algorithm.fidelity_index
    top = None if index is None else algorithm.space[index].interval()[1]
    key = (kind, index, top)
    counts = algorithm.registry.__dict__[_COUNTS]
    if key not in counts:
        counts[key] = sum(_counted(key, trial) for trial in algorithm.registry)
    return counts[key]


def _counted(key, trial) -> int:
    """1 if ``trial`` counts for ``key`` (kind, fidelity index, its upper bound), else 0."""
    if trial is None:
        return 0
    kind, index, top = key
    if kind == "completed" and trial.status != "completed":
        return 0
    if index is None:
        return 1
    from orion.core.utils.flatten import flatten

    return int(flatten(trial.params)[index] >= top)
