"""fetch_trials (cold, repeated, 1% changed; ours vs Legacy+EphemeralDB) and the per-call cost of
the other calls as the experiment grows."""

from __future__ import annotations

import gc
import statistics
import time
import uuid

from benchmarks.common import (
    _bulk_legacy,
    _completed_trial,
    _Exp,
    _experiment_config,
    _legacy,
    _log,
    _new_trial,
    _redis_storage,
    _stats_us,
    _timed,
)


def _populate(storage, exp_id, n, pending):
    for i in range(n - pending):
        storage.register_trial(_completed_trial(exp_id, 0, i))
    for i in range(pending):
        storage.register_trial(_new_trial(exp_id, 1, i))


def _fetch_experiment(server, n, pending):
    """Our experiment of ``n`` trials (``pending`` of them new): (writer, exp_id, exp, reg/s)."""
    prefix = f"fetch-{n}-{uuid.uuid4().hex[:6]}"
    writer = _redis_storage(server.url, prefix)
    config = _experiment_config(prefix)
    writer.create_experiment(config)
    t0 = time.perf_counter()
    _populate(writer, config["_id"], n, pending)
    return writer, config["_id"], _Exp(config["_id"]), n / (time.perf_counter() - t0)


def _ephemeral_experiment(n, pending):
    """The same experiment in Legacy+EphemeralDB (this process's memory): (storage, id, exp)."""
    storage = _legacy("ephemeraldb")
    config = _experiment_config(f"eph-{n}")
    storage.create_experiment(config)
    exp_id = config["_id"]
    _bulk_legacy(storage, exp_id, n - pending)  # one by one is O(n) each in EphemeralDB
    storage._db.write("trials", data=[_new_trial(exp_id, 1, i).to_dict() for i in range(pending)])
    return storage, exp_id, _Exp(exp_id)


def _touch(storage, completed, r, k):
    """Rewrite the r-th slice of k completed trials (a 1% change)."""
    for trial in completed[r * k : (r + 1) * k]:
        storage.set_trial_status(trial, "completed", was="completed")


def _fetch_rows(server, n, ours, eph, reps):
    """Cold, repeated and 1%-changed fetches of ours, each rep alternating with the same
    fetch of Legacy+EphemeralDB (when ``eph``): machine drift hits both alike."""
    writer, exp_id, exp, _ = ours
    cold, ecold, changed, echanged = [], [], [], []
    # gc.collect() before every timed fetch, of both backends: a garbage-collector pass due to
    # the previous fetch's garbage would otherwise land in whichever fetch comes next
    for _ in range(reps):
        reader = _redis_storage(server.url, writer.backend.opts.prefix)  # no cache: a new process
        gc.collect()
        t0 = time.perf_counter()
        got = reader.fetch_trials(uid=exp_id)
        cold.append(time.perf_counter() - t0)
        assert len(got) == n, (len(got), n)
        del got
        if eph:
            gc.collect()
            ecold += _timed(lambda: eph[0].fetch_trials(uid=eph[1]), 1)
    reader = _redis_storage(server.url, writer.backend.opts.prefix)
    reader.fetch_trials(uid=exp_id)
    unchanged = _timed(lambda: reader.fetch_trials(uid=exp_id), reps)
    k = max(1, n // 100)
    completed = writer.fetch_trials_by_status(exp, "completed")
    ecompleted = eph[0].fetch_trials_by_status(eph[2], "completed") if eph else []
    for r in range(reps):
        _touch(writer, completed, r, k)  # by another storage object than the reader
        gc.collect()
        t0 = time.perf_counter()
        got = reader.fetch_trials(uid=exp_id)
        changed.append(time.perf_counter() - t0)
        assert len(got) == n
        if eph:
            _touch(eph[0], ecompleted, r, k)
            gc.collect()
            echanged += _timed(lambda: eph[0].fetch_trials(uid=eph[1]), 1)
    rows = [
        {
            "backend": "redis",
            "trials": n,
            "kind": kind,
            "changed": k if "1%" in kind else 0,
            **_stats_us(samples),
        }
        for kind, samples in (
            ("cold", cold),
            ("repeated, unchanged", unchanged),
            ("repeated, 1% changed", changed),
        )
    ]
    if eph:
        rows += [
            {
                "backend": "ephemeraldb",
                "trials": n,
                "kind": "cold",
                "changed": 0,
                **_stats_us(ecold),
            },
            {
                "backend": "ephemeraldb",
                "trials": n,
                "kind": "repeated, 1% changed",
                "changed": k,
                **_stats_us(echanged),
            },
        ]
    _log(
        f"  fetch {n:>6} trials: cold {statistics.median(cold) * 1e3:.1f} ms"
        + (f" (EphemeralDB {statistics.median(ecold) * 1e3:.1f} ms)" if eph else "")
        + f", 1% changed {statistics.median(changed) * 1e3:.2f} ms"
    )
    return rows


def _growth_rows(exps, per_call, pending):
    """Per-call cost at every experiment size, the sizes interleaved call by call (a slow
    moment of the machine then hits every size alike, not just the one measured then)."""
    sizes = sorted(exps)
    reserves = per_call // 2 if pending >= per_call else pending // 2
    reserved = {n: [] for n in sizes}
    ops = (
        (
            "reserve_trial",
            reserves,
            lambda n, i: reserved[n].append(exps[n][0].reserve_trial(exps[n][2])),
        ),
        (
            "set_trial_status",
            reserves,
            lambda n, i: exps[n][0].set_trial_status(reserved[n][i], "completed", was="reserved"),
        ),
        ("fetch_lost_trials", per_call, lambda n, i: exps[n][0].fetch_lost_trials(exps[n][2])),
        (
            "fetch_pending_trials",
            max(5, per_call // 4),
            lambda n, i: exps[n][0].fetch_pending_trials(exps[n][2]),
        ),
        (
            "count_completed_trials",
            per_call,
            lambda n, i: exps[n][0].count_completed_trials(exps[n][2]),
        ),
    )
    rows = []
    for op, count, call in ops:
        samples = {n: [] for n in sizes}
        for i in range(count):
            for n in sizes:
                t0 = time.perf_counter()
                call(n, i)
                samples[n].append(time.perf_counter() - t0)
        rows += [
            {"backend": "redis", "trials": n, "op": op, **_stats_us(samples[n])} for n in sizes
        ]
    return rows


def section_fetch(cfg, server):
    reps, per_call = cfg["fetch_repeats"], cfg["per_call_samples"]
    pending = {n: min(cfg["pending"], n // 2) for n in cfg["fetch_sizes"]}
    exps = {n: _fetch_experiment(server, n, pending[n]) for n in cfg["fetch_sizes"]}
    eph = {n: _ephemeral_experiment(n, min(cfg["pending"], n // 2)) for n in cfg["ephemeral_sizes"]}
    rows = [
        row for n in cfg["fetch_sizes"] for row in _fetch_rows(server, n, exps[n], eph.get(n), reps)
    ]
    growth = _growth_rows(exps, per_call, min(pending.values()))
    return (
        {"rows": rows, "register_per_s": {str(n): e[3] for n, e in exps.items()}},
        {"rows": growth},
    )
