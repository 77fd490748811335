"""trials.build must give exactly what Trial(**doc) gives; trials.clone must isolate callers."""

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from orion.core.worker.trial import Trial

from orion_track_redis.store import trials

SCALARS = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5), st.booleans()
)
DATES = st.one_of(st.none(), st.datetimes(min_value=datetime.datetime(2000, 1, 1)))


def _value_dicts(types):
    item = st.fixed_dictionaries(
        {"name": st.text(min_size=1, max_size=4), "value": SCALARS},
        optional={"type": st.sampled_from(types)},
    )
    return st.lists(item, max_size=3)


DOCS = st.fixed_dictionaries(
    {"experiment": st.one_of(st.integers(0, 5), st.text(max_size=3))},
    optional={
        "_id": st.text(min_size=1, max_size=6),
        "id": st.text(max_size=6),
        "status": st.sampled_from(Trial.allowed_stati + ("bogus",)),
        "worker": st.one_of(st.none(), st.text(max_size=3)),
        "exp_working_dir": st.one_of(st.none(), st.text(max_size=3)),
        "heartbeat": DATES,
        "submit_time": DATES,
        "start_time": DATES,
        "end_time": DATES,
        "parent": st.one_of(st.none(), st.text(max_size=3)),
        "params": _value_dicts(Trial.Param.allowed_types + ("bogus",)),
        "results": _value_dicts(Trial.Result.allowed_types + ("bogus",)),
        "id_override": st.text(max_size=3),
        "parents": st.just([]),
    },
)


_UNSET = object()


def _state(trial: Trial) -> dict:
    state = {
        slot: getattr(trial, slot, _UNSET)
        for slot in Trial.__slots__
        if slot not in ("_params", "_results")
    }
    for name in ("_params", "_results"):
        state[name] = [
            (type(v), *(getattr(v, s, _UNSET) for s in ("name", "_type", "value")))
            for v in getattr(trial, name)
        ]
    return state


def _outcome(fn, doc):
    try:
        return "ok", _state(fn(dict(doc)))
    except Exception as exc:  # noqa: BLE001 - both sides must fail the same way
        return "error", type(exc)


@settings(max_examples=400, deadline=None)
@given(DOCS)
def test_build_matches_trial_constructor(doc):
    assert _outcome(trials.build, doc) == _outcome(lambda d: Trial(**d), doc)


def test_build_fast_path_is_taken_for_oriented_documents(monkeypatch):
    doc = Trial(
        experiment=1,
        status="completed",
        params=[{"name": "/x", "type": "real", "value": 0.5}],
        results=[{"name": "obj", "type": "objective", "value": 1.0}],
    ).to_dict()
    reference = Trial(**doc)
    monkeypatch.setattr(trials, "_slow", lambda d: pytest.fail("fell back to Trial(**doc)"))
    built = trials.build(doc)
    assert _state(built) == _state(reference)
    assert built.id == reference.id
    assert built.params == {"/x": 0.5} and built.objective.value == 1.0


def test_clone_copies_every_slot_to_its_own_slot():
    """clone() names the slots one by one: a slot Oríon adds, or two slots swapped, fail here."""
    cached = trials.build(
        {
            "experiment": 1,
            "status": "reserved",
            "worker": "w",
            "exp_working_dir": "/d",
            "heartbeat": datetime.datetime(2026, 1, 1),
            "submit_time": datetime.datetime(2026, 1, 2),
            "start_time": datetime.datetime(2026, 1, 3),
            "end_time": datetime.datetime(2026, 1, 4),
            "parent": "p",
            "_id": "override",
            "params": [{"name": "/x", "type": "real", "value": 1}],
            "results": [{"name": "o", "type": "objective", "value": 2}],
        }
    )
    cached._id = "id-slot"
    values = [getattr(cached, slot) for slot in Trial.__slots__]
    assert len({id(v) for v in values}) == len(values), "every slot must hold its own value"
    copy = trials.clone(cached)
    assert _state(copy) == _state(cached)
    assert [
        getattr(copy, slot) for slot in Trial.__slots__ if slot not in ("_params", "_results")
    ] == [v for slot, v in zip(Trial.__slots__, values) if slot not in ("_params", "_results")]


def test_clone_isolates_the_caller_from_the_cached_trial():
    cached = Trial(
        experiment=1, status="reserved", params=[{"name": "/x", "type": "real", "value": 0.5}]
    )
    copy = trials.clone(cached)
    assert _state(copy) == _state(cached) and copy is not cached
    copy.status = "completed"
    copy.results = [Trial.Result(name="obj", type="objective", value=2.0)]
    copy.params  # noqa: B018 - reading builds a fresh dict
    copy._params.append(Trial.Param(name="/y", type="real", value=1.0))
    assert cached.status == "reserved"
    assert cached.results == [] and len(cached._params) == 1


@pytest.mark.parametrize("bad", [{"status": None}, {"params": None}, {"params": [1]}])
def test_odd_documents_keep_orions_behaviour(bad):
    doc = {"experiment": 1, **bad}
    assert _outcome(trials.build, doc) == _outcome(lambda d: Trial(**d), doc)


@settings(max_examples=200, deadline=None)
@given(DOCS)
def test_to_doc_matches_to_dict(doc):
    try:
        trial = Trial(**doc)
        expected = trial.to_dict()
    except Exception:  # noqa: BLE001 - documents Oríon itself cannot turn into a trial
        return
    assert trials.to_doc(trial, trial.id) == expected
    assert list(trials.to_doc(trial, trial.id)) == list(expected)  # same key order
