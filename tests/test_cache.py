"""The client-side trial cache of fetch_trials: always equal to a fresh read, whoever writes."""
from __future__ import annotations

import multiprocessing
import random
import uuid

import pytest
from orion.core.worker.trial import Trial

from helpers import Exp, create_experiment, make_trial
from orion_track_redis import Redis


@pytest.fixture(params=["fakeredis", "redis"])
def pair(request):
    """Two storages on the same data: a reader with a warm cache and another writer."""
    prefix = f"cache-{uuid.uuid4().hex[:8]}"
    if request.param == "fakeredis":
        uri = f"fakeredis://{prefix}"
    else:
        uri = request.getfixturevalue("redis_server").url
    return Redis(uri=uri, prefix=prefix), Redis(uri=uri, prefix=prefix)


def _fresh(storage, exp_id):
    """What a cold reader sees: a new storage object has no cache."""
    cold = Redis(uri=storage._opts.url, prefix=storage._opts.prefix)
    return [t.to_dict() for t in cold.fetch_trials(uid=exp_id)]


def _seen(storage, exp_id):
    return [t.to_dict() for t in storage.fetch_trials(uid=exp_id)]


def test_other_writers_are_seen(pair):
    reader, writer = pair
    exp_id = create_experiment(writer)
    assert _seen(reader, exp_id) == []
    first = writer.register_trial(make_trial(exp_id, x=1.0, seconds=1))
    assert [t["params"][0]["value"] for t in _seen(reader, exp_id)] == [1.0]
    writer.set_trial_status(first, "reserved")
    assert _seen(reader, exp_id)[0]["status"] == "reserved"
    writer.register_trial(make_trial(exp_id, x=2.0, seconds=2))
    writer.delete_trials(uid=exp_id, where={"id": first.id})
    assert [t["params"][0]["value"] for t in _seen(reader, exp_id)] == [2.0]
    writer.delete_trials(uid=exp_id)
    assert _seen(reader, exp_id) == []
    again = writer.register_trial(make_trial(exp_id, x=1.0, seconds=1))  # same id as `first`
    (doc,) = _seen(reader, exp_id)
    assert doc["id"] == again.id and doc["status"] == "new"


def test_callers_cannot_corrupt_the_cache(pair):
    reader, writer = pair
    exp_id = create_experiment(writer)
    writer.register_trial(make_trial(exp_id, x=1.0))
    (mine,) = reader.fetch_trials(uid=exp_id)
    # what Oríon and its client API do to fetched trials: set fields, extend/replace lists
    # (Param/Result objects are shared with the cache: Oríon never changes one in place)
    mine.status = "broken"
    mine.worker = "me"
    mine._params.append(mine._params[0])
    mine.results += [Trial.Result(name="o", type="objective", value=1.0)]
    (again,) = reader.fetch_trials(uid=exp_id)
    assert again.status == "new" and again.worker is None
    assert again.params == {"/x": 1.0} and again.results == []


def test_random_writes_match_a_cold_read(pair):
    reader, writer = pair
    rng = random.Random(7)
    exp_id = create_experiment(writer)
    for step in range(150):
        actor = rng.choice((reader, writer))  # the reader writes too: its own cache must follow
        trials = actor.fetch_trials(uid=exp_id)
        op = rng.random()
        if op < 0.4 or not trials:
            try:
                actor.register_trial(make_trial(exp_id, x=float(rng.randrange(40)),
                                                seconds=rng.randrange(100)))
            except Exception:  # duplicate ids are part of the game
                pass
        elif op < 0.6:
            actor.reserve_trial(Exp(exp_id))
        elif op < 0.8:
            trial = rng.choice(trials)
            actor.update_trials(uid=exp_id, where={"id": trial.id},
                                status=rng.choice(["completed", "broken", "interrupted"]))
        else:
            actor.delete_trials(uid=exp_id, where={"id": rng.choice(trials).id})
        if step % 10 == 0:
            assert _seen(reader, exp_id) == _fresh(reader, exp_id)
    assert _seen(reader, exp_id) == _fresh(reader, exp_id)
    assert _seen(writer, exp_id) == _fresh(writer, exp_id)


def _write_some(uri, prefix, exp_id, seed):
    storage = Redis(uri=uri, prefix=prefix)
    rng = random.Random(seed)
    for _ in range(40):
        trial = storage.reserve_trial(Exp(exp_id))
        if trial is None:
            break
        storage.set_trial_status(trial, rng.choice(["completed", "broken"]))
    storage.delete_trials(uid=exp_id, where={"status": "broken"})


@pytest.mark.slow
def test_cache_follows_other_processes(redis_server):
    prefix = f"cache-mp-{uuid.uuid4().hex[:8]}"
    reader = Redis(uri=redis_server.url, prefix=prefix)
    exp_id = create_experiment(reader)
    for i in range(200):
        reader.register_trial(make_trial(exp_id, x=float(i)))
    assert len(reader.fetch_trials(uid=exp_id)) == 200  # warm the cache
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_some, args=(redis_server.url, prefix, exp_id, seed))
             for seed in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    seen = _seen(reader, exp_id)
    assert seen == _fresh(reader, exp_id)
    assert not any(t["status"] == "broken" for t in seen)
    assert sum(t["status"] == "completed" for t in seen) == reader.count_completed_trials(
        Exp(exp_id))
