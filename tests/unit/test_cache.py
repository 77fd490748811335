"""The client-side trial cache of fetch_trials: always equal to a fresh read, whoever writes."""

from __future__ import annotations

import multiprocessing
import random
import re
import uuid

import pytest
from orion.core.worker.trial import Trial

from helpers import Exp, create_experiment, make_trial
from orion_track_redis import CorruptData, Redis


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
    cold = Redis(uri=storage.backend.opts.url, prefix=storage.backend.opts.prefix)
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
                actor.register_trial(
                    make_trial(exp_id, x=float(rng.randrange(40)), seconds=rng.randrange(100))
                )
            except Exception:  # duplicate ids are part of the game
                pass
        elif op < 0.6:
            actor.reserve_trial(Exp(exp_id))
        elif op < 0.8:
            trial = rng.choice(trials)
            actor.update_trials(
                uid=exp_id,
                where={"id": trial.id},
                status=rng.choice(["completed", "broken", "interrupted"]),
            )
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
    procs = [
        ctx.Process(target=_write_some, args=(redis_server.url, prefix, exp_id, seed))
        for seed in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    seen = _seen(reader, exp_id)
    assert seen == _fresh(reader, exp_id)
    assert not any(t["status"] == "broken" for t in seen)
    assert sum(t["status"] == "completed" for t in seen) == reader.count_completed_trials(
        Exp(exp_id)
    )


# -- large fetches: chunks streamed (parsed while Redis assembles the next) -----------------------
@pytest.fixture(scope="module")
def big(redis_server):
    """2,500 trials (3 fetch chunks) in one experiment, written once for the module."""
    prefix = f"cache-big-{uuid.uuid4().hex[:8]}"
    writer = Redis(uri=redis_server.url, prefix=prefix)
    exp_id = create_experiment(writer)
    for i in range(2500):
        writer.register_trial(
            make_trial(
                exp_id, x=float(i), seconds=i % 7, status=("new", "completed", "broken")[i % 3]
            )
        )
    return redis_server, prefix, exp_id


def _streams(monkeypatch) -> list:
    """Record the replies-were-streamed outcomes of storage.run_streamed."""
    import orion_track_redis.store.reads as cache_module

    outcomes = []
    real = cache_module.run_streamed

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        outcomes.append(result is not None)
        return result

    monkeypatch.setattr(cache_module, "run_streamed", spy)
    return outcomes


def test_streamed_fetch_equals_the_plain_path(big, monkeypatch):
    server, prefix, exp_id = big
    outcomes = _streams(monkeypatch)
    streamed = [t.to_dict() for t in Redis(uri=server.url, prefix=prefix).fetch_trials(uid=exp_id)]
    assert outcomes == [True]
    import orion_track_redis.store.reads as cache_module

    monkeypatch.setattr(cache_module, "run_streamed", lambda *a, **k: None)  # plain path
    plain = [t.to_dict() for t in Redis(uri=server.url, prefix=prefix).fetch_trials(uid=exp_id)]
    assert len(streamed) == 2500 and streamed == plain
    assert [t["params"][0]["value"] for t in streamed[:3]] == [0.0, 7.0, 14.0]  # by submit_time


@pytest.mark.parametrize("window", [1, 2, 100])
def test_streamed_fetch_with_any_number_of_calls_in_flight(big, monkeypatch, window):
    """The streamed read keeps STREAM_WINDOW calls in flight and sends the next one per reply
    (all at once stalled on a full socket): any window gives the plain path's trials."""
    import orion_track_redis.store.scripts as scripts_module

    server, prefix, exp_id = big
    expected = [t.to_dict() for t in Redis(uri=server.url, prefix=prefix).fetch_trials(uid=exp_id)]
    monkeypatch.setattr(scripts_module, "STREAM_WINDOW", window)
    outcomes = _streams(monkeypatch)
    sent = []
    real_stream = scripts_module._stream_once

    def counting(client, script, key_lists, process, meanwhile):
        sent.append(len(key_lists))
        return real_stream(client, script, key_lists, process, meanwhile)

    monkeypatch.setattr(scripts_module, "_stream_once", counting)
    got = [t.to_dict() for t in Redis(uri=server.url, prefix=prefix).fetch_trials(uid=exp_id)]
    from orion_track_redis.store.reads import chunks as _chunks

    assert outcomes == [True]
    assert sent == [len(_chunks(list(range(2500))))] == [9]  # > windows 1 and 2, < 100
    assert got == expected


def test_streamed_fetch_reloads_the_script_after_script_flush(big, monkeypatch):
    server, prefix, exp_id = big
    expected = [t.to_dict() for t in Redis(uri=server.url, prefix=prefix).fetch_trials(uid=exp_id)]
    server.client().script_flush()  # NOSCRIPT for the pipelined EVALSHAs
    outcomes = _streams(monkeypatch)
    storage = Redis(uri=server.url, prefix=prefix)
    assert [t.to_dict() for t in storage.fetch_trials(uid=exp_id)] == expected
    assert outcomes == [True]  # loaded the script again, then streamed


def test_corrupt_trial_in_a_streamed_chunk_is_named_and_the_connection_recovers(big):
    server, prefix, exp_id = big
    storage = Redis(uri=server.url, prefix=prefix)
    ek = storage.backend.experiment_keys(exp_id)
    victim = storage.client.zrange(ek.all, 1500, 1500)[0].decode()  # in a later chunk
    key = ek.trial_prefix + victim
    good = storage.client.hget(key, "worker")
    storage.client.hset(key, "worker", b"{not json")
    try:
        with pytest.raises(CorruptData, match=re.escape(key)):
            storage.fetch_trials(uid=exp_id)
    finally:
        storage.client.hset(key, "worker", good)
    # the streaming connection was dropped with its unread replies: the same storage reads on
    assert len(storage.fetch_trials(uid=exp_id)) == 2500
    assert storage.count_completed_trials(Exp(exp_id)) == 833


def test_streamed_fetch_falls_back_when_the_connection_drops(big, monkeypatch):
    import redis

    import orion_track_redis.store.scripts as scripts_module

    server, prefix, exp_id = big
    expected = [t.to_dict() for t in Redis(uri=server.url, prefix=prefix).fetch_trials(uid=exp_id)]
    storage = Redis(uri=server.url, prefix=prefix)
    outcomes = _streams(monkeypatch)
    streamed_reads = []  # None outside _stream_once
    real_read, real_stream = redis.connection.Connection.read_response, scripts_module._stream_once

    def read_response(self, *args, **kwargs):
        if streamed_reads and streamed_reads[-1] is not None:
            streamed_reads.append(len(streamed_reads))
            if len(streamed_reads) == 3:  # the second chunk's reply
                raise redis.exceptions.ConnectionError("simulated: connection reset mid-stream")
        return real_read(self, *args, **kwargs)

    def stream_once(*args):
        streamed_reads.append(0)
        try:
            return real_stream(*args)
        finally:
            streamed_reads.append(None)

    monkeypatch.setattr(redis.connection.Connection, "read_response", read_response)
    monkeypatch.setattr(scripts_module, "_stream_once", stream_once)
    assert [t.to_dict() for t in storage.fetch_trials(uid=exp_id)] == expected
    assert outcomes == [False] and streamed_reads[:3] == [0, 1, 2]  # plain path took over


@pytest.mark.parametrize("n", [0, 1, 149, 150, 151, 599, 600, 601, 1000, 4321, 10_000, 100_000])
def test_fetch_chunks_cover_every_token_once_with_a_small_last_chunk(n):
    from orion_track_redis.store.reads import FETCH_CHUNK, STREAM_CHUNK_MIN
    from orion_track_redis.store.reads import chunks as _chunks

    tokens = [f"t{i}" for i in range(n)]
    chunks = _chunks(tokens)
    assert [t for chunk in chunks for t in chunk] == tokens
    assert all(chunk and len(chunk) <= FETCH_CHUNK for chunk in chunks)
    if n >= 4 * STREAM_CHUNK_MIN:  # streamed: Redis and this process overlap...
        assert len(chunks) >= 4
        assert len(chunks[-1]) == STREAM_CHUNK_MIN  # ...and little is left after Redis is done
    elif n > STREAM_CHUNK_MIN:
        assert len(chunks[-1]) == STREAM_CHUNK_MIN
    else:
        assert len(chunks) == (1 if n else 0)


def test_where_queries_answered_from_the_cache_match_legacy(pair):
    """Documents for non-indexed ``where`` queries are rebuilt from the cached trials: they
    must select what Legacy's stored documents select, also after other writers' updates."""
    import datetime

    from orion.storage.legacy import Legacy

    reader, writer = pair
    legacy = Legacy(database={"type": "EphemeralDB"})
    exp_id = create_experiment(writer)
    legacy_exp = create_experiment(legacy)
    sides = ((writer, exp_id), (legacy, legacy_exp))
    for i in range(12):
        for storage, uid in sides:
            storage.register_trial(
                make_trial(
                    uid, x=float(i), seconds=i % 4, status=("new", "reserved", "completed")[i % 3]
                )
            )
    assert len(reader.fetch_trials(uid=exp_id)) == 12  # warm cache, then others write
    base = datetime.datetime(2026, 1, 1)
    for storage, uid in sides:
        trials = sorted(storage.fetch_trials(uid=uid), key=lambda t: t.params["/x"])
        storage.update_trial(trials[1], worker="w1", end_time=base)
        storage.update_trial(trials[4], exp_working_dir="/tmp/w", parent="p")
        trials[7].results = [Trial.Result(name="obj", type="objective", value=0.5)]
        storage.push_trial_results(trials[7])
        storage.set_trial_status(trials[9], "broken", was="new")
        storage.delete_trials(uid=uid, where={"id": trials[11].id})
    queries = [
        {"worker": "w1"},
        {"worker": None},
        {"status": {"$ne": "new"}},
        {"end_time": {"$gte": base}},
        {"exp_working_dir": "/tmp/w", "parent": "p"},
        {"results": []},
        {"params.value": 2.0},
        {"submit_time": {"$lte": base}},
        {"id": {"$in": [t.id for t in writer.fetch_trials(uid=exp_id)][:3]}},
    ]
    for where in queries:
        ours = sorted(t.params["/x"] for t in reader.fetch_trials(uid=exp_id, where=where))
        theirs = sorted(t.params["/x"] for t in legacy.fetch_trials(uid=legacy_exp, where=where))
        assert ours == theirs, where
    assert sorted(
        t.params["/x"] for t in reader.fetch_trials(uid=exp_id, where={"status": {"$ne": "new"}})
    ) == [1.0, 2.0, 4.0, 5.0, 7.0, 8.0, 9.0, 10.0]
