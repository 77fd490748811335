"""Batched observation (orion_patches/hold.py, store/lock.py, lua/observe_later.lua) against
unmodified Oríon.

With batching, a completion (or a release) records the trial in the experiment's backlog
instead of taking the algorithm lock; the next hold observes the backlog, oldest first, before
it suggests. The oracle runs the seeded two-worker schedules of ``test_accel`` in two worlds,
one batched (with copy-free holds), one running Oríon's own code (no accelerator, no
batching). After every step both must have seen the same suggestions (or the same refusal)
and stored the same trials; the algorithm states must be equal whenever the batched world's
backlog is empty (right after a produce), and after a final flush. The oracle is shown to
fail when the hold skips the backlog or observes it in the wrong order.
"""

from __future__ import annotations

import logging
import uuid
import warnings

import pytest
from orion.client import build_experiment
from orion.core.worker.trial import Trial

from helpers import REAL_SPACE
from orion_track_redis.orion_patches import hold as accel
from test_accel import ALGORITHMS, SECRET, World, schedule


def compare_batched(name, algorithm, space, steps, seed=7):
    """Run a batched world and Oríon's world in lockstep; returns (first difference or None,
    how many times the states were compared)."""
    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batched = World(name, algorithm, space, accelerate=True, batch=True)
            plain = World(name, algorithm, space, accelerate=False)
            try:
                return _first_difference(name, batched, plain, schedule(seed, steps))
            finally:
                batched.close()
                plain.close()
    finally:
        logging.disable(quiet)


def _first_difference(name, batched, plain, steps):
    compared = 0
    experiment = batched.workers[0]._experiment
    for number, (worker, action) in enumerate(steps):
        seen_batched = batched.step(worker, action)
        seen_plain = plain.step(worker, action)
        where = f"{name}, step {number} (worker {worker}, {action})"
        if seen_batched != seen_plain:
            return f"{where}: batched saw {seen_batched}, Oríon saw {seen_plain}", compared
        if batched.trials() != plain.trials():
            return f"{where}: the stored trials differ", compared
        if batched.storage.backlog_length(experiment) == 0:
            compared += 1
            if batched.stored_state() != plain.stored_state():
                return f"{where}: the stored algorithm states differ", compared
    accel.flush(experiment)
    if batched.stored_state() != plain.stored_state():
        return f"{name}, after the final flush: the stored algorithm states differ", compared
    return None, compared + 1


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_batched_observation_matches_orion(name):
    assert accel.install()
    found, compared = compare_batched(name, *ALGORITHMS[name])
    assert found is None
    # the states were really compared, not only at the end
    assert compared >= min(3, ALGORITHMS[name][2] // 4)


def test_oracle_catches_a_hold_that_skips_the_backlog(monkeypatch):
    """A hold that does not observe the backlog must be reported."""
    from orion_track_redis.store.lock import LockClient

    monkeypatch.setattr(LockClient, "backlog", lambda self, ek: [])
    found, _ = compare_batched("random", *ALGORITHMS["random"][:2], 30)
    assert found is not None and "differ" in found


def test_oracle_catches_observation_out_of_order(monkeypatch):
    """The backlog is observed oldest first (as Oríon would have, one hold per completion);
    newest first is a difference the oracle must find."""
    from orion_track_redis.store.lock import LockClient

    own = LockClient.backlog
    monkeypatch.setattr(LockClient, "backlog", lambda self, ek: own(self, ek)[::-1])
    found, _ = compare_batched("random", *ALGORITHMS["random"][:2], 40)
    assert found is not None and "differ" in found


_CLIENTS: list = []


@pytest.fixture(autouse=True)
def _stop_pacemakers():
    """Stop the heartbeat threads of trials a test left reserved (they would keep the test
    process alive)."""
    yield
    while _CLIENTS:
        for pacemaker in _CLIENTS.pop()._pacemakers.values():
            pacemaker.stop()


def _client(storage_extra=None, max_trials=50, name=None):
    storage = {
        "type": "redis",
        "uri": f"fakeredis://batch-{uuid.uuid4().hex[:6]}",
        "state_secret": SECRET,
        **(storage_extra or {}),
    }
    client = build_experiment(
        name or f"batch-{uuid.uuid4().hex[:6]}",
        space=REAL_SPACE,
        algorithm={"random": {"seed": 1}},
        max_trials=max_trials,
        storage=storage,
    )
    _CLIENTS.append(client)
    return client


def _complete(client, trial) -> None:
    client.observe(trial, [{"name": "obj", "type": "objective", "value": 1.0}])


def _with_one_completed():
    """A batching client, its experiment and storage, and one trial it completed."""
    client = _client()
    trial = client.suggest()
    _complete(client, trial)
    return client, client._experiment, client._experiment._storage, trial


def _observed(client) -> dict:
    exp = client._experiment
    state = exp._storage.get_algorithm_lock_info(uid=exp.id).state
    return {t.id: t.status for t in state["algorithm"]["registry"]["_trials"].values()}


def test_completion_takes_no_lock_and_the_next_produce_observes_it():
    client = _client()
    exp, storage = client._experiment, client._experiment._storage
    assert storage.batched_observation
    trial = client.suggest()
    holds = []
    own = storage.lock.hold
    storage.lock.hold = lambda *a, **k: holds.append(1) or own(*a, **k)
    _complete(client, trial)
    assert holds == [] and storage.backlog_length(exp) == 1
    assert _observed(client)[trial.id] == "new"  # as suggested: not observed yet
    client.suggest()
    assert holds == [1] and storage.backlog_length(exp) == 0
    assert _observed(client)[trial.id] == "completed"


def test_a_failed_hold_leaves_the_backlog_and_the_state():
    client, exp, storage, _ = _with_one_completed()
    before = _observed(client)
    with pytest.raises(RuntimeError):
        with exp.acquire_algorithm_lock():
            raise RuntimeError("inside the hold")
    assert storage.backlog_length(exp) == 1 and _observed(client) == before


def test_entries_recorded_during_a_hold_stay_for_the_next():
    """The release removes exactly the entries the hold read, from the head: a completion
    recorded by another worker while the lock was held is still there afterwards."""
    client = _client()
    exp, storage = client._experiment, client._experiment._storage
    first, second = client.suggest(), client.suggest()
    _complete(client, first)
    with exp.acquire_algorithm_lock():
        storage.observe_later(exp, second)  # as another worker would, mid-hold
    assert storage.backlog_length(exp) == 1
    assert storage.lock.backlog(storage.backend.experiment_keys(exp.id))[0].id == second.id
    assert _observed(client)[first.id] == "completed"


def test_an_expired_holder_removes_nothing():
    """A holder whose lock expired writes no state, so it must not trim the backlog either."""
    _, exp, storage, _ = _with_one_completed()
    ek = storage.backend.experiment_keys(exp.id)
    with exp.acquire_algorithm_lock():
        storage.client.delete(ek.lock_holder)  # the TTL ran out; nobody else took it yet
    assert storage.backlog_length(exp) == 1


def test_a_retried_record_is_not_recorded_twice():
    """redis-py retries a call whose reply was lost: the same request id records once."""
    client = _client()
    exp, storage = client._experiment, client._experiment._storage
    ek = storage.backend.experiment_keys(exp.id)
    request = ek.request("retried-request")
    for _ in range(2):
        called = storage.scripts.observe_later(
            backlog=ek.unobserved, request=request, trial=b"payload", request_ttl=60
        )
        assert called == 1
    assert storage.backlog_length(exp) == 1


def test_backlog_round_trips_the_trial_exactly():
    client = _client()
    exp, storage = client._experiment, client._experiment._storage
    trial = client.suggest()
    trial.results = [Trial.Result(name="obj", type="objective", value=0.5)]
    storage.observe_later(exp, trial)
    (back,) = storage.lock.backlog(storage.backend.experiment_keys(exp.id))
    assert back.to_dict() == trial.to_dict() and back is not trial


def test_workon_observes_the_tail():
    """A worker that ends its loop leaves nothing unobserved."""
    client = _client(max_trials=12)
    client.workon(
        lambda x, y: [{"name": "obj", "type": "objective", "value": x + y}], max_trials=12
    )
    exp = client._experiment
    assert exp._storage.backlog_length(exp) == 0
    completed = {t.id for t in client.fetch_trials() if t.status == "completed"}
    assert len(completed) >= 12
    observed = {tid for tid, status in _observed(client).items() if status == "completed"}
    assert observed == completed


@pytest.mark.parametrize("switch", ["option", "env", "accelerator off"])
def test_switched_off_observes_at_once(monkeypatch, switch):
    extra = {}
    if switch == "option":
        extra = {"batch_observe": False}
    elif switch == "env":
        monkeypatch.setenv(accel.BATCH_ENV, "0")
    else:
        extra = {"accelerate": False}
    client = _client(extra)
    exp = client._experiment
    assert exp._storage.batched_observation is False
    trial = client.suggest()
    _complete(client, trial)
    assert exp._storage.backlog_length(exp) == 0
    assert _observed(client)[trial.id] == "completed"


@pytest.mark.parametrize("other", [{"batch_observe": False}, {"accelerate": False}])
def test_a_worker_that_does_not_batch_observes_the_backlog_of_those_that_do(other):
    """A mixed fleet: what a batching worker recorded is observed by the next produce of a
    worker that does not batch, whether its holds are copy-free or Oríon's own."""
    batching = _client(max_trials=50)
    exp = batching._experiment
    plain = _client({"uri": exp._storage.backend.opts.url, **other}, name=exp.name)
    assert plain._experiment._storage.batched_observation is False
    trial = batching.suggest()
    _complete(batching, trial)
    assert exp._storage.backlog_length(exp) == 1
    plain.suggest()
    assert exp._storage.backlog_length(exp) == 0
    assert _observed(batching)[trial.id] == "completed"


def test_acquire_is_called_exactly_as_orion_calls_it():
    """The accelerated hold calls acquire_algorithm_lock with Oríon's own keywords, so a
    storage method replaced by a function of Oríon's signature (instrumentation, a test
    helper's mock) keeps working, batched observation included."""
    from unittest import mock

    client, exp, storage, trial = _with_one_completed()
    original = storage.acquire_algorithm_lock
    calls = []

    def instrumented(experiment=None, uid=None, timeout=60, retry_interval=1):
        calls.append((experiment, uid))
        return original(
            experiment=experiment, uid=uid, timeout=timeout, retry_interval=retry_interval
        )

    storage.acquire_algorithm_lock = instrumented
    client.suggest()  # a produce: one hold, which observes the backlog
    assert calls and all(c == (exp, None) for c in calls)
    assert _observed(client)[trial.id] == "completed"
    assert storage.backlog_length(exp) == 0

    storage.acquire_algorithm_lock = original
    with mock.patch.object(storage, "acquire_algorithm_lock", wraps=original) as spy:
        client.suggest()
    spy.assert_called_with(experiment=exp, timeout=mock.ANY, retry_interval=mock.ANY)


@pytest.mark.parametrize("how", ["observe", "release"])
def test_a_worker_killed_between_status_change_and_observation_loses_nothing(monkeypatch, how):
    """The status change of a completion (or release) records the trial for the algorithm in
    the same script: a worker that dies right after it, before Oríon's Producer.observe, still
    leaves the trial in the backlog, and another worker's next produce observes it."""
    from orion.core.worker.producer import Producer

    client = _client()
    trial = client.suggest()

    def dies(self, trial):
        raise SystemExit("killed between the two calls")

    monkeypatch.setattr(Producer, "observe", dies)
    with pytest.raises(SystemExit):
        if how == "observe":
            _complete(client, trial)
        else:
            client.release(trial, status="interrupted")
    monkeypatch.undo()
    exp = client._experiment
    storage = exp._storage
    expected = "completed" if how == "observe" else "interrupted"
    (entry,) = storage.lock.backlog(
        storage.backend.experiment_keys(exp.id)
    )  # as Producer.observe would get it
    assert (entry.id, entry.status) == (trial.id, expected)
    other = build_experiment(
        exp.name, storage={"type": "redis", "uri": storage.backend.opts.url, "state_secret": SECRET}
    )
    _CLIENTS.append(other)
    assert accel.flush(other._experiment) == 1  # another worker's next hold observes it
    assert storage.backlog_length(exp) == 0
    if how == "observe":
        assert _observed(other)[trial.id] == "completed"


def test_a_completion_is_recorded_once():
    client, exp, storage, _ = _with_one_completed()
    assert storage.backlog_length(exp) == 1  # by the completion's script, not again by observe
    trial = client.suggest()
    client.release(trial, status="broken")
    assert storage.backlog_length(exp) == 1  # the produce observed the first; the release adds one
