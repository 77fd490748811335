"""The targets of issue 5 evaluated on a run's results (PASS/FAIL), and the fleet rate the
algorithm lock allows (``fleet_bound``)."""

from __future__ import annotations

from benchmarks.common import OPS, _find, _ratio


def fleet_bound(res):
    """The fleet rate the algorithm lock allows, from the lock-hold anatomy. A trial costs one
    produce (hunt's pool_size defaults to n_workers = 1: one trial per produce) and one observe,
    each under the lock (with batched observation, this backend's default, the produce observes
    and the observe takes no hold): no fleet can complete more than 1 / (the holds of a trial)
    trials per second.
    Taken at the largest measured size <= K/2 (the mean size over the fleets' first K trials; a
    smaller size only raises the ceiling, so the bound stays generous)."""
    rows, fleet = res["lock_hold_anatomy"]["rows"], res["fleet"]
    k = fleet["pickleddb"]["first_k"]
    sizes = sorted({r["trials"] for r in rows})
    n = max([s for s in sizes if s <= k / 2] or sizes[:1])
    ceiling = {
        b: _find(rows, backend=b, trials=n)["ceiling_trials_per_s"]
        for b in ("redis", "ephemeraldb", "pickleddb")
    }
    pick, ours = fleet["pickleddb"]["first_k_trials_per_s"], fleet["redis"]["first_k_trials_per_s"]
    return {
        "first_k": k,
        "anatomy_trials": n,
        "ceiling_trials_per_s": ceiling,
        "best_ratio_any_storage": _ratio(ceiling["ephemeraldb"], pick),
        "ours_ceiling_ratio": _ratio(ceiling["redis"], pick),
        "ours_share_of_ceiling": _ratio(ours, ceiling["redis"]),
        "pickleddb_share_of_ceiling": _ratio(pick, ceiling["pickleddb"]),
    }


def evaluate_targets(res):
    targets = []

    def add(name, value, op, limit, unit=""):
        ok = (
            None
            if value is None
            else (
                value <= limit if op == "<=" else value >= limit if op == ">=" else value == limit
            )
        )
        targets.append(
            {"name": name, "value": value, "op": op, "target": limit, "unit": unit, "pass": ok}
        )

    cmds = res["commands_per_call"]["rows"]
    for op in OPS:
        row = _find(cmds, op=op)
        add(f"{op}: server commands per call", row and row["client_commands_per_call"], "==", 1)
    hot = res["hot_path"]["rows"]
    for op in OPS:
        ours, bare = (
            _find(hot, backend="redis", procs=1, op=op),
            _find(hot, backend="bare", procs=1, op=op),
        )
        add(
            f"{op}: latency / bare EVALSHA (1 process)",
            _ratio(ours and ours["median_us"], bare and bare["median_us"]),
            "<=",
            2.0,
            "×",
        )
    many = 8 if 8 in res["meta"]["config"]["procs"] else max(res["meta"]["config"]["procs"])
    for op in OPS:
        ours, bare = (
            _find(hot, backend="redis", procs=many, op=op),
            _find(hot, backend="bare", procs=many, op=op),
        )
        add(
            f"{op}: throughput / bare EVALSHA ({many} processes)",
            _ratio(ours and ours["throughput_per_s"], bare and bare["throughput_per_s"]),
            ">=",
            0.5,
            "×",
        )
    ours, pick = (
        _find(hot, backend="redis", procs=many, op="reserve_trial"),
        _find(hot, backend="pickleddb", procs=many, op="reserve_trial"),
    )
    add(
        f"reserve_trial: throughput / Legacy+PickledDB ({many} processes)",
        _ratio(ours and ours["throughput_per_s"], pick and pick["throughput_per_s"]),
        ">=",
        1000,
        "×",
    )
    growth = res["per_call_growth"]["rows"]
    sizes = sorted({r["trials"] for r in growth})
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
    else:
        lo = hi = sizes[0]
    for op in ("reserve_trial", "set_trial_status", "fetch_lost_trials", "fetch_pending_trials"):
        a, b = _find(growth, trials=hi, op=op), _find(growth, trials=lo, op=op)
        add(
            f"{op}: per-call cost at {hi} / at {lo} trials",
            _ratio(a and a["median_us"], b and b["median_us"]),
            "<=",
            1.5,
            "×",
        )
    fetch = res["fetch_trials"]["rows"]
    eph_sizes = sorted({r["trials"] for r in fetch if r["backend"] == "ephemeraldb"})
    n = 10000 if 10000 in eph_sizes else eph_sizes[-1]
    eph = _find(fetch, backend="ephemeraldb", trials=n, kind="cold")
    for kind, limit in (("cold", 1.0), ("repeated, 1% changed", 0.3)):
        ours = _find(fetch, backend="redis", trials=n, kind=kind)
        add(
            f"fetch_trials {n} trials, {kind} / Legacy+EphemeralDB",
            _ratio(ours and ours["median_us"], eph and eph["median_us"]),
            "<=",
            limit,
            "×",
        )
    add(
        "lock hand-off median (8 contending processes)"
        if res["lock_handoff"]["procs"] == 8
        else f"lock hand-off median ({res['lock_handoff']['procs']} contending processes)",
        res["lock_handoff"]["handoff"]["median_ms"],
        "<=",
        5.0,
        "ms",
    )
    add(
        "Redis memory per typical trial (MEMORY USAGE)",
        res["memory"]["bytes_per_trial"],
        "<=",
        1024,
        "B",
    )
    fleet = res["fleet"]
    fleet_ratio = _ratio(
        fleet["redis"]["first_k_trials_per_s"], fleet["pickleddb"]["first_k_trials_per_s"]
    )
    add(
        f"fleet trials/s / Legacy+PickledDB ({fleet['redis']['workers']} workers)",
        fleet_ratio,
        ">=",
        10,
        "×",
    )
    add(
        f"fleet trials/s / Legacy+PickledDB ({fleet['redis']['workers']} workers; issue 12, "
        "copy-free holds)",
        fleet_ratio,
        ">=",
        3,
        "×",
    )
    cpu = fleet["profile"].get("cpu")
    add("storage share of a fleet worker's CPU", cpu and cpu["storage_share"] * 100, "<=", 10, "%")
    return targets
