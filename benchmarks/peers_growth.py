"""The growth workload of benchmarks/peers.py: build an experiment/study of N completed trials
on each peer, then time opening it and reading every trial in a fresh process (``open_main``,
imports not timed); bytes per trial on the server."""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid

from benchmarks.peers_common import OURS, SCRIPT, Env, _optuna_storage


def _build_orion_redis(env: Env, n: int) -> tuple[dict, int]:
    from benchmarks.common import _completed_trial, _experiment_config, _redis_storage

    prefix = f"peers-growth-{n}-{uuid.uuid4().hex[:6]}"
    client = env.redis.client()
    before = client.info("memory")["used_memory"]
    storage = _redis_storage(f"{env.redis.url}/0", prefix)
    config = _experiment_config(prefix)
    storage.create_experiment(config)
    for i in range(n):
        storage.register_trial(_completed_trial(config["_id"], 0, i))
    used = client.info("memory")["used_memory"] - before
    return {
        "kind": "orion-redis",
        "uri": f"{env.redis.url}/0?prefix={prefix}",
        "name": prefix,
    }, used


def _build_orion_pickleddb(env: Env, n: int) -> tuple[dict, int]:
    from benchmarks.common import _bulk_legacy, _experiment_config, _legacy

    path = env.tmp / f"growth-{n}-{uuid.uuid4().hex[:6]}.pkl"
    storage = _legacy("pickleddb", path)
    config = _experiment_config(f"growth-{n}")
    storage.create_experiment(config)
    _bulk_legacy(storage, config["_id"], n)
    return {
        "kind": "orion-pickleddb",
        "path": str(path),
        "name": config["name"],
    }, path.stat().st_size


def _build_optuna(env: Env, peer: str, n: int) -> tuple[dict, int]:
    import optuna
    from optuna.distributions import FloatDistribution

    spec = env.optuna_spec(peer if peer != "optuna-grpc-pg" else "optuna-rdb-pg", f"growth-{n}")
    if peer == "optuna-journal-redis":
        client = env.redis.client()
        size = lambda: client.info("memory")["used_memory"]  # noqa: E731
    else:
        size = env.pg.database_size
    storage = _optuna_storage(spec)
    study = optuna.create_study(study_name=spec["study"], storage=storage)
    before = size()
    dists = {"x": FloatDistribution(-5, 5), "y": FloatDistribution(-5, 5)}
    batch = []
    for i in range(n):
        x, y = (i % 1000) / 100 - 5, (i // 1000) / 100 - 5
        batch.append(
            optuna.trial.create_trial(
                params={"x": x, "y": y}, distributions=dists, value=(x - 2) ** 2 + (y + 1) ** 2
            )
        )
    study.add_trials(batch)
    return spec, size() - before


def open_main(spec: dict) -> int:
    """Child mode: import, then time opening the experiment/study and reading every trial."""
    import importlib

    kind = spec["kind"]
    if kind.startswith("orion"):
        # imports not timed: these, and what the backend's one-time Oríon patches import
        # (orion.client, Oríon's Dask executor), already loaded in any `orion hunt`
        from orion.storage.legacy import Legacy

        from orion_track_redis import Redis

        for mod in (
            "orion.client",
            "orion.executor.dask_backend",
            "orion.core.worker.producer",
            "orion.core.worker.experiment",
        ):
            with contextlib.suppress(ImportError):
                importlib.import_module(mod)
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for mod in (
            "optuna.storages.journal",
            "optuna.storages._rdb.storage",
            "optuna.storages._rdb.models",
            "sqlalchemy",
            "alembic",
            "alembic.command",
            "psycopg2",
            "optuna.storages._grpc.client",
        ):
            with contextlib.suppress(ImportError):
                importlib.import_module(mod)
    t0 = time.perf_counter()
    if kind == "orion-redis":
        storage = Redis(uri=spec["uri"])
    elif kind == "orion-pickleddb":
        storage = Legacy(database={"type": "pickleddb", "host": spec["path"]})
    if kind.startswith("orion"):
        (exp,) = storage.fetch_experiments({"name": spec["name"]})
        n = len(storage.fetch_trials(uid=exp["_id"]))
    else:
        study = optuna.load_study(study_name=spec["study"], storage=_optuna_storage(spec))
        n = len(study.get_trials(deepcopy=False))
    print(json.dumps({"open_s": time.perf_counter() - t0, "n": n}), flush=True)
    return 0


def run_growth(env: Env, peer: str, n: int, repeats: int, built: dict) -> dict:
    t0 = time.perf_counter()
    if peer == OURS:
        spec, used = _build_orion_redis(env, n)
    elif peer == "orion-pickleddb":
        spec, used = _build_orion_pickleddb(env, n)
    elif peer == "optuna-grpc-pg":  # the RDB study of the same size, read through the proxy
        spec, used = dict(built[("optuna-rdb-pg", n)]), None
        spec.update(kind="grpc", port=env.proxy.port)
    else:
        spec, used = _build_optuna(env, peer, n)
    build_s = time.perf_counter() - t0
    built[(peer, n)] = spec
    times = []
    for _ in range(repeats):
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "_open", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{peer} open failed:\n{proc.stderr[-2000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        if got["n"] != n:
            raise RuntimeError(f"{peer} read {got['n']} trials of {n}")
        times.append(got["open_s"])
    return {
        "peer": peer,
        "trials": n,
        "open_s": statistics.median(times),
        "open_all_s": times,
        "build_s": build_s,
        "bytes": used,
        "bytes_per_trial": used / n if used else None,
        "bytes_what": {
            OURS: "Redis used_memory delta",
            "optuna-journal-redis": "Redis used_memory delta",
            "optuna-rdb-pg": "pg_database_size delta",
            "orion-pickleddb": "PickledDB file size",
        }.get(peer),
    }
