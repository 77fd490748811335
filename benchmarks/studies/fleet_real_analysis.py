"""The analysis of one fleet_real.py fleet (``analyse``): from the raw records of ``run_fleet`` to
throughput, utilisation over the steady state, deaths, duplicates, false lost declarations, lock
wait and hold, CPU and memory."""

from __future__ import annotations

import collections
import statistics


# ------------------------------------------------------------------------------------------------
# analysis
def _pct(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


def _dist(values) -> dict:
    return {
        "n": len(values),
        "p50": _pct(values, 0.5),
        "p99": _pct(values, 0.99),
        "max": max(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
    }


def steady_window(raw) -> tuple[float, float] | None:
    """(t0, t1): by t0 every worker that ever ran a trial has started its first one (start-up is
    over); t1 is the last trial start (then the fleet only drains). None if empty."""
    first = {}
    for r in raw["runs"]:
        first[r["worker"]] = min(first.get(r["worker"], r["start"]), r["start"])
    if not first:
        return None
    t0, t1 = max(first.values()), max(r["start"] for r in raw["runs"])
    return (t0, t1) if t1 > t0 else None


def false_lost(raw) -> list[dict]:
    """Lost declarations of a trial whose worker had not died: every one of them in a fleet
    nobody kills (a worker that exits normally holds no reservation)."""
    died = {w["index"]: w["end"] for w in raw["workers"] if w["exit"] not in (0, None)}
    holder = {r["trial"]: r["worker"] for r in raw["runs"]}
    out = []
    for rec in raw["lost"]:
        for trial_id in rec["ids"]:
            w = holder.get(trial_id)
            holder_dead = (
                (died.get(w, float("inf")) <= rec["t"])
                if w is not None
                else any(t <= rec["t"] for t in died.values())
            )
            if not holder_dead:
                out.append({"trial": trial_id, "t": rec["t"] - raw["launch"], "worker": w})
    return out


def _cores(samples, key) -> float | None:
    """Mean cores used between the first and last sample: per-tree CPU deltas between
    consecutive samples (a tree that ended drops out), or a machine-wide counter."""
    if len(samples) < 2:
        return None
    total = 0.0
    for a, b in zip(samples, samples[1:]):
        if key == "tree_cpu_s":
            total += sum(b[key][r] - a[key][r] for r in b[key] if r in a[key])
        else:
            total += b[key] - a[key]
    return total / (samples[-1]["t"] - samples[0]["t"])


def duplicates(raw) -> dict:
    runs_per_trial = collections.Counter(r["trial"] for r in raw["runs"])
    completed = [t for t in raw["trials"] if t["status"] == "completed"]
    params = collections.Counter(tuple(sorted(t["params"].items())) for t in completed)
    return {
        "trials_run_more_than_once": sorted(t for t, n in runs_per_trial.items() if n > 1),
        "params_completed_more_than_once": sum(1 for n in params.values() if n > 1),
    }


def analyse(raw) -> dict:
    launch = raw["launch"]
    workers, runs = raw["workers"], raw["runs"]
    wall = max(w["end"] for w in workers) - launch
    statuses = collections.Counter(t["status"] for t in raw["trials"])
    completed = statuses.get("completed", 0)
    worker_wall = sum(w["end"] - launch for w in workers)
    in_objective = sum(r["end"] - r["start"] for r in runs)
    out = {
        "backend": raw["backend"],
        "workers": len(workers),
        "capped": raw["capped"],
        "max_trials": raw["spec"]["trials"],
        "sleep_s": raw["spec"]["sleep_s"],
        "completed": completed,
        "statuses": dict(statuses),
        "objective_runs": len(runs),
        "wall_s": wall,
        "trials_per_s": completed / wall if wall else None,
        "utilisation": in_objective / worker_wall if worker_wall else None,
        "ideal_trials_per_s": len(workers) / raw["spec"]["sleep_s"],
    }
    window = steady_window(raw)
    if window:
        t0, t1 = window
        overlap = sum(max(0.0, min(r["end"], t1) - max(r["start"], t0)) for r in runs)
        alive = sum(max(0.0, min(w["end"], t1) - t0) for w in workers)  # worker time in window
        out.update(
            steady_from_s=t0 - launch,
            steady_to_s=t1 - launch,
            steady_trials_per_s=sum(t0 < r["end"] <= t1 for r in runs) / (t1 - t0),
            steady_utilisation=overlap / alive if alive else None,
            steady_workers_alive_mean=alive / (t1 - t0),
        )
    else:
        out.update(
            steady_from_s=None, steady_to_s=None, steady_trials_per_s=None, steady_utilisation=None
        )
    first = collections.defaultdict(lambda: float("inf"))
    for r in runs:
        first[r["worker"]] = min(first[r["worker"]], r["start"])
    out["first_trial_s"] = _dist([t - launch for t in first.values()])
    out["died"] = [
        {"worker": w["index"], "exit": w["exit"], "last_line": w["last_line"]}
        for w in workers
        if w["exit"] != 0
    ]
    out["duplicates"] = duplicates(raw)
    out["false_lost"] = false_lost(raw)
    out["lost_declared"] = sum(len(r["ids"]) for r in raw["lost"])
    locks = raw["locks"]
    held = [r for r in locks if "acquired" in r]
    out["lock"] = {
        "acquisitions": len(held),
        "timeouts": sum(1 for r in locks if r.get("error") == "LockAcquisitionTimeout"),
        "errors": collections.Counter(r["error"] for r in locks if "error" in r),
        "wait_s": _dist([r["acquired"] - r["request"] for r in held]),
        "hold_s": _dist([r["released"] - r["acquired"] for r in held]),
        "hold_by_op_s": {
            op: _dist([r["released"] - r["acquired"] for r in held if r["op"] == op])
            for op in ("produce", "observe")
        },
        "busy_share": (
            sum(r["released"] - r["acquired"] for r in held) / wall if held and wall else None
        ),
    }
    if window and held:  # the lock over the steady state: is it the bottleneck?
        t0, t1 = window
        busy = sum(max(0.0, min(r["released"], t1) - max(r["acquired"], t0)) for r in held)
        out["lock"]["steady_busy_share"] = busy / (t1 - t0)
    cpu = raw["cpu"]
    startup = cpu["init_only_s"] * len(workers)  # a worker starts like `hunt --init-only`
    hold_cpu = sum(r["cpu_released"] - r["cpu_acquired"] for r in held)
    out["cpu"] = dict(
        cpu,
        startup_estimate_s=startup,
        cores_used=cpu["fleet_s"] / wall,
        in_lock_holds_s=hold_cpu,
        per_trial_s=((cpu["fleet_s"] - startup) / completed if completed else None),
        per_trial_outside_lock_s=(
            (cpu["fleet_s"] - startup - hold_cpu) / completed if completed else None
        ),
    )
    if window:  # cores used by the fleet, and by the whole machine, over the steady state
        inside = [m for m in raw["memory"] if window[0] <= m["t"] <= window[1]]
        out["cpu"]["steady_fleet_cores"] = _cores(inside, "tree_cpu_s")
        out["cpu"]["steady_machine_cores"] = _cores(inside, "machine_busy_s")
    mem = raw["memory"]
    peak = max(mem, key=lambda m: m["rss_kib"]) if mem else None
    out["memory"] = {
        "peak_rss_gib": peak["rss_kib"] / 2**20 if peak else None,
        "peak_pss_gib": max(m["pss_kib"] for m in mem) / 2**20 if mem else None,
        "processes_at_peak": peak["processes"] if peak else None,
        "min_mem_available_gib": min(m["mem_available_kib"] for m in mem) / 2**20 if mem else None,
    }
    return out
