"""The measurement of one fleet_sim.py phase (``run_phase``): INFO snapshots and their deltas,
the connected clients' peak, per-call percentiles, lock waits and their order against arrival;
the invariants checked after it, and the experiments it runs on."""

from __future__ import annotations

import datetime
import multiprocessing
import statistics
import threading
import time
from collections import defaultdict

from benchmarks.studies.fleet_sim_worker import _process_main

CTX = multiprocessing.get_context("spawn")
FIFO_EPS_S = 0.05  # arrival times are taken client side: closer arrivals are not ordered


# -- measurement ----------------------------------------------------------------------------
def snapshot(clients) -> dict:
    """Summed INFO of the primaries: CPU, commands, bytes, memory."""
    total = defaultdict(float)
    per_node = []
    for client in clients:
        info = client.info("all")
        node = {
            "cpu": info["used_cpu_sys"] + info["used_cpu_user"],
            "in": info["total_net_input_bytes"],
            "out": info["total_net_output_bytes"],
            "mem": info["used_memory"],
            "clients": info["connected_clients"],
        }
        node["commands"] = {k[8:]: v["calls"] for k, v in info.items() if k.startswith("cmdstat_")}
        per_node.append(node)
        for key in ("cpu", "in", "out", "mem", "clients"):
            total[key] += node[key]
    commands = defaultdict(int)
    for node in per_node:
        for k, v in node["commands"].items():
            commands[k] += v
    return {**total, "commands": dict(commands), "nodes": per_node, "t": time.monotonic()}


class ClientWatch(threading.Thread):
    """Samples connected_clients while a phase runs (the peak is what maxclients must allow)."""

    def __init__(self, clients):
        super().__init__(daemon=True)
        self.clients, self.peak, self.stop = clients, 0, threading.Event()

    def run(self):
        while not self.stop.wait(0.5):
            try:
                self.peak = max(
                    self.peak, sum(c.info("clients")["connected_clients"] for c in self.clients)
                )
            except Exception:  # noqa: BLE001 - a sample lost is fine
                pass


def deltas(before, after, trials) -> dict:
    cmd = {k: after["commands"].get(k, 0) - before["commands"].get(k, 0) for k in after["commands"]}
    cmd.pop("info", None)  # our own sampling
    per = max(trials, 1)
    return {
        "redis_cpu_s": after["cpu"] - before["cpu"],
        "cpu_ms_per_trial": (after["cpu"] - before["cpu"]) * 1000 / per,
        "commands_incl_lua_per_trial": sum(cmd.values()) / per,
        "command_mix_per_trial": {
            k: round(v / per, 2) for k, v in sorted(cmd.items(), key=lambda kv: -kv[1]) if v
        },
        "bytes_in_per_trial": (after["in"] - before["in"]) / per,
        "bytes_out_per_trial": (after["out"] - before["out"]) / per,
        "memory_per_trial": (after["mem"] - before["mem"]) / per,
        "wall_s": after["t"] - before["t"],
        "redis_cpu_util": (after["cpu"] - before["cpu"]) / max(after["t"] - before["t"], 1e-9),
        "node_cpu_s": [a["cpu"] - b["cpu"] for a, b in zip(after["nodes"], before["nodes"])],
    }


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def lock_fairness(locks) -> dict:
    """Waits, and whether service followed arrival order: a waiter is *overtaken* when one that
    arrived more than FIFO_EPS_S after it got the lock before it."""
    if not locks:
        return {}
    waits = [acq - arr for arr, acq, _, _ in locks]
    overtaken, worst = 0, 0.0
    by_exp = defaultdict(list)  # one lock per experiment: order matters within one only
    for lock in locks:
        by_exp[lock[3]].append(lock)
    for same in by_exp.values():
        latest = float("-inf")
        for arr, _, _, _ in sorted(same, key=lambda lk: lk[1]):
            if latest > arr + FIFO_EPS_S:
                overtaken += 1
                worst = max(worst, latest - arr)
            latest = max(latest, arr)
    median = statistics.median(waits)
    return {
        "acquisitions": len(locks),
        "wait_p50_s": median,
        "wait_p99_s": pct(waits, 0.99),
        "wait_max_s": max(waits),
        "max_over_median": max(waits) / median if median else None,
        "overtaken": overtaken,
        "worst_overtake_s": worst,
    }


def burst_fairness(locks, workers) -> dict:
    """The first lock request of every worker arrives at once (the fleet starts): the queue is
    ~workers long. Waits against arrival rank: FIFO makes them grow linearly with the rank."""
    first = sorted(locks, key=lambda lk: lk[0])[:workers]
    if len(first) < 2:
        return {}
    first.sort(key=lambda lk: lk[0])
    waits = [acq - arr for arr, acq, _, _ in first]
    holds = [end - acq for _, acq, end, _ in first]
    deciles = []
    n = len(first)
    for d in range(10):
        chunk = waits[d * n // 10 : (d + 1) * n // 10]
        if chunk:
            deciles.append(round(statistics.mean(chunk), 3))
    acquired_in_arrival_order = sum(1 for a, b in zip(first, first[1:]) if a[1] <= b[1])
    # service order vs arrival order over the burst: Spearman-like inversion share
    ranks = sorted(range(n), key=lambda i: first[i][1])
    inversions = sum(1 for a, b in zip(ranks, ranks[1:]) if a > b)
    return {
        "waiters": n,
        "wait_by_arrival_decile_s": deciles,
        "wait_max_s": max(waits),
        "wait_p50_s": statistics.median(waits),
        "mean_cycle_s": statistics.mean(holds),
        "adjacent_pairs_in_order": acquired_in_arrival_order / (n - 1),
        "adjacent_inversions": inversions,
    }


def run_phase(label, uri, clients, prefix, exp_ids, workers, trials, params, procs) -> dict:
    """Start ``workers`` simulated workers over ``procs`` processes, run, measure."""
    idle = snapshot(clients)
    ready = [CTX.Event() for _ in range(procs)]
    go, out = CTX.Event(), CTX.Queue()
    share = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
    ps = [
        CTX.Process(
            target=_process_main,
            args=(uri, prefix, exp_ids, share[i], trials, params, ready[i], go, out),
        )
        for i in range(procs)
        if share[i]
    ]
    for p in ps:
        p.start()
    for i, _p in enumerate(ps):
        if not ready[i].wait(300):
            raise SystemExit(f"{label}: a generator process did not start")
    connected = snapshot(clients)
    watch = ClientWatch(clients)
    watch.start()
    go.set()
    parts = [out.get(timeout=1800) for _ in ps]
    for p in ps:
        p.join(timeout=60)
    watch.stop.set()
    done = snapshot(clients)
    calls, locks, errors, completed = defaultdict(list), [], [], []
    for part in parts:
        for k, v in part["calls"].items():
            calls[k] += v
        locks += part["locks"]
        errors += part["errors"]
        completed += part["completed"]
    result = deltas(connected, done, len(completed))
    result["memory_per_trial"] = (done["mem"] - idle["mem"]) / max(len(completed), 1)
    result.update(
        {
            "client_commands_per_trial": sum(p["sent"] for p in parts) / max(len(completed), 1),
            "label": label,
            "workers": workers,
            "experiments": len(exp_ids),
            "trials": len(completed),
            "trials_per_s": len(completed) / result["wall_s"],
            "unique_trials": len(set(completed)),
            "errors": errors[:10],
            "error_count": len(errors),
            "lock_timeouts": sum("LockAcquisitionTimeout" in e for e in errors),
            "clients_idle": connected["clients"] - idle["clients"],
            "clients_peak": max(watch.peak, done["clients"]),
            "memory_per_worker": (connected["mem"] - idle["mem"]) / workers,
            "calls_ms": {
                k: {"n": len(v), "p50": pct(v, 0.5), "p99": pct(v, 0.99)}
                for k, v in sorted(calls.items())
            },
            "lock": lock_fairness(locks),
            "burst": burst_fairness(locks, workers),
        }
    )
    return result


def check_invariants(clients, prefix, exp_ids, phase) -> list[str]:
    """Every trial completed exactly once, none left reserved or pending, no lock timeout,
    FIFO order held."""
    from orion_track_redis.keys import GlobalKeys

    problems = []
    gk = GlobalKeys(prefix)
    counts = defaultdict(int)
    for exp_id in exp_ids:
        ek = gk.experiment(exp_id)
        for status in ("new", "reserved", "completed", "interrupted", "suspended", "broken"):
            for client in clients:
                try:
                    counts[status] += client.zcard(ek.status(status))
                    break
                except Exception:  # noqa: BLE001 - MOVED on another cluster node
                    continue
    if phase["unique_trials"] != phase["trials"]:
        problems.append(f"{phase['trials'] - phase['unique_trials']} trials completed twice")
    if counts["completed"] != phase["trials"]:
        problems.append(
            f"Redis holds {counts['completed']} completed trials, the workers "
            f"completed {phase['trials']}"
        )
    if counts["reserved"] or counts["new"]:
        problems.append(f"left over: {counts['reserved']} reserved, {counts['new']} new")
    if phase["lock_timeouts"]:
        problems.append(f"{phase['lock_timeouts']} lock timeouts")
    if phase["error_count"]:
        problems.append(f"{phase['error_count']} errors: {phase['errors'][:3]}")
    if phase["lock"].get("overtaken"):
        problems.append(f"{phase['lock']['overtaken']} waiters overtaken (FIFO broken)")
    return problems


def create_experiments(uri, prefix, count, tag) -> list:
    from orion_track_redis import Redis

    storage = Redis(uri=uri, prefix=prefix)
    ids = []
    for i in range(count):
        config = {
            "name": f"{tag}-{i}",
            "version": 1,
            "space": {"/x": "uniform(-5, 5)", "/y": "uniform(-5, 5)"},
            "algorithm": {"random": {"seed": None}},
            "max_trials": 10**6,
            "metadata": {"user": "sim", "datetime": datetime.datetime.utcnow()},
            "refers": {"parent_id": None, "root_id": None, "adapter": []},
        }
        storage.create_experiment(config)
        ids.append(config["_id"])
    return ids
