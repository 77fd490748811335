"""Small builders shared by the tests."""

from __future__ import annotations

import datetime

from orion.core.worker.trial import Trial

BASE_TIME = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901)
# search spaces that every built-in algorithm accepts (with a fidelity, without, reals only)
FIDELITY_SPACE = {
    "x": "uniform(0, 1)",
    "y": "loguniform(1e-3, 1)",
    "c": "choices(['a', 'b', 3])",
    "i": "uniform(0, 10, discrete=True)",
    "f": "fidelity(1, 8, base=2)",
}
FLAT_SPACE = {k: v for k, v in FIDELITY_SPACE.items() if k != "f"}
REAL_SPACE = {"x": "uniform(0, 1)", "y": "loguniform(1e-3, 1)"}


def experiment_config(name="exp", version=1, **extra):
    config = {
        "name": name,
        "version": version,
        "space": {"x": "uniform(0, 10)"},
        "algorithm": {"random": {"seed": 1}},
        "metadata": {"user": "alice", "datetime": BASE_TIME, "orion_version": "0.2.7"},
        "refers": {"parent_id": None, "root_id": None, "adapter": []},
        "max_trials": 10,
    }
    config.update(extra)
    return config


def make_trial(exp_id, x=1.0, status="new", seconds=0, **extra):
    kwargs = dict(
        experiment=exp_id,
        status=status,
        params=[{"name": "/x", "type": "real", "value": x}],
        submit_time=BASE_TIME + datetime.timedelta(seconds=seconds),
    )
    kwargs.update(extra)
    return Trial(**kwargs)


def create_experiment(storage, **kwargs):
    """Create an experiment as Oríon's builder does: a root experiment (no parent) then gets
    its refers.root_id (ours stores it in the creating script already; Legacy needs the call)."""
    config = experiment_config(**kwargs)
    storage.create_experiment(config)
    orion_roots(storage, config)
    return config["_id"]


def orion_roots(storage, config) -> dict:
    """Oríon's builder's call right after creating a root experiment; the stored document."""
    refers = config.get("refers") or {}
    if refers.get("parent_id") is None:
        refers = {**refers, "root_id": config["_id"]}
        storage.update_experiment(uid=config["_id"], refers=refers)
    return {**config, "refers": refers}


class Exp:
    """Stand-in for an Experiment: the storage only reads ``.id`` / ``._id``."""

    def __init__(self, exp_id):
        self._id = exp_id

    @property
    def id(self):
        return self._id


def hunt_config(path, uri: str, working_dir, seed=None, worker: dict | None = None):
    """Write an `orion hunt --config` file for this backend at ``path`` and return it: the URI
    as ``database.host`` (Oríon 0.2.7 drops any other key of ``storage`` on this path), random
    search, and a ``working_dir`` shared by the fleet (without one, a worker that stops deletes
    the directories of trials other workers still run: they end broken)."""
    text = (
        f'storage:\n  type: redis\n  database:\n    host: "{uri}"\n'
        f'experiment:\n  working_dir: "{working_dir}"\n'
        f"  algorithms:\n    random:\n      seed: {'null' if seed is None else seed}\n"
    )
    if worker:
        text += "worker:\n" + "".join(f"  {key}: {value}\n" for key, value in worker.items())
    path.write_text(text)
    return path
