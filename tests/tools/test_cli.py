"""`orion-redis` against a real redis-server (and PickledDB files for migration)."""

from __future__ import annotations

import datetime
import json
import os
import pickle
import subprocess
import sys
import uuid

import pytest
from orion.client import build_experiment
from orion.storage.legacy import Legacy

from helpers import Exp, create_experiment, make_trial
from orion_track_redis import Redis
from orion_track_redis.ops import transfer
from orion_track_redis.ops.cli import main
from orion_track_redis.store import migrations


@pytest.fixture
def uri(redis_server):
    return f"{redis_server.url}/0?prefix=cli-{uuid.uuid4().hex[:8]}"


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, out


def test_info_json(capsys, uri):
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage)
    storage.register_trial(make_trial(exp_id))
    code, out = run(capsys, "--uri", uri, "info", "--json")
    data = json.loads(out)
    assert code == 0 and data["warnings"] == []
    assert data["experiments"] == 1 and data["trials"] == 1 and data["aof"] is True
    assert (
        data["schema_version"] == migrations.SCHEMA_VERSION
        and data["maxmemory_policy"] == "noeviction"
    )


def test_info_flags_eviction_policy(capsys, uri, redis_server):
    client = Redis(uri=uri).client
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        code, out = run(capsys, "--uri", uri, "info")
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    assert code == 1 and "allkeys-lru" in out and "noeviction" in out


def test_status_matches_storage_and_check_flags_lost(capsys, uri, heartbeat):
    heartbeat(1)
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="fleet")
    for i, status in enumerate(["new", "new", "completed", "broken"]):
        storage.register_trial(make_trial(exp_id, x=float(i), status=status))
    old = datetime.datetime.utcnow() - datetime.timedelta(seconds=60)
    storage.register_trial(make_trial(exp_id, x=9.0, status="reserved", heartbeat=old))
    code, out = run(capsys, "--uri", uri, "status", "--json")
    (row,) = json.loads(out)
    assert code == 0
    assert (row["new"], row["reserved"], row["completed"], row["broken"]) == (2, 1, 1, 1)
    assert row["lost"] == 1 and row["lock"] == "free" and row["fence"] == 0
    code, out = run(capsys, "--uri", uri, "status", "fleet", "--check")
    assert code == 1 and "fleet" in out and "completed/min" in out


def test_lock_show_and_release(capsys, uri):
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="locked")
    holding = storage.acquire_algorithm_lock(uid=exp_id, timeout=5)
    holding.__enter__()
    code, out = run(capsys, "--uri", uri, "lock", "show", "locked", "--json")
    data = json.loads(out)
    assert code == 0 and data["lock"] == "held" and data["fence"] == 1
    assert data["holder"].startswith("1:")
    code, out = run(capsys, "--uri", uri, "lock", "release", "locked")
    assert code == 0 and "released" in out
    assert not storage.get_algorithm_lock_info(uid=exp_id).locked
    code, out = run(capsys, "--uri", uri, "lock", "release", "locked")  # free: says so
    assert code == 0 and "is free: nothing released" in out


def test_lock_show_reads_the_algorithm_state(capsys, uri):
    """docs/performance.md sends readers of the algorithm state to `lock show` (issue 21)."""
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="stateful")
    with storage.acquire_algorithm_lock(uid=exp_id) as locked:
        locked.set_state({"rng": (1, 2), "seen": {"a": 1}})
    code, out = run(capsys, "--uri", uri, "lock", "show", "stateful", "--json")
    data = json.loads(out)
    assert code == 0 and data["state"] == {"rng": [1, 2], "seen": {"a": 1}}
    assert data["algorithm"] == {"random": {"seed": 1}} and data["unobserved"] == 0
    code, out = run(capsys, "--uri", uri, "lock", "show", "stateful")
    assert "state" in out and "'seen': {'a': 1}" in out


def test_lost_requeue(capsys, uri, heartbeat):
    heartbeat(1)
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="lossy")
    old = datetime.datetime.utcnow() - datetime.timedelta(seconds=60)
    trial = storage.register_trial(make_trial(exp_id, status="reserved", heartbeat=old))
    code, out = run(capsys, "--uri", uri, "lost", "lossy")
    assert code == 1 and trial.id in out
    code, out = run(capsys, "--uri", uri, "lost", "lossy", "--requeue", "--json")
    assert code == 0 and json.loads(out)["requeued"] == 1
    assert storage.get_trial(trial).status == "interrupted"
    assert storage.reserve_trial(Exp(exp_id)).id == trial.id


def test_purge_removes_only_that_experiment(capsys, uri):
    storage = Redis(uri=uri)
    gone = create_experiment(storage, name="gone")
    kept = create_experiment(storage, name="kept")
    for exp_id in (gone, kept):
        storage.register_trial(make_trial(exp_id))
    code, out = run(capsys, "--uri", uri, "purge", "gone", "--yes")
    assert code == 0 and "1 trials" in out
    assert [d["name"] for d in storage.fetch_experiments({})] == ["kept"]
    assert storage.fetch_trials(uid=gone) == [] and len(storage.fetch_trials(uid=kept)) == 1
    assert storage.get_algorithm_lock_info(uid=gone) is None
    assert storage.get_algorithm_lock_info(uid=kept) is not None
    ek = storage.backend.experiment_keys(gone)
    left = {
        k.decode() for k in storage.client.scan_iter(match=f"{{{storage.backend.opts.prefix}:1}}*")
    }
    left = {k for k in left if ":req:" not in k}  # request ids expire by themselves
    assert left <= {ek.rev, ek.changed}, "only the revision counter and tombstones stay"


def test_export_import_round_trip(capsys, uri, redis_server, tmp_path):
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="exported")
    with storage.acquire_algorithm_lock(uid=exp_id) as locked:
        locked.set_state({"seen": (1, 2.0, "3")})
    for i in range(3):
        storage.register_trial(make_trial(exp_id, x=float(i), status="completed"))
    path = tmp_path / "dump.jsonl"
    assert run(capsys, "--uri", uri, "export", str(path))[0] == 0
    other = f"{redis_server.url}/0?prefix=imp-{uuid.uuid4().hex[:8]}"
    for _ in range(2):  # importing twice duplicates nothing
        assert run(capsys, "--uri", other, "import", str(path))[0] == 0
    target = Redis(uri=other)
    assert target.fetch_experiments({}) == storage.fetch_experiments({})
    assert [t.to_dict() for t in target.fetch_trials(uid=exp_id)] == [
        t.to_dict() for t in storage.fetch_trials(uid=exp_id)
    ]
    assert target.get_algorithm_lock_info(uid=exp_id).state == {"seen": (1, 2.0, "3")}


def _hunt_pickleddb(path, name="real-hunt", trials=8):
    """A real Oríon hunt (random search) on its own PickledDB."""
    exp = build_experiment(
        name,
        space={"x": "uniform(0, 1)", "y": "uniform(0, 1)"},
        algorithm={"random": {"seed": 3}},
        storage={"type": "legacy", "database": {"type": "pickleddb", "host": str(path)}},
    )
    exp.workon(
        lambda x, y: [{"name": "loss", "type": "objective", "value": x + y}], max_trials=trials
    )
    return exp.id


def _snapshot(storage):
    exps = storage.fetch_experiments({})
    out = []
    for doc in exps:
        info = storage.get_algorithm_lock_info(uid=doc["_id"])
        out.append(
            (
                doc,
                [t.to_dict() for t in storage.fetch_trials(uid=doc["_id"])],
                pickle.dumps(info.state),
                info.configuration,
            )
        )
    return out


def test_copy_pickleddb_to_redis_and_back(capsys, uri, tmp_path):
    source_path, back_path = tmp_path / "src.pkl", tmp_path / "back.pkl"
    _hunt_pickleddb(source_path)
    code, out = run(capsys, "copy", "--from", f"pickleddb:{source_path}", "--to", uri)
    assert code == 0 and "verified" in out and "completed 8" in out
    code, out = run(capsys, "copy", "--from", uri, "--to", f"pickleddb:{back_path}")
    assert code == 0
    original = _snapshot(Legacy(database={"type": "pickleddb", "host": str(source_path)}))
    back = _snapshot(Legacy(database={"type": "pickleddb", "host": str(back_path)}))
    assert back == original
    assert _snapshot(Redis(uri=uri)) == original


def test_copy_interrupted_then_resumed(capsys, uri, tmp_path, monkeypatch):
    source_path = tmp_path / "src.pkl"
    exp_id = _hunt_pickleddb(source_path, trials=10)
    source = transfer.open_spec(f"pickleddb:{source_path}")
    target = Redis(uri=uri)
    calls = {"n": 0}
    register = target.register_trial

    def flaky(trial):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the operator hit Ctrl-C half-way
        return register(trial)

    monkeypatch.setattr(target, "register_trial", flaky)
    with pytest.raises(KeyboardInterrupt):
        transfer.copy(source, target)
    assert len(Redis(uri=uri).fetch_trials(uid=exp_id)) == 4
    monkeypatch.undo()
    report = transfer.copy(source, Redis(uri=uri))
    assert report["verified"]
    assert report["experiments"][0]["copied"] == 6 and report["experiments"][0]["skipped"] == 4
    trials = Redis(uri=uri).fetch_trials(uid=exp_id)
    assert len(trials) == 10 and len({t.id for t in trials}) == 10


def test_console_script_and_usage_errors(uri):
    ok = subprocess.run(
        [sys.executable, "-m", "orion_track_redis", "--uri", uri, "status"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and "no experiment" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "orion_track_redis", "--uri", "redis://u:secretpw@h?nope=1", "info"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown option 'nope'" in bad.stderr
    assert "secretpw" not in bad.stderr + bad.stdout
    usage = subprocess.run(
        [sys.executable, "-m", "orion_track_redis", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert usage.returncode == 2


def test_status_watch_refreshes(uri):
    storage = Redis(uri=uri)
    create_experiment(storage, name="watched")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orion_track_redis", "--uri", uri, "status", "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert out.count("watched") >= 2, "the table was redrawn"
    assert "\033[2J" in out


def test_status_shows_the_backlog_and_flush_observes_it(capsys, uri):
    """Batched observation: `status` counts the completed trials not yet observed by the
    algorithm, `flush` observes them (and the stored state then holds them)."""
    client = build_experiment(
        "batched",
        space={"x": "uniform(0, 1)"},
        algorithm={"random": {"seed": 1}},
        storage={"type": "redis", "uri": uri},
    )
    for value in (1.0, 2.0):
        client.observe(client.suggest(), value)
    (row,) = json.loads(run(capsys, "--uri", uri, "status", "--json")[1])
    assert row["unobserved"] == 1 and row["completed"] == 2
    # the first hold wrote a snapshot, the second a delta (state/delta.py)
    assert row["state_log"] == 1 and row["state_kib"] > 0
    code, out = run(capsys, "--uri", uri, "flush", "batched")
    assert code == 0 and "observed 1 trial(s); 0 waiting" in out
    (row,) = json.loads(run(capsys, "--uri", uri, "status", "--json")[1])
    assert row["unobserved"] == 0
    exp_id = client._experiment.id
    state = client._experiment._storage.get_algorithm_lock_info(uid=exp_id).state
    statuses = [t.status for t in state["algorithm"]["registry"]["_trials"].values()]
    assert statuses == ["completed", "completed"]
    code, out = run(capsys, "--uri", uri, "flush", "batched")
    assert code == 0 and "observed 0 trial(s)" in out


def test_missing_sources_are_errors_that_create_nothing(capsys, uri, tmp_path):
    """A mistyped PickledDB path or experiment name is exit 2 with a clear message, and
    nothing is created (PickledDB would create the file, export an empty one)."""
    missing = tmp_path / "no-such.pkl"
    code = main(["copy", "--from", f"pickleddb:{missing}", "--to", uri])
    err = capsys.readouterr().err
    assert code == 2 and "no PickledDB file" in err and not missing.exists()
    assert not (tmp_path / "no-such.pkl.lock").exists()
    create_experiment(Redis(uri=uri), name="present")
    out_file = tmp_path / "out.jsonl"
    assert main(["--uri", uri, "export", str(out_file), "--experiment", "nosuch"]) == 2
    assert "no experiment named 'nosuch'" in capsys.readouterr().err and not out_file.exists()
    target = tmp_path / "target.pkl"
    assert (
        main(["copy", "--from", uri, "--to", f"pickleddb:{target}", "--experiment", "nosuch"]) == 2
    )
    assert "no experiment named 'nosuch'" in capsys.readouterr().err


def test_counts_read_as_english(capsys, uri, tmp_path):
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="single")
    storage.register_trial(make_trial(exp_id))
    out_file = tmp_path / "one.jsonl"
    code, out = run(capsys, "--uri", uri, "export", str(out_file))
    assert code == 0 and "exported 1 experiment, 1 trial to" in out
    code, out = run(capsys, "--uri", uri, "import", str(out_file))
    assert (
        code == 0
        and "imported 0 experiments, 0 trials (already there: 1 experiment, 1 trial)" in out
    )


def test_cli_behaves_in_pipes_and_without_a_terminal(uri):
    """`info | head` ends quietly, `purge` without --yes and without a terminal is a usage
    error (not an EOFError), `--version` answers."""
    cli = [sys.executable, "-m", "orion_track_redis.ops.cli", "--uri", uri]
    create_experiment(Redis(uri=uri), name="kept")
    piped = subprocess.run(
        " ".join(f"'{a}'" for a in cli) + " status --watch 0.01 | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Broken pipe" not in piped.stderr and "Traceback" not in piped.stderr
    purge = subprocess.run(
        [*cli, "purge", "kept"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert purge.returncode == 2 and "--yes" in purge.stderr and "EOFError" not in purge.stderr
    assert Redis(uri=uri).fetch_experiments({"name": "kept"})
    version = subprocess.run([*cli, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("orion-redis ")


def test_warns_when_the_uri_is_set_but_the_backend_is_not_selected(uri, monkeypatch, capsys):
    """ORION_REDIS_URI alone does not select the backend: a hunt would silently use PickledDB.
    orion-redis says so (and still answers for the URI it was given)."""
    import orion.core

    monkeypatch.setenv("ORION_REDIS_URI", uri)
    config = orion.core.config.storage
    previous = config.type  # Oríon's Configuration: set and restore by hand
    try:
        config.type = "legacy"
        assert main(["status"]) == 0
        err = capsys.readouterr().err
        assert "ORION_STORAGE_TYPE=redis" in err and "would NOT use Redis" in err
        config.type = "redis"
        assert main(["status"]) == 0
        assert "would NOT use Redis" not in capsys.readouterr().err
    finally:
        config.type = previous


def test_completed_per_minute_counts_completions_not_copies(capsys, uri):
    """Trials copied or imported with an old end time are not 'completed in the last minute'."""
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="copied")
    old = datetime.datetime.utcnow() - datetime.timedelta(hours=1)
    for i in range(3):
        storage.register_trial(make_trial(exp_id, x=float(i), status="completed", end_time=old))
    fresh = storage.register_trial(
        make_trial(exp_id, x=9.0, status="reserved", heartbeat=datetime.datetime.utcnow())
    )
    storage.set_trial_status(fresh, "completed", was="reserved")
    (row,) = json.loads(run(capsys, "--uri", uri, "status", "--json")[1])
    assert row["completed"] == 4 and row["completed/min"] == 1


def test_a_global_config_orion_refuses_is_one_clear_line(uri, tmp_path):
    """A ``uri:`` key under ``storage`` in the global Oríon config makes Oríon's import raise
    (every `orion` command shows a traceback): orion-redis says so in one line and, with
    --uri, still answers."""
    (tmp_path / "orion.core").mkdir()
    (tmp_path / "orion.core" / "orion_config.yaml").write_text(
        "storage:\n  type: redis\n  uri: redis://127.0.0.1:1/0\n"
    )
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "orion_track_redis"]
    given = subprocess.run(
        [*cli, "--uri", uri, "status"], env=env, capture_output=True, text=True, timeout=120
    )
    assert given.returncode == 0, given.stderr
    assert "no experiment" in given.stdout
    assert "Traceback" not in given.stderr and "orion_config.yaml" in given.stderr
    missing = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert "'uri'" in missing.stderr and "storage.database.host" in missing.stderr


def test_holders_shows_who_holds_what_and_what_was_recovered(capsys, uri, monkeypatch):
    """orion-redis holders: the reserved trial's host:pid and Slurm job_task, its lease; then,
    once its lease ended and another worker requeued it, the recovery; status counts it."""
    from orion_track_redis.store import lease

    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setattr(lease.HOLDER, "_record", None)
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="held")
    storage.register_trial(make_trial(exp_id, x=1.0))
    trial = storage.reserve_trial(Exp(exp_id))
    monkeypatch.setattr(lease.HOLDER, "_record", None)
    code, out = run(capsys, "--uri", uri, "holders", "held")
    assert code == 0 and trial.id in out and "(Slurm job 77_3)" in out
    assert "0 trials recovered" in out

    ek = storage.backend.experiment_keys(exp_id)
    seconds, micros = storage.client.time()
    now = seconds + micros / 1e6
    storage.client.zadd(ek.leases, {trial.id: now - 3})
    storage.client.hset(ek.lease_clock, mapping={"resumed": now - 100, "last": now})
    code, out = run(capsys, "--uri", uri, "lost", "held", "--requeue")
    assert "(Slurm job 77_3)" in out and "requeued 1" in out
    code, out = run(capsys, "--uri", uri, "holders", "held", "--json")
    data = json.loads(out)
    assert data["reserved"] == [] and data["recovered"] == 1
    (record,) = data["recoveries"]
    assert record["trial"] == trial.id and record["holder"].endswith("(Slurm job 77_3)")
    assert record["lease_ended_s_before"] >= 3
    code, out = run(capsys, "--uri", uri, "status", "held", "--json")
    assert json.loads(out)[0]["recovered"] == 1


def test_export_observes_the_backlog_first(capsys, uri, redis_server, tmp_path):
    """A batching fleet's stored state lags by the completions waiting in its backlog; an
    export (and a copy: transfer.observe_backlog) observes them first."""
    exp = build_experiment(
        "lagging",
        space={"x": "uniform(0, 1)"},
        algorithm={"random": {"seed": 1}},
        max_trials=10,
        storage={"type": "redis", "uri": uri},
    )
    storage = exp._experiment._storage
    for _ in range(2):
        trial = exp.suggest()
        exp.observe(trial, [{"name": "loss", "type": "objective", "value": 1.0}])
    assert storage.backlog_length(uid=exp.id) == 1  # the second produce observed the first
    path = tmp_path / "dump.jsonl"
    code, out = run(capsys, "--uri", uri, "export", str(path))
    assert code == 0 and "observed 1 waiting trial first" in out
    assert storage.backlog_length(uid=exp.id) == 0
    registry = storage.get_algorithm_lock_info(uid=exp.id).state["algorithm"]["registry"]
    assert sorted(t.status for t in registry["_trials"].values()) == ["completed"] * 2
    exp.close()
