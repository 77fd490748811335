"""What the fleets of benchmarks/peers.py measured: throughput (``analyse_fleet``), the
recovery of SIGKILLed workers' trials (``analyse_faults``) and what a redis-server restart
from its AOF did to the fleet (``analyse_restart``), from the objective logs and the final
trial states."""

from __future__ import annotations

import collections


def analyse_fleet(raw: dict) -> dict:
    recs, launch = raw["records"], raw["launch"]
    starts = [r for r in recs if r["ev"] == "start"]
    ends = [r for r in recs if r["ev"] == "end"]
    final = collections.Counter(t["state"].lower() for t in raw["final"])
    completed = final.get("completed", 0) + final.get("complete", 0)
    out = {
        "peer": raw["peer"],
        "algo": raw["algo"],
        "workers": raw["workers"],
        "max_trials": raw["trials"],
        "capped": raw["capped"],
        "completed": completed,
        "states": dict(final),
        "wall_s": raw["end"] - launch,
        "died": raw["died"],
        "info": raw["info"],
    }
    out["trials_per_s"] = completed / out["wall_s"] if out["wall_s"] else None
    first = {}
    for r in starts:
        first[r["w"]] = min(first.get(r["w"], r["t"]), r["t"])
    out["first_trial_s"] = (max(first.values()) - launch) if first else None
    if first and starts:
        t0, t1 = max(first.values()), max(r["t"] for r in starts)
        n = sum(1 for r in ends if t0 < r["t"] <= t1)
        out["steady_s"] = t1 - t0
        out["steady_trials_per_s"] = n / (t1 - t0) if t1 - t0 > 1.0 and n else None
        out["utilisation"] = utilisation(recs, t0, t1, raw["workers"])
    else:
        out["steady_s"] = out["steady_trials_per_s"] = out["utilisation"] = None
    out["sleep_s"] = raw.get("sleep_s", 0.0)
    cpu = raw["server_cpu_s"]
    out["server_cpu_s"] = cpu
    out["server_cpu_ms_per_trial"] = (
        cpu / completed * 1e3 if cpu is not None and completed else None
    )
    per_trial = collections.Counter(str(r["trial"]) for r in ends)
    client = raw.get("client_cpu_s")
    out["client_cpu_ms_per_trial"] = (
        client / completed * 1e3 if client is not None and completed else None
    )
    out["run_twice"] = sum(1 for n in per_trial.values() if n > 1)
    return out


def utilisation(recs: list[dict], t0: float, t1: float, workers: int) -> float | None:
    """The share of the workers' time in the steady window [t0, t1] spent inside the objective
    (from each trial's logged start to its end, clipped to the window): 1.0 means the storage
    and the framework cost the fleet nothing."""
    if t1 - t0 <= 1.0 or not workers:
        return None
    begun = {(r["w"], str(r["trial"])): r["t"] for r in recs if r["ev"] == "start"}
    busy = 0.0
    for r in recs:
        start = begun.get((r["w"], str(r["trial"]))) if r["ev"] == "end" else None
        if start is not None:
            busy += max(0.0, min(r["t"], t1) - max(start, t0))
    return busy / (workers * (t1 - t0))


def analyse_faults(raw: dict) -> dict:
    """Per killed trial: run again (same trial, or Optuna's retry of it) by another worker and
    completed? how long after the kill?; the killed trial's final state."""
    out = analyse_fleet(raw)
    recs = raw["records"]
    final = {str(t["id"]): t for t in raw["final"]}
    rows = []
    for k in raw["killed"]:
        # Oríon re-runs the same trial id; Optuna's retry callback makes a new trial whose
        # system_attrs["failed_trial"] is the killed one's number (same params)
        retries = {
            str(t["id"])
            for t in raw["final"]
            if t.get("retry_of") is not None and str(t["retry_of"]) == k["trial"]
        }
        ids = {k["trial"]} | retries
        again = sorted(
            r["t"]
            for r in recs
            if r["ev"] == "start" and str(r["trial"]) in ids and r["t"] > k["t"]
        )
        done = [
            r["t"] for r in recs if r["ev"] == "end" and str(r["trial"]) in ids and r["t"] > k["t"]
        ]
        state = final.get(k["trial"], {}).get("state", "?")
        rows.append(
            {
                "worker": k["worker"],
                "trial": k["trial"],
                "state": state,
                "retries": sorted(retries),
                "rerun_after_s": again[0] - k["t"] if again else None,
                "completed_after_s": min(done) - k["t"] if done else None,
            }
        )
    out["kills"] = rows
    out["recovered"] = sum(1 for r in rows if r["completed_after_s"] is not None)
    out["stuck"] = collections.Counter(r["state"] for r in rows if r["completed_after_s"] is None)
    return out


def _key(rec: dict) -> tuple:
    """One trial: Oríon's id (a hash of its parameters); Optuna's number with its parameters
    (a number is reused if the log entry that took it was lost)."""
    if rec.get("x") is None or isinstance(rec.get("trial", rec.get("id")), str):
        return (str(rec.get("trial", rec.get("id"))),)
    return (str(rec.get("trial", rec.get("id"))), rec["x"], rec["y"])


def analyse_restart(raw: dict) -> dict:
    """After redis-server was SIGKILLed and restarted from its AOF on the same port: did the
    fleet go on, was any finished trial lost or run twice, is every trial completed exactly
    once, and how long until trials started and ended again."""
    out = analyse_fleet(raw)
    ev = raw["events"] or {}
    recs = raw["records"]
    ends = collections.Counter(_key(r) for r in recs if r["ev"] == "end")
    starts = collections.Counter(_key(r) for r in recs if r["ev"] == "start")
    completed = collections.Counter(
        _key(t) for t in raw["final"] if t["state"].lower() in ("completed", "complete")
    )
    lost = [k for k in ends if k not in completed]  # finished by its objective, not stored
    phantom = [k for k in completed if k not in ends]  # completed, no objective ever ended
    twice = [k for k in ends if ends[k] > 1]
    started_twice = [k for k in starts if starts[k] > 1]
    dup_completed = [k for k in completed if completed[k] > 1]
    up = ev.get("up_t")
    after = [r for r in recs if up is not None and r["t"] > up]
    first_start = min((r["t"] for r in after if r["ev"] == "start"), default=None)
    first_end = min((r["t"] for r in after if r["ev"] == "end"), default=None)
    out.update(
        restart=ev,
        lost=len(lost),
        lost_ids=[list(k) for k in lost[:5]],
        phantom=len(phantom),
        ran_twice=len(twice),
        started_twice=len(started_twice),
        duplicate_completed=len(dup_completed),
        exactly_once=not (lost or phantom or twice or dup_completed),
        finished=sum(completed.values()) >= raw["trials"],
        continued=first_end is not None,
        trials_after_restart=sum(1 for r in after if r["ev"] == "end"),
        first_start_after_up_s=None if first_start is None else first_start - up,
        first_end_after_up_s=None if first_end is None else first_end - up,
        first_end_after_kill_s=None if first_end is None else first_end - ev["kill_t"],
        stuck=sum(1 for t in raw["final"] if t["state"].lower() in ("reserved", "running")),
    )
    return out
