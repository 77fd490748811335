"""lua/include/trial_json.lua (the JSON the fetch scripts build from a trial hash) must give the
document codec.decode_trial_fields gives in Python, whatever the order of the hash's fields:
its fast path takes the layout encode_trial writes, its slow path any other (elements out of
order, lists interleaved, gaps left by a partial write)."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_storage
from helpers import create_experiment, make_trial
from orion_track_redis import codec
from orion_track_redis.keys import escape

T0 = datetime.datetime(2026, 12, 3, 12, 0, 0, 123456)


def _doc(n_params: int, n_results: int, **extra) -> dict:
    doc = {
        "experiment": 1,
        "id": "a" * 32,
        "status": "completed",
        "worker": None,
        "heartbeat": T0,
        "submit_time": T0,
        "parent": None,
        "params": [{"name": f"/p{i}", "type": "real", "value": i / 3} for i in range(n_params)],
        "results": [
            {"name": f"r{i}", "type": "objective" if i == 0 else "statistic", "value": i + 0.5}
            for i in range(n_results)
        ],
    }
    doc.update(extra)
    return doc


@pytest.fixture(params=("fakeredis", "redis"))
def backend(request):
    storage = make_storage(request.param, request)
    yield storage
    storage.client.close()


def _write(storage, token: str, pairs: list) -> str:
    """A trial hash with exactly these fields, in this order (a listpack keeps it)."""
    key = storage.backend.experiment_keys(1).trial_prefix + token
    storage.client.delete(key)
    for field, value in zip(pairs[::2], pairs[1::2]):
        storage.client.hset(key, field, value)
    return key


def _fetched(storage, keys: list) -> list[dict]:
    ek = storage.backend.experiment_keys(1)
    reply = storage.scripts.fetch_docs(trials=keys)
    return storage.backend.reads._decode_docs(
        ek, [reply], [k[len(ek.trial_prefix) :] for k in keys]
    )


def _reference(storage, key: str) -> dict:
    return codec.decode_trial_fields(storage.client.hgetall(key), key)


def test_the_usual_layout_round_trips(backend):
    docs = [_doc(2, 1), _doc(0, 0), _doc(5, 3, _id="other"), _doc(1, 0, results="text")]
    keys = []
    for i, doc in enumerate(docs):
        pairs, _ = codec.encode_trial(doc)
        keys.append(_write(backend, f"t{i}", pairs))
    got = _fetched(backend, keys)
    expected = [{**d, "_id": d.get("_id", d["id"])} for d in docs]
    assert got == expected
    assert [_reference(backend, k) for k in keys] == expected


def test_a_hash_of_list_elements_only_and_a_missing_hash(backend):
    key = _write(
        backend,
        "lists-only",
        ["results#1", '"b"\t"statistic"\t2', "results#0", '"a"\t"objective"\t1.5'],
    )
    missing = backend.backend.experiment_keys(1).trial_prefix + "nope"
    got = _fetched(backend, [missing, key, missing])
    assert got == [_reference(backend, key)]
    assert got[0] == {
        "results": [
            {"name": "a", "type": "objective", "value": 1.5},
            {"name": "b", "type": "statistic", "value": 2},
        ]
    }


def test_contiguous_elements_out_of_order(backend):
    key = _write(
        backend,
        "swap",
        [
            "id",
            '"x"',
            "params#0",
            '"/a"\t"real"\t1',
            "params#2",
            '"/c"\t"real"\t3',
            "params#1",
            '"/b"\t"real"\t2',
        ],
    )
    got = _fetched(backend, [key])
    assert [p["name"] for p in got[0]["params"]] == ["/a", "/b", "/c"]
    assert got == [_reference(backend, key)]


def test_a_hash_sign_without_an_index_is_a_plain_field(backend):
    key = _write(backend, "odd", ["id", '"x"', "odd#name", "3", "params#0", '"/a"\t"real"\t1'])
    assert _fetched(backend, [key]) == [
        {
            "id": "x",
            "odd#name": 3,
            "_id": "x",
            "params": [{"name": "/a", "type": "real", "value": 1}],
        }
    ]


@st.composite
def _layouts(draw):
    """encode_trial's pairs of a random trial, shuffled, some list elements dropped."""
    doc = _doc(draw(st.integers(0, 4)), draw(st.integers(0, 3)))
    pairs, _ = codec.encode_trial(doc)
    fields = list(zip(pairs[::2], pairs[1::2]))
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    else:  # each list's elements kept together, in any order (the fast path's edge)
        blocks = {}
        for field, value in fields:
            blocks.setdefault(field.partition("#")[0], []).append((field, value))
        fields = [
            f
            for block in draw(st.permutations(list(blocks.values())))
            for f in draw(st.permutations(block))
        ]
    dropped = draw(
        st.sets(
            st.sampled_from([f for f, _ in fields if "#" in f])
            if any("#" in f for f, _ in fields)
            else st.nothing()
        )
    )
    return [x for f, v in fields if f not in dropped for x in (f, v)]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(layouts=st.lists(_layouts(), min_size=1, max_size=4))
def test_any_field_order_gives_the_python_decoding(backend, layouts):
    keys = [_write(backend, f"h{i}", pairs) for i, pairs in enumerate(layouts)]
    assert _fetched(backend, keys) == [_reference(backend, k) for k in keys]


def test_fetch_changes_takes_the_same_code(backend):
    """A cached reader refreshes through fetch_changes.lua: an out-of-order hash written
    behind its back (with the change logged as a write would) reads as Python decodes it."""
    exp_id = create_experiment(backend)
    trial = make_trial(exp_id, x=1.0)
    backend.register_trial(trial)
    assert len(backend.fetch_trials(uid=exp_id)) == 1  # the cache is warm
    ek = backend.backend.experiment_keys(exp_id)
    key = ek.trial_prefix + escape(trial.id)
    fields = backend.client.hgetall(key)
    fields[b"results#1"] = b'"b"\t"statistic"\t2'
    fields[b"results#0"] = b'"a"\t"objective"\t1.5'
    backend.client.delete(key)
    for field in sorted(fields, reverse=True):  # a layout the fast path refuses
        backend.client.hset(key, field, fields[field])
    backend.client.zadd(ek.changed, {escape(trial.id): backend.client.incr(ek.rev)})
    (got,) = backend.fetch_trials(uid=exp_id)
    assert [r.to_dict() for r in got.results] == [
        {"name": "a", "type": "objective", "value": 1.5},
        {"name": "b", "type": "statistic", "value": 2},
    ]
    assert got.to_dict()["_id"] == trial.id
    doc = _reference(backend, key)
    assert json.loads(json.dumps(got.to_dict()["params"])) == doc["params"]
