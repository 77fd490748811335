"""Building and copying Oríon ``Trial`` objects fast (fetch_trials builds thousands).

``Trial(**doc)`` runs a generic ``setattr`` loop, a validating property per field and
``Param(**item)`` per parameter; :func:`build` fills the same slots directly when the document
has the shape Oríon writes (known keys, valid status and value types) and falls back to
``Trial(**doc)`` for anything else, so odd documents keep Oríon's own behaviour and errors.
tests/unit/test_trials.py checks that both give identical objects.
"""

from __future__ import annotations

from orion.core.worker.trial import Trial

_new = object.__new__
_Param, _Result = Trial.Param, Trial.Result
_STATI = frozenset(Trial.allowed_stati)
_PARAM_TYPES = frozenset(_Param.allowed_types) | {None}
_RESULT_TYPES = frozenset(_Result.allowed_types) | {None}
# keys Trial.__init__ turns into plain slot assignments (or drops: id)
_SLOT_KEYS = (
    "experiment",
    "worker",
    "heartbeat",
    "submit_time",
    "start_time",
    "end_time",
    "parent",
)
_KNOWN = frozenset(
    (*_SLOT_KEYS, "_id", "id", "id_override", "status", "exp_working_dir", "params", "results")
)


def _values(cls, items, types):
    """``[cls(**item) for item in items]`` for a list of plain {name, type, value} dicts, or
    None if it is not one (Oríon leaves the slots of missing keys unset, so only complete dicts
    take the fast path). One loop, no call per item: fetch_trials builds thousands."""
    if type(items) not in (list, tuple):
        return None
    out = []
    for item in items:
        if type(item) is not dict or len(item) != 3:
            return None
        try:
            name, kind, value = item["name"], item["type"], item["value"]
        except KeyError:
            return None
        if kind not in types or hasattr(value, "tolist"):
            return None
        obj = _new(cls)
        obj.name, obj._type, obj.value = name, kind, value
        out.append(obj)
    return out


def _slow(doc: dict) -> Trial:
    return Trial(**doc)


def build(doc: dict) -> Trial:
    """``Trial(**doc)``, faster for documents of the usual shape."""
    status = doc.get("status", "new")
    if not doc.keys() <= _KNOWN or status not in _STATI or "id_override" in doc:
        return _slow(doc)
    params = _values(_Param, doc.get("params", ()), _PARAM_TYPES)
    results = _values(_Result, doc.get("results", ()), _RESULT_TYPES)
    if params is None or results is None:
        return _slow(doc)
    trial = _new(Trial)
    get = doc.get
    # one statement per slot, not a setattr loop: 3x faster (fetch_trials builds thousands)
    trial.experiment, trial.worker, trial.heartbeat = (
        get("experiment"),
        get("worker"),
        get("heartbeat"),
    )
    trial.submit_time, trial.start_time, trial.end_time = (
        get("submit_time"),
        get("start_time"),
        get("end_time"),
    )
    trial.parent = get("parent")
    trial._id = None
    trial._status = status
    trial._exp_working_dir = get("exp_working_dir")
    trial.id_override = get("_id")
    trial._params = params
    trial._results = results
    return trial


def clone(trial: Trial) -> Trial:
    """A copy of a cached trial for a caller who may change it.

    The slots and the params/results *lists* are copied; the Param/Result objects inside are
    shared (Oríon never changes them in place: it replaces trial.results / builds new trials)."""
    new = _new(Trial)
    # every slot of Trial.__slots__, one statement each: 3x faster than a getattr/setattr loop
    # (tests/unit/test_trials.py fails if Oríon adds a slot)
    new.experiment, new._id, new._status = trial.experiment, trial._id, trial._status
    new.worker, new._exp_working_dir = trial.worker, trial._exp_working_dir
    new.heartbeat, new.submit_time = trial.heartbeat, trial.submit_time
    new.start_time, new.end_time = trial.start_time, trial.end_time
    new.parent, new.id_override = trial.parent, trial.id_override
    new._params = trial._params[:]
    new._results = trial._results[:]
    return new


def with_status(trial: Trial, status: str) -> Trial:
    """A copy of ``trial`` as Oríon's Producer.observe gets it after a status change."""
    observed = clone(trial)
    observed.status = status
    return observed


def sort_key(trial):
    # the same key as Legacy: trials without submit_time first
    return 0 if trial.submit_time is None else trial.submit_time


def to_doc(trial: Trial, trial_id: str) -> dict:
    """``trial.to_dict()`` given the trial's id: to_dict hashes the params twice to get it."""
    doc = {
        "experiment": trial.experiment,
        "id": trial_id,
        "status": trial._status,
        "worker": trial.worker,
        "exp_working_dir": trial._exp_working_dir,
        "heartbeat": trial.heartbeat,
        "submit_time": trial.submit_time,
        "start_time": trial.start_time,
        "end_time": trial.end_time,
        "results": [{"name": r.name, "type": r._type, "value": r.value} for r in trial._results],
        "params": [{"name": p.name, "type": p._type, "value": p.value} for p in trial._params],
        "parent": trial.parent,
    }
    if trial.id_override:
        doc["_id"] = trial.id_override
    return doc
