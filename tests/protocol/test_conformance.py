"""One suite over the public storage protocol, run on fakeredis, a real redis-server and
Oríon's Legacy storage over EphemeralDB (the reference behaviour)."""

from __future__ import annotations

import datetime
import pickle

import pytest
from orion.core.io.database import DuplicateKeyError
from orion.core.worker.trial import Trial
from orion.storage.base import FailedUpdate, LockAcquisitionTimeout, MissingArguments

from helpers import BASE_TIME, Exp, create_experiment, experiment_config, make_trial, orion_roots


# -- experiments -------------------------------------------------------------------------------
def test_create_experiment_assigns_int_ids_from_1(storage):
    first = experiment_config("a")
    second = experiment_config("b")
    storage.create_experiment(first)
    storage.create_experiment(second)
    assert first["_id"] == 1 and second["_id"] == 2


@pytest.mark.parametrize("given", [0, "0", 7, "my-exp:{x} y"])
def test_create_experiment_keeps_given_id(storage, given):
    storage.create_experiment(experiment_config("a", _id=given))
    found = storage.fetch_experiments({"name": "a"})
    assert [doc["_id"] for doc in found] == [given]
    assert type(found[0]["_id"]) is type(given)


def test_ids_0_and_string_0_are_different_experiments(storage):
    storage.create_experiment(experiment_config("int", _id=0))
    storage.create_experiment(experiment_config("str", _id="0"))
    assert storage.fetch_experiments({"_id": 0})[0]["name"] == "int"
    assert storage.fetch_experiments({"_id": "0"})[0]["name"] == "str"


def test_duplicate_name_version_raises(storage):
    storage.create_experiment(experiment_config("a", version=1))
    with pytest.raises(DuplicateKeyError):
        storage.create_experiment(experiment_config("a", version=1))
    storage.create_experiment(experiment_config("a", version=2))
    assert len(storage.fetch_experiments({"name": "a"})) == 2


def test_duplicate_id_raises(storage):
    storage.create_experiment(experiment_config("a", _id=5))
    with pytest.raises(DuplicateKeyError):
        storage.create_experiment(experiment_config("b", _id=5))
    assert [d["name"] for d in storage.fetch_experiments({})] == ["a"]


def test_experiment_document_round_trips(storage):
    config = experiment_config("a", extra={"tuple": (1, 2), "ints": [1, 1.0, "1"], "none": None})
    storage.create_experiment(config)
    stored = orion_roots(storage, config)
    (found,) = storage.fetch_experiments({"name": "a"})
    assert found == stored
    assert found["metadata"]["datetime"] == BASE_TIME


def test_fetch_experiments_queries(storage):
    root = create_experiment(storage, name="root")
    child = create_experiment(
        storage, name="child", refers={"parent_id": root, "root_id": root, "adapter": []}
    )
    create_experiment(storage, name="other", metadata={"user": "bob", "datetime": BASE_TIME})
    assert storage.fetch_experiments({"_id": None}) == []
    assert [d["_id"] for d in storage.fetch_experiments({"refers.parent_id": root})] == [child]
    found = storage.fetch_experiments({"refers.root_id": root, "metadata.user": "alice"})
    assert [d["name"] for d in found] == ["root", "child"]  # a root is its own root
    assert {d["name"] for d in storage.fetch_experiments({})} == {"root", "child", "other"}
    assert storage.fetch_experiments({"name": "nope"}) == []


def test_fetch_experiments_selection_keeps_id(storage):
    exp_id = create_experiment(storage, name="a")
    (found,) = storage.fetch_experiments({"name": "a"}, {"name": 1})
    assert found["_id"] == exp_id and found["name"] == "a"
    assert "space" not in found


def test_update_experiment_replaces_nested_whole(storage):
    exp_id = create_experiment(storage, name="a")
    assert storage.update_experiment(
        uid=exp_id, _id=exp_id, metadata={"user": "bob"}, max_trials=20
    )
    (found,) = storage.fetch_experiments({"_id": exp_id})
    assert found["metadata"] == {"user": "bob"}
    assert found["max_trials"] == 20
    assert found["name"] == "a"


def test_update_experiment_requires_uid(storage):
    with pytest.raises(MissingArguments):
        storage.update_experiment(max_trials=1)


def test_delete_experiment(storage):
    exp_id = create_experiment(storage, name="a")
    assert storage.delete_experiment(uid=exp_id) == 1
    assert storage.fetch_experiments({}) == []
    assert storage.delete_experiment(uid=exp_id) == 0
    create_experiment(storage, name="a")  # the name is free again


# -- benchmarks --------------------------------------------------------------------------------
def test_benchmarks(storage):
    storage.create_benchmark({"name": "bm", "targets": [{"assess": {}, "task": {}}]})
    with pytest.raises(DuplicateKeyError):
        storage.create_benchmark({"name": "bm"})
    storage.create_benchmark({"name": "bm2"})
    assert [b["name"] for b in storage.fetch_benchmark({"name": "bm"})] == ["bm"]
    assert sorted(b["name"] for b in storage.fetch_benchmark({})) == ["bm", "bm2"]


# -- trials ------------------------------------------------------------------------------------
def test_register_and_fetch_trials_sorted_by_submit_time(storage):
    exp_id = create_experiment(storage)
    for seconds, x in [(3, 3.0), (1, 1.0), (2, 2.0)]:
        trial = storage.register_trial(make_trial(exp_id, x=x, seconds=seconds))
        assert trial.id_override
    trials = storage.fetch_trials(uid=exp_id)
    assert [t.params["/x"] for t in trials] == [1.0, 2.0, 3.0]
    assert all(
        t.submit_time == BASE_TIME + datetime.timedelta(seconds=t.params["/x"]) for t in trials
    )


def test_fetch_trials_empty(storage):
    exp_id = create_experiment(storage)
    assert storage.fetch_trials(uid=exp_id) == []
    assert storage.fetch_trials(uid=12345) == []


def test_duplicate_trial_raises(storage):
    exp_id = create_experiment(storage)
    storage.register_trial(make_trial(exp_id, x=1.0))
    with pytest.raises(DuplicateKeyError):
        storage.register_trial(make_trial(exp_id, x=1.0))
    other = create_experiment(storage, name="other")
    storage.register_trial(make_trial(other, x=1.0))  # unique per experiment only


@pytest.mark.parametrize(
    "value", [1, 1.0, "1", [1, 2.0, "3"], {"a": [1, {"b": 2.5}]}, True, None, -0.0, 1e300]
)
def test_param_types_round_trip(storage, value):
    exp_id = create_experiment(storage)
    trial = make_trial(exp_id)
    trial._params[0].value = value
    trial._params[0].type = "categorical"
    storage.register_trial(trial)
    (found,) = storage.fetch_trials(uid=exp_id)
    assert found.params["/x"] == value and type(found.params["/x"]) is type(value)
    assert found.id == trial.id


def test_string_submit_time_stays_string(storage):
    exp_id = create_experiment(storage)
    storage.register_trial(make_trial(exp_id, submit_time="2017-11-23T02:00:00"))
    (found,) = storage.fetch_trials(uid=exp_id)
    assert found.submit_time == "2017-11-23T02:00:00"


def test_get_trial(storage):
    exp_id = create_experiment(storage)
    trial = storage.register_trial(make_trial(exp_id))
    found = storage.get_trial(uid=trial.id, experiment_uid=exp_id)
    assert found.to_dict() == trial.to_dict()
    assert storage.get_trial(uid="nope", experiment_uid=exp_id) is None
    assert storage.get_trial(uid=12345, experiment_uid=exp_id) is None  # not an AttributeError
    assert storage.get_trial(trial).id == trial.id


def test_a_path_valued_field_round_trips(storage):
    """An experiment whose working_dir is a pathlib.Path stores it in every trial's
    exp_working_dir (Oríon's client and worker tests do): stored as Legacy stores it."""
    import pathlib

    exp_id = create_experiment(storage)
    trial = storage.register_trial(make_trial(exp_id, exp_working_dir=pathlib.Path("/tmp/w")))
    found = storage.get_trial(uid=trial.id, experiment_uid=exp_id)
    assert found.exp_working_dir == pathlib.Path("/tmp/w")
    assert found.working_dir == trial.working_dir
    (fetched,) = storage.fetch_trials(uid=exp_id)
    assert fetched.exp_working_dir == pathlib.Path("/tmp/w")


def test_reserve_trial_until_none(storage):
    exp_id = create_experiment(storage)
    for x in range(5):
        storage.register_trial(make_trial(exp_id, x=float(x), seconds=x))
    storage.register_trial(make_trial(exp_id, x=10.0, status="completed"))
    storage.register_trial(make_trial(exp_id, x=11.0, status="suspended"))
    storage.register_trial(make_trial(exp_id, x=12.0, status="interrupted"))
    seen = set()
    while (trial := storage.reserve_trial(Exp(exp_id))) is not None:
        assert trial.status == "reserved"
        assert isinstance(trial.start_time, datetime.datetime)
        assert trial.heartbeat == trial.start_time
        seen.add(trial.params["/x"])
    assert seen == {0.0, 1.0, 2.0, 3.0, 4.0, 11.0, 12.0}
    assert len(storage.fetch_trials_by_status(Exp(exp_id), "reserved")) == 7
    assert storage.reserve_trial(Exp(exp_id)) is None


def test_set_trial_status_compare_and_set(storage):
    exp_id = create_experiment(storage)
    trial = storage.register_trial(make_trial(exp_id))
    storage.set_trial_status(trial, "reserved")
    assert trial.status == "reserved"
    stale = make_trial(exp_id)  # local status "new": CAS must fail
    with pytest.raises(FailedUpdate):
        storage.set_trial_status(stale, "reserved")
    with pytest.raises(FailedUpdate):
        storage.set_trial_status(trial, "completed", was="new")
    storage.set_trial_status(trial, "interrupted", was="reserved", heartbeat=123)
    assert storage.get_trial(trial).status == "interrupted"
    with pytest.raises(ValueError, match="moo"):
        storage.set_trial_status(trial, "moo")
    with pytest.raises(FailedUpdate):
        storage.set_trial_status(make_trial(exp_id, x=99.0), "reserved")


def test_push_results_only_while_reserved(storage):
    exp_id = create_experiment(storage)
    trial = storage.register_trial(make_trial(exp_id))
    trial.results = [Trial.Result(name="loss", type="objective", value=0.5)]
    with pytest.raises(FailedUpdate):
        storage.push_trial_results(trial)
    storage.set_trial_status(trial, "reserved")
    assert storage.push_trial_results(trial)
    found = storage.get_trial(trial)
    assert found.objective.value == 0.5
    storage.set_trial_status(found, "completed")
    assert storage.count_completed_trials(Exp(exp_id)) == 1


def test_update_heartbeat_only_while_reserved(storage):
    exp_id = create_experiment(storage)
    trial = storage.register_trial(make_trial(exp_id))
    assert storage.update_heartbeat(trial) == 0
    storage.set_trial_status(trial, "reserved", heartbeat=BASE_TIME)
    assert storage.update_heartbeat(trial) == 1
    assert storage.get_trial(trial).heartbeat > BASE_TIME


def test_fetch_lost_trials(storage, heartbeat):
    heartbeat(1)
    exp_id = create_experiment(storage)
    old = datetime.datetime.utcnow() - datetime.timedelta(seconds=60)
    lost = storage.register_trial(make_trial(exp_id, x=1.0, status="reserved", heartbeat=old))
    storage.register_trial(
        make_trial(exp_id, x=2.0, status="reserved", heartbeat=datetime.datetime.utcnow())
    )
    storage.register_trial(make_trial(exp_id, x=3.0, status="new"))
    assert [t.id for t in storage.fetch_lost_trials(Exp(exp_id))] == [lost.id]
    storage.set_trial_status(lost, "interrupted", was="reserved")
    assert storage.fetch_lost_trials(Exp(exp_id)) == []


def test_an_explicit_old_heartbeat_makes_a_trial_lost(storage, heartbeat):
    """set_trial_status(heartbeat=<old datetime>) ages the trial, as Oríon's EVC lost-trial
    tests expect (Legacy compares the stored heartbeat)."""
    heartbeat(1)
    exp_id = create_experiment(storage)
    trial = storage.register_trial(make_trial(exp_id, x=1.0, status="new"))
    old = datetime.datetime.utcnow() - datetime.timedelta(seconds=60)
    storage.set_trial_status(trial, "reserved", heartbeat=old, was="new")
    assert [t.id for t in storage.fetch_lost_trials(Exp(exp_id))] == [trial.id]
    storage.set_trial_status(
        trial, "reserved", heartbeat=datetime.datetime.utcnow(), was="reserved"
    )
    assert storage.fetch_lost_trials(Exp(exp_id)) == []


def test_status_fetches_and_counts(storage):
    exp_id = create_experiment(storage)
    for i, status in enumerate(
        [
            "new",
            "reserved",
            "suspended",
            "completed",
            "interrupted",
            "broken",
            "completed",
            "broken",
        ]
    ):
        storage.register_trial(make_trial(exp_id, x=float(i), status=status, seconds=i))
    exp = Exp(exp_id)
    assert [t.status for t in storage.fetch_pending_trials(exp)] == [
        "new",
        "suspended",
        "interrupted",
    ]
    assert len(storage.fetch_noncompleted_trials(exp)) == 6
    assert len(storage.fetch_trials_by_status(exp, "broken")) == 2
    assert storage.count_completed_trials(exp) == 2
    assert storage.count_broken_trials(exp) == 2
    assert len(storage.fetch_trials(exp, where={"status": "completed"})) == 2
    assert len(storage.fetch_trials(exp, where={"status": {"$in": ["new", "broken"]}})) == 3
    assert len(storage.fetch_trials(exp, where={"status": {"$ne": "new"}})) == 7


def test_update_and_delete_trials(storage):
    exp_id = create_experiment(storage)
    trials = [storage.register_trial(make_trial(exp_id, x=float(i), seconds=i)) for i in range(4)]
    exp = Exp(exp_id)
    assert storage.update_trials(exp, where={"status": "new"}, status="interrupted") == 4
    assert len(storage.fetch_pending_trials(exp)) == 4
    assert storage.update_trials(uid=exp_id, where={"id": trials[0].id}, status="broken") == 1
    assert storage.count_broken_trials(exp) == 1
    assert storage.update_trial(trials[1], where={"status": "new"}, status="broken") == 0
    assert storage.update_trial(trials[1], where={"status": "interrupted"}, status="broken") == 1
    assert storage.delete_trials(exp, where={"status": "broken"}) == 2
    assert storage.delete_trials(uid=exp_id, where={"id": trials[2].id}) == 1
    assert storage.delete_trials(uid=exp_id) == 1
    assert storage.fetch_trials(uid=exp_id) == []
    assert storage.count_broken_trials(exp) == 0
    assert storage.reserve_trial(exp) is None


# -- algorithm lock ----------------------------------------------------------------------------
def test_lock_created_with_experiment(storage):
    exp_id = create_experiment(storage)
    info = storage.get_algorithm_lock_info(uid=exp_id)
    assert info.configuration == {"random": {"seed": 1}}
    assert info.state is None and not info.locked
    assert storage.get_algorithm_lock_info(uid=999) is None


def test_lock_state_written_on_release(storage):
    exp_id = create_experiment(storage)
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=5) as locked:
        assert locked.locked and locked.state is None
        assert storage.get_algorithm_lock_info(uid=exp_id).locked
        locked.set_state({"rng": (1, [2, 3]), "n": 5})
    info = storage.get_algorithm_lock_info(uid=exp_id)
    assert info.state == {"rng": (1, [2, 3]), "n": 5} and not info.locked
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=5) as locked:
        assert locked.state == {"rng": (1, [2, 3]), "n": 5}


def test_lock_state_reset_on_exception(storage):
    exp_id = create_experiment(storage)
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=5) as locked:
        locked.set_state({"n": 1})
    with pytest.raises(RuntimeError):
        with storage.acquire_algorithm_lock(uid=exp_id, timeout=5) as locked:
            locked.set_state({"n": 2})
            raise RuntimeError("algorithm crashed")
    info = storage.get_algorithm_lock_info(uid=exp_id)
    assert info.state == {"n": 1} and not info.locked


def test_lock_held_times_out_other_acquirer(storage):
    exp_id = create_experiment(storage)
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=5):
        with pytest.raises(LockAcquisitionTimeout):
            with storage.acquire_algorithm_lock(uid=exp_id, timeout=0.3, retry_interval=0.1):
                pass


def test_lock_without_record_times_out(storage):
    with pytest.raises(LockAcquisitionTimeout):
        with storage.acquire_algorithm_lock(uid=424242, timeout=0.3, retry_interval=0.1):
            pass


def test_initialize_and_delete_lock(storage):
    storage.initialize_algorithm_lock(77, {"algo": {}})
    assert storage.get_algorithm_lock_info(uid=77).configuration == {"algo": {}}
    assert storage.delete_algorithm_lock(uid=77) == 1
    assert storage.delete_algorithm_lock(uid=77) == 0
    assert storage.get_algorithm_lock_info(uid=77) is None


def test_release_algorithm_lock_frees_a_held_lock(storage):
    exp_id = create_experiment(storage)
    holding = storage.acquire_algorithm_lock(uid=exp_id, timeout=5)
    holding.__enter__()  # a holder that never exits, like a killed worker under Legacy
    storage.release_algorithm_lock(uid=exp_id)
    assert not storage.get_algorithm_lock_info(uid=exp_id).locked
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=1, retry_interval=0.1):
        pass


# -- ours only ---------------------------------------------------------------------------------
def test_initialize_lock_only_if_absent(redis_storage):
    """Legacy writes a second record here; ours keeps the first (and its state)."""
    assert redis_storage.initialize_algorithm_lock(77, {"algo": {}}) == 1
    assert redis_storage.initialize_algorithm_lock(77, {"other": {}}) == 0
    assert redis_storage.get_algorithm_lock_info(uid=77).configuration == {"algo": {}}


def test_release_returns_truthy(redis_storage):
    exp_id = create_experiment(redis_storage)
    assert redis_storage.release_algorithm_lock(uid=exp_id)
    assert not redis_storage.release_algorithm_lock(uid=31337)


def test_storage_pickles_and_reconnects(redis_storage):
    exp_id = create_experiment(redis_storage)
    redis_storage.register_trial(make_trial(exp_id))
    clone = pickle.loads(pickle.dumps(redis_storage))
    assert [t.params for t in clone.fetch_trials(uid=exp_id)] == [{"/x": 1.0}]
    assert clone.reserve_trial(Exp(exp_id)).status == "reserved"


def test_reserve_is_retry_safe(redis_storage):
    """A reserve replayed with the same request id returns the same trial, not a second one."""
    from orion_track_redis.keys import PENDING

    exp_id = create_experiment(redis_storage)
    for x in range(3):
        redis_storage.register_trial(make_trial(exp_id, x=float(x)))
    ek = redis_storage.backend.experiment_keys(exp_id)
    new, suspended, interrupted = (ek.status(s) for s in PENDING)
    call = dict(
        new=new,
        suspended=suspended,
        interrupted=interrupted,
        reserved=ek.status("reserved"),
        request=ek.request("r1"),
        rev=ek.rev,
        changed=ek.changed,
        leases=ek.leases,
        holders=ek.holders,
        lease_clock=ek.lease_clock,
        trial_prefix=ek.trial_prefix,
        status='"reserved"',
        now='"2024-01-01T00:00:00"',
        request_ttl=60,
        lease=30,
        holder="h1 {}",
    )
    first = redis_storage.scripts.reserve_trial(**call)
    again = redis_storage.scripts.reserve_trial(**call)
    assert first[0] == again[0]
    assert len(redis_storage.fetch_trials_by_status(Exp(exp_id), "reserved")) == 1


def test_serve_and_log_line_read_db(redis_storage):
    assert redis_storage._db.__class__.__name__ == "RedisDB"
    assert "prefix" in repr(redis_storage._db)


def test_scripts_reload_after_script_flush(redis_storage):
    exp_id = create_experiment(redis_storage)
    redis_storage.register_trial(make_trial(exp_id, x=1.0))
    redis_storage.client.script_flush()  # what a restart or failover does to the script cache
    redis_storage.register_trial(make_trial(exp_id, x=2.0))
    assert redis_storage.reserve_trial(Exp(exp_id)) is not None
    assert len(redis_storage.fetch_trials(uid=exp_id)) == 2


def test_hostile_experiment_ids_stay_in_their_slot(redis_storage):
    """Braces, colons, spaces and unicode in ids cannot break the hash tag or collide."""
    from redis.cluster import key_slot

    ids = ["a}b", "{x}", "a:b c", "ü名前", "%7B", "a b", 3]
    for exp_id in ids:
        redis_storage.create_experiment(experiment_config(f"n-{exp_id}", _id=exp_id))
        redis_storage.register_trial(make_trial(exp_id, x=1.0))
        ek = redis_storage.backend.experiment_keys(exp_id)
        keys = [
            ek.rev,
            ek.all,
            ek.lock,
            ek.lock_holder,
            ek.lock_queue,
            ek.lock_leases,
            ek.lock_wake("owner"),
            ek.trial("abc"),
            *(ek.status(s) for s in ("new", "reserved")),
        ]
        assert len({key_slot(k.encode()) for k in keys}) == 1
    for exp_id in ids:
        (trial,) = redis_storage.fetch_trials(uid=exp_id)
        assert trial.experiment == exp_id
        assert redis_storage.reserve_trial(Exp(exp_id)).experiment == exp_id


def test_a_root_experiment_is_rooted_by_its_creation(redis_storage):
    """Oríon's builder writes refers.root_id with a second call after create_experiment; a
    worker that loaded the experiment in between wrote refers back with root_id null (a lost
    update: `orion list` then shows nothing). Ours stores it in the creating script, so the
    loader's write-back carries it, whatever the interleaving."""
    config = experiment_config("rooted")
    redis_storage.create_experiment(config)
    exp_id = config["_id"]
    assert config["refers"]["root_id"] is None, "the caller's config is left as Oríon built it"
    (loaded,) = redis_storage.fetch_experiments({"name": "rooted"})  # a concurrent loader
    redis_storage.update_experiment(uid=exp_id, refers={**config["refers"], "root_id": exp_id})
    redis_storage.update_experiment(uid=exp_id, refers=loaded["refers"])  # its write-back
    (doc,) = redis_storage.fetch_experiments({"name": "rooted"})
    assert doc["refers"]["root_id"] == exp_id
    child = experiment_config(
        "child", refers={"parent_id": exp_id, "root_id": exp_id, "adapter": []}
    )
    redis_storage.create_experiment(child)
    assert redis_storage.fetch_experiments({"name": "child"})[0]["refers"]["root_id"] == exp_id
