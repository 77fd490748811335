"""Read-mostly views for operators (``orion-redis``): server facts, per-experiment fleet status,
and purging one experiment. Uses the storage's keys and scripts; never KEYS/SCAN."""

from __future__ import annotations

import json

from orion_track_redis.keys import STATUSES
from orion_track_redis.server.checks import check_server, server_info
from orion_track_redis.store import lease


def server_time(storage) -> float:
    seconds, micros = storage.backend.client.time()
    return seconds + micros / 1e6


def info(storage) -> dict:
    """Server version, persistence, eviction policy, memory, schema and counts."""
    client = storage.backend.client
    facts = server_info(client) or {}
    experiments = storage.fetch_experiments({}, {"name": 1})
    pipe = client.pipeline(transaction=False)
    for doc in experiments:
        pipe.zcard(storage.backend.experiment_keys(doc["_id"]).all)
    trials = sum(pipe.execute()) if experiments else 0
    schema = client.get(storage.backend.keys.schema)
    data = {
        "uri": storage.backend.opts.redacted,
        "scope": "embedded, this host only"
        if storage.backend.opts.scheme == "embedded"
        else "shared (every worker given this URI)",
        "prefix": storage.backend.opts.prefix,
        "redis_version": facts.get("redis_version"),
        "executable": facts.get("executable"),  # which redis-server runs (Redis >= 6.2 says)
        "mode": facts.get("redis_mode", "standalone"),
        "aof": bool(facts.get("aof_enabled")),
        "rdb_save_points": facts.get("rdb_saves_configured"),
        "maxmemory_policy": facts.get("maxmemory_policy"),
        "used_memory": facts.get("used_memory_human"),
        "schema_version": int(schema) if schema else None,
        "experiments": len(experiments),
        "trials": trials,
        "warnings": check_server(facts, storage.backend.opts.redacted, log_warnings=False)
        if facts
        else ["INFO is not allowed for this user: server checks skipped"],
    }
    return data


def experiment_status(storage, doc: dict, details: bool = False) -> dict:
    """Counts by status, lost trials, lock state and recent completion rate of one experiment.

    ``details`` (``orion-redis metrics``) adds, read in the same round trip: ``waiters`` (lock
    waiters whose lease still runs), ``holder_age_s`` (seconds since the holder took the lock,
    None when free), ``hold_ms`` (the recorded hold durations, newest first, ``{P:E}:holds``)
    and ``last_completed_age_s`` (seconds since the latest completion, None before the first)."""
    ek = storage.backend.experiment_keys(doc["_id"])
    now = server_time(storage)
    pipe = storage.backend.client.pipeline(transaction=False)
    for status in STATUSES:
        pipe.zcard(ek.status(status))
    pipe.hmget(ek.lock, "fence", "acquired", "logbytes")
    pipe.hstrlen(ek.lock, "state")
    pipe.llen(ek.lock_log)
    pipe.get(ek.lock_holder)
    pipe.pttl(ek.lock_holder)
    pipe.zcount(ek.status("completed"), now - 60, now)
    pipe.llen(ek.unobserved)
    pipe.get(ek.recovered)
    if details:
        pipe.zcount(ek.lock_leases, f"({now * 1000:.0f}", "+inf")  # waiters whose lease runs
        pipe.lrange(ek.holds, 0, -1)
        pipe.zrange(ek.status("completed"), -1, -1, withscores=True)
    replies = pipe.execute()
    head = replies[: len(STATUSES) + 8]
    *counts, (fence, acquired, log_bytes), snapshot, log_entries = head[:-5]
    holder, pttl, per_minute, unobserved, recovered = head[-5:]
    lost = lease.lost_tokens(storage.backend.scripts, ek)
    row = {
        "experiment": doc.get("name"),
        "version": doc.get("version"),
        **dict(zip(STATUSES, counts)),
        "lost": len(lost),
        "recovered": int(recovered or 0),
        "unobserved": unobserved,
        # the algorithm state (state/delta.py): the snapshot and the log of deltas since it
        "state_kib": round((snapshot + int(log_bytes or 0)) / 1024, 1),
        "state_log": log_entries,
    }
    if fence is None:
        lock = "none"
    elif holder is None:
        lock = "free"
    else:
        lock = "held" if pttl > 0 else "stale"  # a holder without TTL never frees itself
    held_s = now - float(acquired) if holder and acquired else None
    row.update(
        {
            "lock": lock,
            "holder": holder.decode() if holder else "",
            "held_s": round(held_s, 1) if held_s is not None else "",
            "fence": int(fence) if fence is not None else "",
            "completed/min": per_minute,
        }
    )
    if details:
        waiters, holds, last = replies[len(STATUSES) + 8 :]
        row.update(
            {
                "waiters": waiters,
                "holder_age_s": held_s,
                "hold_ms": [float(h) for h in holds],
                "last_completed_age_s": max(now - last[0][1], 0.0) if last else None,
                "snapshot_bytes": snapshot,
                "log_bytes": int(log_bytes or 0),
            }
        )
    return row


def reservations(storage, exp_id) -> dict:
    """Who holds what: each reserved trial with its holder (host, pid, Slurm job and task),
    the seconds its lease still runs (negative: ended) and its heartbeat's age; and the trials
    recovered from dead holders (count, and the last 100: when, from whom)."""
    ek = storage.backend.experiment_keys(exp_id)
    now = server_time(storage)
    pipe = storage.backend.client.pipeline(transaction=False)
    pipe.zrange(ek.status("reserved"), 0, -1, withscores=True)
    pipe.hgetall(ek.holders)
    pipe.zrange(ek.leases, 0, -1, withscores=True)
    pipe.get(ek.recovered)
    pipe.lrange(ek.recoveries, 0, -1)
    reserved, holders, leases, recovered, records = pipe.execute()
    ends = {token.decode(): end for token, end in leases}
    holders = {k.decode(): v for k, v in holders.items()}
    rows = []
    for token, beat in reserved:
        trial = token.decode()
        info = lease.describe(holders.get(trial))
        end = ends.get(trial)
        rows.append(
            {
                "trial": ek.unescape_trial(trial),
                "holder": lease.where(info),
                "job": info.get("job", ""),
                "task": info.get("task", ""),
                "lease_left_s": round(end - now, 1) if end is not None else "",
                "heartbeat_age_s": round(now - beat, 1),
            }
        )
    history = []
    for raw in records:
        record = json.loads(raw)
        history.append(
            {
                "trial": ek.unescape_trial(record["trial"]),
                "holder": lease.where(lease.describe(record.get("holder"))),
                "recovered_s_ago": round(now - record["at"], 1),
                "lease_ended_s_before": round(record["at"] - record["lease_end"], 1),
            }
        )
    return {"reserved": rows, "recovered": int(recovered or 0), "recoveries": history}


def purge(storage, exp_id) -> dict:
    """Delete the experiment, its trials and its lock, and nothing else.

    The revision counter and the deletion tombstones stay: other processes' trial caches
    learn from them that the trials are gone."""
    trials = storage.delete_trials(uid=exp_id)
    lock = storage.delete_algorithm_lock(uid=exp_id)
    ek = storage.backend.experiment_keys(exp_id)  # the reservation leases' keys (one slot: one DEL)
    storage.backend.client.delete(
        ek.leases, ek.holders, ek.lease_clock, ek.recoveries, ek.recovered
    )
    experiment = storage.delete_experiment(uid=exp_id)
    return {"trials": trials, "lock": lock, "experiment": experiment}
