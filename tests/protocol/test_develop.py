"""Oríon develop's storage protocol on this backend (issue 25, item 2; ``develop.py``).

Always run: develop's additions (``write_algorithm_lock``, ``create_experiment``'s lock fields,
``delete_benchmark``, the lock's heartbeat) through the installed Oríon 0.2.7, on fakeredis and
a real redis-server.

With ``ORION_DEVELOP_PYTHON`` (the python of a venv holding an Oríon develop checkout installed
with ``pip install -e`` and this package with ``pip install --no-deps -e``), also, in that python,
against this session's redis-server: develop's own storage tests
(``tests/unittests/storage/test_storage.py``), and ``orion db load``/``orion db dump`` through
develop's own fixtures and checks (``tests/functional/commands/conftest.py``). The checkout is
found from that python (``ORION_DEVELOP_SRC`` overrides); this checkout's package comes first on
its path. Without it these skip, saying why.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from orion.storage.base import LockAcquisitionTimeout, LockedAlgorithmState

from conftest import make_storage
from helpers import BASE_TIME, create_experiment, experiment_config
from orion_track_redis import develop

REPO = Path(__file__).resolve().parents[2]
OLD = datetime.datetime(2020, 1, 2, 3, 4, 5, 678901)


@pytest.fixture(params=("fakeredis", "redis"))
def store(request):
    return make_storage(request.param, request)


def lock_of(storage, exp_id):
    info = storage.get_algorithm_lock_info(uid=exp_id)
    return info.state, info.configuration, info.locked, info.heartbeat


# -- write_algorithm_lock -----------------------------------------------------------------------
def test_write_algorithm_lock_writes_the_given_fields(store):
    assert store.write_algorithm_lock("e", {"random": {}}, 0, {"seen": [1, 2]}, OLD) == 1
    assert lock_of(store, "e") == ({"seen": [1, 2]}, {"random": {}}, 0, OLD)
    info = store.get_algorithm_lock_info(uid="e")
    assert isinstance(info, LockedAlgorithmState)


def test_write_algorithm_lock_leaves_an_existing_record(store):
    store.write_algorithm_lock("e", {"random": {}}, state={"v": 1}, heartbeat=OLD)
    assert store.write_algorithm_lock("e", {"tpe": {}}, 1, {"v": 2}, BASE_TIME) == 0
    assert lock_of(store, "e") == ({"v": 1}, {"random": {}}, 0, OLD)


def test_write_algorithm_lock_defaults(store):
    before = datetime.datetime.utcnow()
    store.write_algorithm_lock("e", {"random": {}})
    state, configuration, locked, heartbeat = lock_of(store, "e")
    assert (state, configuration, locked) == (None, {"random": {}}, 0)
    assert before <= heartbeat <= datetime.datetime.utcnow()


def test_a_rewritten_lock_gets_a_new_heartbeat(store):
    store.write_algorithm_lock("e", {"random": {}}, heartbeat=OLD)
    assert store.delete_algorithm_lock(uid="e") == 1
    store.write_algorithm_lock("e", {"random": {}}, heartbeat=BASE_TIME)
    assert lock_of(store, "e")[3] == BASE_TIME


# -- create_experiment's lock fields ------------------------------------------------------------
def test_create_experiment_takes_the_lock_fields(store):
    config = experiment_config("a")
    store.create_experiment(config, algo_locked=0, algo_state={"s": 1}, algo_heartbeat=OLD)
    assert lock_of(store, config["_id"]) == ({"s": 1}, config["algorithm"], 0, OLD)
    with store.acquire_algorithm_lock(uid=config["_id"], timeout=1) as held:
        assert held.state == {"s": 1}


def test_create_experiment_without_lock_fields_is_as_before(store):
    before = datetime.datetime.utcnow()
    exp_id = create_experiment(store, name="a")
    state, configuration, locked, heartbeat = lock_of(store, exp_id)
    assert (state, configuration, locked) == (None, {"random": {"seed": 1}}, 0)
    assert before <= heartbeat <= datetime.datetime.utcnow()


def test_a_lock_created_held_is_held_until_its_ttl(request):
    """develop's algo_locked=1 (a dumped lock that was held): held like any hold, so it frees
    itself after lock_ttl (Legacy's stays locked until `orion db release`)."""
    storage = make_storage("redis", request, lock_ttl=1)
    config = experiment_config("a")
    storage.create_experiment(config, algo_locked=1, algo_state={"s": 1}, algo_heartbeat=OLD)
    assert lock_of(storage, config["_id"])[2] == 1
    with pytest.raises(LockAcquisitionTimeout):
        with storage.acquire_algorithm_lock(uid=config["_id"], timeout=0.2, retry_interval=0.05):
            pass
    with storage.acquire_algorithm_lock(uid=config["_id"], timeout=5, retry_interval=0.05) as held:
        assert held.state == {"s": 1}
    assert lock_of(storage, config["_id"])[2] == 0


# -- the heartbeat ------------------------------------------------------------------------------
def test_the_heartbeat_moves_at_each_acquisition(store):
    store.write_algorithm_lock("e", {"random": {}}, heartbeat=OLD)
    with store.acquire_algorithm_lock(uid="e", timeout=1):
        during = lock_of(store, "e")
    assert during[2] == 1
    assert abs(during[3] - datetime.datetime.utcnow()) < datetime.timedelta(seconds=5)
    assert lock_of(store, "e")[2:] == (0, during[3])  # Legacy's moves at release too: ours not


def test_a_record_of_0_2_7_has_its_heartbeat_from_its_first_acquisition(store):
    store.initialize_algorithm_lock("e", {"random": {}})  # 0.2.7's name: no heartbeat field
    assert lock_of(store, "e")[3] is None
    with store.acquire_algorithm_lock(uid="e", timeout=1):
        pass
    assert abs(lock_of(store, "e")[3] - datetime.datetime.utcnow()) < datetime.timedelta(seconds=5)


def test_heartbeat_of():
    epoch = OLD.replace(tzinfo=datetime.timezone.utc).timestamp()
    written = develop.codec.dumps(OLD).encode()
    assert develop.heartbeat_of(None, None, "k") is None
    assert develop.heartbeat_of(None, written, "k") == OLD
    later = f"{epoch + 1:.6f}".encode()
    assert develop.heartbeat_of(later, written, "k") == OLD + datetime.timedelta(seconds=1)
    earlier = f"{epoch - 1:.6f}".encode()
    assert develop.heartbeat_of(earlier, written, "k") == OLD
    assert develop.heartbeat_of(later, None, "k") == OLD + datetime.timedelta(seconds=1)


def test_locked_state_with_either_orions_class(monkeypatch):
    info = develop.locked_state({"s": 1}, {"random": {}}, 1, OLD)  # the installed Oríon's
    assert (info.state, info.configuration, info.locked, info.heartbeat) == (
        {"s": 1},
        {"random": {}},
        1,
        OLD,
    )

    class WithHeartbeat(LockedAlgorithmState):  # develop's signature
        def __init__(self, state, configuration, locked=True, heartbeat=None):
            super().__init__(state, configuration, locked)
            self.given = heartbeat

    monkeypatch.setattr(develop, "LockedAlgorithmState", WithHeartbeat)
    monkeypatch.setattr(develop, "_TAKES_HEARTBEAT", True)
    info = develop.locked_state({"s": 1}, {"random": {}}, 0, OLD)
    assert isinstance(info, WithHeartbeat) and info.given == OLD and info.locked == 0


# -- delete_benchmark ---------------------------------------------------------------------------
def test_delete_benchmark(store):
    for name in ("a", "b", "c"):
        store.create_benchmark({"name": name, "targets": []})
    by_name = {b["name"]: b["_id"] for b in store.fetch_benchmark({})}
    assert store.delete_benchmark({"_id": by_name["a"]}) == 1
    assert store.delete_benchmark({"_id": by_name["a"]}) == 0
    assert store.delete_benchmark({"name": "nope"}) == 0
    assert [b["name"] for b in store.fetch_benchmark({})] == ["b", "c"]
    store.create_benchmark({"name": "a"})  # the name is free again
    assert store.delete_benchmark({}) == 3
    assert store.fetch_benchmark({}) == []


# -- Oríon develop itself -----------------------------------------------------------------------
STORAGE_PLUGIN = '''
"""develop's TestStorage on this backend (one more parameter beside Legacy's PickledDB)."""
import os
import pytest

# the URI in database.host: Oríon's storage configuration keeps no other key (see the README);
# OrionState puts a fresh temporary file name in ${file}: a prefix of its own per state
REDIS = {"type": "redis",
         "database": {"host": os.environ["ORION_REDIS_TEST_URI"] + "/0?prefix=${file}"}}
_done = []


def _legacy_conventions():
    """BaseOrionState (every backend but Legacy) lacks two conventions of LegacyOrionState that
    the tests rely on: trials name their experiment ("default_name") and get_experiment sets
    the experiment's id to its name, whose lock the state writes. Without them 12 tests find
    no trials under the experiment's real id, on any backend (upstream runs none)."""
    from orion.testing import state

    base = state.BaseOrionState
    get_experiment, set_tables = base.get_experiment, base._set_tables

    def get_named(self, name, version=None):
        exp = get_experiment(self, name, version)
        exp._id = exp.name
        return exp

    def set_named(self):
        set_tables(self)
        for exp in self._experiments:
            self.storage.write_algorithm_lock(exp["name"], exp.get("algorithm"))

    base.get_experiment, base._set_tables = get_named, set_named


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc):
    backends = getattr(metafunc.module, "storage_backends", None)
    if metafunc.cls is None or metafunc.cls.__name__ != "TestStorage" or backends is None:
        return
    if not _done:
        _legacy_conventions()
        _done.append(True)
    if not any(getattr(b, "id", None) == "redis" for b in backends):
        backends.append(pytest.param(REDIS, id="redis"))
'''

FIXTURES_PLUGIN = '''
"""develop's conftests (tests/, tests/functional/commands/) as plugins of a test outside it."""
import importlib.util
import os
import sys


def _load(name, *parts):
    path = os.path.join(os.environ["ORION_DEVELOP_SRC"], "tests", *parts)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_load("orion_develop_conftest", "conftest.py")
_load("orion_develop_commands_conftest", "functional", "commands", "conftest.py")
pytest_plugins = ["orion_develop_conftest", "orion_develop_commands_conftest"]
'''

DUMP_LOAD_TESTS = '''
"""orion db load / dump between develop's PickledDB fixture and this backend."""
import os
import pickle
import uuid

import orion.core.cli
import pytest
from orion.core.io.database.pickleddb import PickledDB
from orion.storage.base import setup_storage


def execute(command, code=0):
    assert orion.core.cli.main(command.split(" ")) == code


@pytest.fixture
def redis_dst(tmp_path):
    uri = f"{os.environ['ORION_REDIS_TEST_URI']}/0?prefix=dl-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "redis.yaml"
    config.write_text(f"storage:\\n  type: redis\\n  database:\\n    host: '{uri}'\\n")
    return setup_storage({"type": "redis", "database": {"host": uri}}), str(config)


def algos(db):
    """(name, version) -> (state, locked, heartbeat) of each algorithm lock."""
    exps = {e["_id"]: (e["name"], e["version"]) for e in db.read("experiments")}
    return {exps[a["experiment"]]: (pickle.loads(a["state"]) if a["state"] else None,
                                    a["locked"], a["heartbeat"]) for a in db.read("algo")}


def test_load_then_dump(pkl_experiments_and_benchmarks, redis_dst, tmp_path, testing_helpers):
    storage, config = redis_dst
    src = pkl_experiments_and_benchmarks
    execute(f"db load {src} -c {config}")
    assert len(storage.fetch_experiments({})) == 3
    assert len(storage.fetch_benchmark({})) == 3
    dumped = str(tmp_path / "dumped.pkl")
    execute(f"db dump -c {config} -o {dumped}")
    testing_helpers.assert_tested_db_structure(PickledDB(dumped))
    testing_helpers.assert_tested_trial_status(PickledDB(dumped))
    assert algos(PickledDB(dumped)) == algos(PickledDB(src))


def test_load_resolves_conflicts(pkl_experiments_and_benchmarks, redis_dst, tmp_path,
                                 testing_helpers):
    storage, config = redis_dst
    src = pkl_experiments_and_benchmarks
    execute(f"db load {src} -c {config}")
    execute(f"db load {src} -c {config}", code=1)  # a conflict, and no --resolve
    for resolve in ("ignore", "overwrite"):  # overwrite: delete_benchmark, delete_*
        execute(f"db load {src} -r {resolve} -c {config}")
        dumped = str(tmp_path / f"{resolve}.pkl")
        execute(f"db dump -c {config} -o {dumped}")
        testing_helpers.assert_tested_db_structure(PickledDB(dumped))
        assert algos(PickledDB(dumped)) == algos(PickledDB(src))
    execute(f"db load {src} -r bump -n test_single_exp_child -c {config}")
    found = storage.fetch_experiments({"name": "test_single_exp_child"})
    assert sorted(e["version"] for e in found) == [1, 2]
'''

PROTOCOL_CHECK = """
import inspect
from orion.storage.base import BaseStorageProtocol
from orion_track_redis import Redis
assert hasattr(BaseStorageProtocol, "write_algorithm_lock"), "this Oríon is not develop"
missing = [name for name, _ in inspect.getmembers(BaseStorageProtocol, inspect.isfunction)
           if not name.startswith("_")
           and getattr(Redis, name) is getattr(BaseStorageProtocol, name)]
assert not missing, f"not implemented: {missing}"
print("ok")
"""


def _develop_env():
    """(python, checkout) of Oríon develop, or a reason to skip."""
    python = os.environ.get("ORION_DEVELOP_PYTHON")
    if not python:
        return None, "set ORION_DEVELOP_PYTHON to a python with Oríon develop installed (-e)"
    if not os.access(python, os.X_OK):
        return None, f"ORION_DEVELOP_PYTHON={python} is not an executable"
    src = os.environ.get("ORION_DEVELOP_SRC")
    if not src:
        probe = subprocess.run(
            [
                python,
                "-c",
                "import pathlib, orion.storage.base as b; "
                "print(pathlib.Path(b.__file__).resolve().parents[3])",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if probe.returncode:
            return None, f"{python} cannot import Oríon: {probe.stderr.strip()[-300:]}"
        src = probe.stdout.strip()
    if not (Path(src) / "tests" / "unittests" / "storage" / "test_storage.py").is_file():
        return None, f"no Oríon checkout with its tests at {src} (set ORION_DEVELOP_SRC)"
    return (python, src), None


@pytest.fixture(scope="module")
def develop_env():
    found, reason = _develop_env()
    if found is None:
        pytest.skip(reason)
    return found


def run_develop(develop_env, redis_server, tmp_path, args, timeout=600):
    python, src = develop_env
    env = dict(
        os.environ,
        ORION_DEVELOP_SRC=src,
        ORION_REDIS_TEST_URI=redis_server.url,
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]),
    )
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [python, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def _pytest(develop_env, redis_server, tmp_path, files: dict, args):
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    proc = run_develop(
        develop_env,
        redis_server,
        tmp_path,
        [
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rA",
            "--color=no",
            "-W",
            "ignore::pytest.PytestAssertRewriteWarning",
            *args,
        ],
    )
    print(proc.stdout[-20000:], proc.stderr[-5000:], file=sys.stderr)
    return proc


def test_develop_protocol_is_implemented(develop_env, redis_server, tmp_path):
    proc = run_develop(develop_env, redis_server, tmp_path, ["-c", PROTOCOL_CHECK], timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_develops_storage_tests_pass_on_this_backend(develop_env, redis_server, tmp_path):
    src = develop_env[1]
    proc = _pytest(
        develop_env,
        redis_server,
        tmp_path,
        {"orion_redis_storage_plugin.py": STORAGE_PLUGIN},
        [
            "-p",
            "orion_redis_storage_plugin",
            "--rootdir",
            src,
            f"{src}/tests/unittests/storage/test_storage.py",
        ],
    )
    ours = [line for line in proc.stdout.splitlines() if line.endswith("[redis]")]
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert len(ours) >= 30 and all(line.startswith("PASSED") for line in ours), ours


def test_develops_db_load_and_dump_on_this_backend(develop_env, redis_server, tmp_path):
    proc = _pytest(
        develop_env,
        redis_server,
        tmp_path,
        {"orion_develop_fixtures.py": FIXTURES_PLUGIN, "test_redis_dump_load.py": DUMP_LOAD_TESTS},
        ["-p", "orion_develop_fixtures", "--rootdir", str(tmp_path), "test_redis_dump_load.py"],
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert proc.stdout.count("\nPASSED ") == 2
