"""Redis memory per typical trial: MEMORY USAGE of the experiment's keys and used_memory's delta."""

from __future__ import annotations

import json
import uuid

from benchmarks.common import _completed_trial, _experiment_config, _redis_storage


def _purge(client):
    try:
        client.execute_command("MEMORY", "PURGE")  # jemalloc only
    except Exception:  # noqa: BLE001
        pass


def section_memory(cfg, server):
    prefix = f"mem-{uuid.uuid4().hex[:6]}"
    storage = _redis_storage(server.url, prefix)
    client = server.client()
    config = _experiment_config(prefix)
    storage.create_experiment(config)
    exp_id = config["_id"]
    m = cfg["mem_trials"]
    _purge(client)
    before = client.info("memory")["used_memory"]
    for i in range(m):
        storage.register_trial(_completed_trial(exp_id, 2, i))
    _purge(client)
    after = client.info("memory")["used_memory"]
    keys = list(client.scan_iter(match="{" + prefix + ":*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.memory_usage(key, samples=0)
    replies = pipe.execute()
    by_type = {}
    for _key, kind, usage in zip(keys, replies[::2], replies[1::2]):
        kind = kind.decode() if isinstance(kind, bytes) else kind
        entry = by_type.setdefault(kind, {"keys": 0, "bytes": 0})
        entry["keys"] += 1
        entry["bytes"] += usage or 0
    total = sum(e["bytes"] for e in by_type.values())
    sample = storage.fetch_trials(uid=exp_id)[0].to_dict()
    return {
        "trials": m,
        "bytes_per_trial": total / m,
        "used_memory_delta_per_trial": (after - before) / m,
        "by_key_type": by_type,
        "trial_json_bytes": len(json.dumps(sample, default=str)),
    }
