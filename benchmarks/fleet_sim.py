#!/usr/bin/env python
"""A simulated fleet of `orion hunt` workers against one redis-server (issue 13, part 2-3).

Each simulated worker replays, per trial, the storage calls a real worker makes, in their order
and with their payloads: benchmarks/data/hunt_sequence.json, recorded from a real `orion hunt`
by benchmarks/record_hunt.py. A worker is a thread holding its own ``orion_track_redis.Redis``
storage (its own connection pool, as a real worker process has); many of them run in each of a
few processes. Calls go through the real storage class and its Lua scripts, the algorithm lock
included (FIFO hand-off, renewal, fencing). One exception, for the generator's own CPU:
``fetch_trials`` replays its Redis side exactly (fetch_changes.lua from this worker's own cached
revision; a full reload when too far behind) but does not build Trial objects from the reply.
The algorithm's work inside the lock is a sleep of ``--hold-ms``; the state written at each
release grows like the recorded random-search state (bytes = first + per_release x releases).
The objective is a sleep of ``--trial-s``.

Phases: per fleet size (100 / 300 / 1,000 workers on one experiment) Redis CPU, commands, bytes
and memory per trial from INFO deltas, per-call p50/p99, lock waits (and their order against
arrival order), connected clients; a ramp of offered load (many experiments, shorter and
shorter trials) for the rate at which one primary saturates; optionally the same top step on a
3-primary Redis Cluster (``--cluster``). Invariants checked: every trial completed exactly once,
no lock timeout, no waiter served before one that arrived earlier (tolerance FIFO_EPS_S).

Writes benchmarks/results/fleet_sim.json and prints tables.
Usage: python benchmarks/fleet_sim.py [--smoke] [--sizes 100,300,1000] [--cluster] ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEQUENCE = ROOT / "benchmarks" / "data" / "hunt_sequence.json"
RESULTS = ROOT / "benchmarks" / "results" / "fleet_sim.json"
CTX = multiprocessing.get_context("spawn")
FIFO_EPS_S = 0.05  # arrival times are taken client side: closer arrivals are not ordered
LOCK_TIMEOUT, RETRY_INTERVAL = 60, 1  # Oríon's

# The recorded cycle this replay follows (checked against the recording at start): Oríon's
# loop reserves first and produces (lock + register) only when nothing is pending.
PRE = [
    "fetch_trials",
    "fetch_trials",
    "count_broken_trials",
    "fetch_trials",
    "fetch_lost_trials",
    "fetch_pending_trials",
    "fetch_pending_trials",
    "reserve_trial",
]
PRODUCE = [
    "count_broken_trials",
    "fetch_trials",
    "lock_enter",
    "register_trial",
    "lock_exit",
    "fetch_lost_trials",
    "fetch_pending_trials",
    "fetch_pending_trials",
    "reserve_trial",
]
RUN = ["retrieve_result", "push_trial_results", "lock_enter", "lock_exit"]


def load_sequence() -> dict:
    seq = json.loads(SEQUENCE.read_text())
    recorded = [s["call"] for s in seq["trial_steps"]]
    if recorded != PRE + PRODUCE + RUN:
        raise SystemExit(
            f"{SEQUENCE} no longer has the cycle this replay follows: {recorded}; "
            "update PRE/PRODUCE/RUN in fleet_sim.py"
        )
    return seq


# -- one simulated worker -------------------------------------------------------------------
class _Exp:
    def __init__(self, exp_id):
        self.id = self._id = exp_id


class SimWorker:
    """One `orion hunt` worker: its own storage (connection pool) and its own trial cache."""

    def __init__(self, uri, prefix, exp_id, params, stats):
        from orion_track_redis import Redis

        self.storage = Redis(uri=uri, prefix=prefix)
        self.exp, self.exp_id, self.p = _Exp(exp_id), exp_id, params
        self.ek = self.storage.backend.experiment_keys(exp_id)
        self.rev = None  # revision of this worker's trial cache (fetch_trials)
        self.stats = stats
        self.rng = random.Random()

    def timed(self, name, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.stats["calls"][name].append((time.perf_counter() - start) * 1000)

    def fetch_trials(self):
        """fetch_trials' Redis side: the changes since this worker's revision (no Trial built)."""
        from orion_track_redis.keys import CHANGE_LOG_KEEP
        from orion_track_redis.store.reads import (
            chunks as _chunks,
        )
        from orion_track_redis.store.reads import (
            is_cluster as _is_cluster,
        )
        from orion_track_redis.store.reads import (
            score_pairs as _score_pairs,
        )

        ek, storage = self.ek, self.storage
        if self.rev is not None:
            reply = storage.scripts.fetch_changes(
                rev=ek.rev,
                changed=ek.changed,
                all=ek.all,
                floor=ek.floor,
                cached_rev=self.rev,
                trial_prefix=ek.trial_prefix,
                max_changes=CHANGE_LOG_KEEP,
            )
            if len(reply) == 1 or int(reply[1]) >= 0:
                self.rev = int(reply[0])
                return
        pipe = storage.client.pipeline(transaction=True)
        pipe.get(ek.rev)
        pipe.execute_command("ZRANGE", ek.all, 0, -1, "WITHSCORES")
        raw_rev, pairs = pipe.execute()
        tokens = [t.decode() for t, _ in _score_pairs(pairs)]
        # the trials in fetch_docs chunks as the storage sends them (unparsed here)
        # (a Cluster pipeline refuses EVALSHA: one call per chunk there, as the storage does)
        pipe = None if _is_cluster(storage.client) else storage.client.pipeline(False)
        for chunk in _chunks(tokens):
            storage.scripts.fetch_docs(trials=[ek.trial_prefix + t for t in chunk], client=pipe)
        if pipe is not None:
            pipe.execute()
        self.rev = int(raw_rev or 0)

    def step(self, name, trial=None):
        s = self.storage
        if name == "fetch_trials":
            return self.timed(name, self.fetch_trials)
        if name == "count_broken_trials":
            return self.timed(name, s.count_broken_trials, self.exp)
        if name == "fetch_lost_trials":
            return self.timed(name, s.fetch_lost_trials, self.exp)
        if name == "fetch_pending_trials":
            return self.timed(name, s.fetch_pending_trials, self.exp)
        if name == "reserve_trial":
            return self.timed(name, s.reserve_trial, self.exp)
        if name == "retrieve_result":
            return trial
        if name == "push_trial_results":
            from orion.core.worker.trial import Trial

            trial.results = [
                Trial.Result(name="objective", type="objective", value=self.rng.random())
            ]
            trial.status = "completed"
            trial.end_time = datetime.datetime.utcnow()
            return self.timed(name, s.push_trial_results, trial)
        raise ValueError(name)

    def hold(self, produce: bool):
        """One algorithm-lock cycle: wait (measured against arrival), hold, write the state."""
        arrived = time.monotonic()
        start = time.perf_counter()
        try:
            with self.storage.acquire_algorithm_lock(
                uid=self.exp_id, timeout=LOCK_TIMEOUT, retry_interval=RETRY_INTERVAL
            ) as locked:
                acquired = time.monotonic()
                self.stats["calls"]["lock_acquire"].append((time.perf_counter() - start) * 1000)
                state = locked.state or {"releases": 0}
                time.sleep(self.p["hold_ms"] / 1000)
                if produce:
                    self.timed("register_trial", self.storage.register_trial, self._new_trial())
                n = state["releases"] + 1
                size = self.p["state_first"] + int(self.p["state_per_release"] * n)
                locked.set_state({"releases": n, "blob": bytes(size)})
                released = time.perf_counter()
            self.stats["calls"]["lock_release"].append((time.perf_counter() - released) * 1000)
            self.stats["locks"].append((arrived, acquired, time.monotonic(), self.exp_id))
        except Exception as exc:  # LockAcquisitionTimeout counts, others are reported
            self.stats["errors"].append(f"{type(exc).__name__}: {exc}")

    def _new_trial(self):
        from orion.core.worker.trial import Trial

        return Trial(
            experiment=self.exp_id,
            status="new",
            submit_time=datetime.datetime.utcnow(),
            exp_working_dir="sim-v1",
            params=[
                {"name": "/x", "type": "real", "value": self.rng.uniform(-5, 5)},
                {"name": "/y", "type": "real", "value": self.rng.uniform(-5, 5)},
            ],
        )

    def run(self, trials: int, go: threading.Event):
        go.wait()
        time.sleep(self.rng.uniform(0, self.p["start_spread_s"]))
        done = 0
        while done < trials:
            trial = None
            for name in PRE:
                trial = self.step(name)
            if trial is None:  # nothing pending: produce one (Oríon's order), then reserve
                for name in PRODUCE:
                    if name == "lock_enter":
                        self.hold(produce=True)
                    elif name not in ("register_trial", "lock_exit"):
                        trial = self.step(name)
            if trial is None:
                continue  # another worker took it: loop as Oríon does
            time.sleep(self.p["trial_s"] * self.rng.uniform(0.8, 1.2))
            self.step("push_trial_results", trial)
            self.hold(produce=False)
            self.stats["completed"].append(trial.id)
            done += 1


def _count_sent_commands():
    """A counter of the commands this process sends (every command, pipelined or not, goes
    through its connection's RESP packer): what the workers ask, without Lua's own calls
    that INFO commandstats mixes in."""
    import redis.connection as rc

    lock, counted = threading.Lock(), [0]

    def count():
        with lock:
            counted[0] += 1

    for name in ("PythonRespSerializer", "HiredisRespSerializer"):
        cls = getattr(rc, name, None)
        if cls is not None and not getattr(cls.pack, "_counted", False):

            def pack(self, *args, _orig=cls.pack):
                count()
                return _orig(self, *args)

            pack._counted = True
            cls.pack = pack
    return lambda: counted[0]


def _process_main(uri, prefix, exp_ids, count, trials, params, ready, go, out):
    """One generator process: ``count`` workers (threads), experiments assigned round robin."""
    sent = _count_sent_commands()
    stats = {"calls": defaultdict(list), "locks": [], "errors": [], "completed": []}
    workers = [
        SimWorker(uri, prefix, exp_ids[i % len(exp_ids)], params, stats) for i in range(count)
    ]
    for w in workers:
        w.storage.client.ping()  # open the pool's first connection now: counted while idle
    local_go = threading.Event()
    threads = [
        threading.Thread(target=w.run, args=(trials, local_go), daemon=True) for w in workers
    ]
    for t in threads:
        t.start()
    ready.set()
    go.wait()
    first = sent()
    local_go.set()
    for t in threads:
        t.join()
    out.put(
        {
            "sent": sent() - first,
            "calls": dict(stats["calls"]),
            "locks": stats["locks"],
            "errors": stats["errors"],
            "completed": stats["completed"],
        }
    )


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


# -- phases ---------------------------------------------------------------------------------
def sizes_phase(uri, clients, args, params) -> list[dict]:
    rows = []
    for workers in args.sizes:
        prefix = f"size{workers}-{uuid.uuid4().hex[:6]}"
        exp_ids = create_experiments(uri, prefix, 1, "fleet")
        phase = run_phase(
            f"{workers} workers",
            uri,
            clients,
            prefix,
            exp_ids,
            workers,
            args.trials_per_worker,
            params,
            args.procs,
        )
        phase["problems"] = check_invariants(clients, prefix, exp_ids, phase)
        rows.append(phase)
        print_size(phase)
    return rows


def ramp_phase(uri, clients, args, params, label="ramp") -> list[dict]:
    """Offered load up (shorter trials), many experiments (one lock each), until Redis CPU
    reaches ~one core, latency explodes, or the generator itself cannot offer more."""
    steps, base_p99 = [], None
    for trial_s in args.ramp_trial_s:
        prefix = f"{label}-{uuid.uuid4().hex[:6]}"
        exp_ids = create_experiments(uri, prefix, args.ramp_experiments, label)
        p = dict(params, trial_s=trial_s, hold_ms=args.ramp_hold_ms, start_spread_s=0.2)
        phase = run_phase(
            f"{label} trial {trial_s}s",
            uri,
            clients,
            prefix,
            exp_ids,
            args.ramp_workers,
            args.ramp_trials,
            p,
            args.procs,
        )
        phase["problems"] = check_invariants(clients, prefix, exp_ids, phase)
        phase["trial_s"] = trial_s
        phase["prefix"], phase["exp_ids"] = prefix, exp_ids
        phase["offered_trials_per_s"] = args.ramp_workers / max(trial_s, 1e-9)
        p99 = phase["calls_ms"].get("reserve_trial", {}).get("p99") or 0
        base_p99 = base_p99 or p99
        steps.append(phase)
        print(
            f"  {label}: trial {trial_s:>5}s  {phase['trials_per_s']:8.1f} trials/s  Redis "
            f"CPU {phase['redis_cpu_util'] * 100:5.1f}%  {phase['cpu_ms_per_trial']:.3f} "
            f"ms/trial  reserve p99 {p99:.2f} ms  nodes "
            f"{[round(c, 2) for c in phase['node_cpu_s']]}"
        )
        if phase["redis_cpu_util"] > 0.9 or (base_p99 and p99 > 20 * base_p99):
            break
    return steps


def print_size(r):
    lock, burst = r["lock"], r["burst"]
    print(
        f"\n== {r['label']}: {r['trials']} trials in {r['wall_s']:.1f}s "
        f"({r['trials_per_s']:.1f}/s), problems: {r['problems'] or 'none'}"
    )
    print(
        f"  Redis CPU {r['cpu_ms_per_trial']:.3f} ms/trial ({r['redis_cpu_util'] * 100:.1f}% "
        f"of a core); {r['client_commands_per_trial']:.1f} commands/trial "
        f"({r['commands_incl_lua_per_trial']:.0f} with Lua's); in "
        f"{r['bytes_in_per_trial'] / 1024:.1f} KB, out {r['bytes_out_per_trial'] / 1024:.1f} "
        f"KB per trial"
    )
    print(
        f"  memory {r['memory_per_trial'] / 1024:.2f} KB/trial (workers gone; request ids "
        "still in their 2-min TTL), "
        f"{r['memory_per_worker'] / 1024:.1f} KB/worker; clients idle "
        f"{r['clients_idle']}, peak {r['clients_peak']}"
    )
    print(
        f"  lock: wait p50 {lock['wait_p50_s']:.3f}s p99 {lock['wait_p99_s']:.3f}s max "
        f"{lock['wait_max_s']:.3f}s (max/median {lock['max_over_median'] or 0:.1f}), "
        f"overtaken {lock['overtaken']}, timeouts {r['lock_timeouts']}"
    )
    if burst:
        print(
            f"  start burst, {burst['waiters']} waiters: mean wait by arrival decile "
            f"{burst['wait_by_arrival_decile_s']} s, max {burst['wait_max_s']:.2f}s, adjacent "
            f"pairs served in arrival order {burst['adjacent_pairs_in_order'] * 100:.1f}%"
        )
    print(f"  {'call':<22}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}")
    for name, c in r["calls_ms"].items():
        print(f"  {name:<22}{c['n']:>7}{c['p50']:>9.2f}{c['p99']:>9.2f}")


def print_summary(result):
    print(
        "\n| workers | trials/s | Redis CPU ms/trial | cmds/trial | KB in/out per trial | "
        "mem KB/trial | mem KB/worker | clients peak | lock wait p50/p99/max s | max/median "
        "| overtaken | timeouts |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["sizes"]:
        lk = r["lock"]
        print(
            f"| {r['workers']} | {r['trials_per_s']:.1f} | {r['cpu_ms_per_trial']:.3f} | "
            f"{r['client_commands_per_trial']:.1f} | {r['bytes_in_per_trial'] / 1024:.1f} / "
            f"{r['bytes_out_per_trial'] / 1024:.1f} | {r['memory_per_trial'] / 1024:.2f} | "
            f"{r['memory_per_worker'] / 1024:.1f} | {r['clients_peak']} | "
            f"{lk['wait_p50_s']:.2f} / {lk['wait_p99_s']:.2f} / {lk['wait_max_s']:.2f} | "
            f"{lk['max_over_median'] or 0:.1f} | {lk['overtaken']} | {r['lock_timeouts']} |"
        )
    sat = result.get("saturation")
    if sat:
        print(
            f"\nsaturation of one primary: measured top {sat['measured_trials_per_s']:.0f} "
            f"trials/s at {sat['redis_cpu_util_at_top'] * 100:.0f}% Redis CPU "
            f"({sat['limited_by']}); extrapolated from CPU per trial: "
            f"{sat['extrapolated_trials_per_s']:.0f} trials/s, "
            f"{sat['extrapolated_commands_per_s']:.0f} commands/s"
        )
    if result.get("cluster"):
        c = result["cluster"]
        print(
            f"cluster (3 primaries, {c['experiments']} experiments): "
            f"{c['trials_per_s']:.0f} trials/s vs {c['standalone_trials_per_s']:.0f} on one "
            f"primary; CPU per shard {c['node_cpu_s']} s; "
            f"slots per shard {c['experiments_per_shard']}"
        )


def saturation(steps) -> dict:
    top = max(steps, key=lambda s: s["trials_per_s"])
    cpu = statistics.median(s["cpu_ms_per_trial"] for s in steps) / 1000
    cmds = statistics.median(s["client_commands_per_trial"] for s in steps)
    limited = (
        "Redis CPU"
        if top["redis_cpu_util"] > 0.9
        else "the load generator (2 shared cores): Redis was not saturated"
    )
    return {
        "measured_trials_per_s": top["trials_per_s"],
        "redis_cpu_util_at_top": top["redis_cpu_util"],
        "limited_by": limited,
        "extrapolated_trials_per_s": 1 / cpu if cpu else None,
        "extrapolated_commands_per_s": cmds / cpu if cpu else None,
        "cpu_ms_per_trial_median": cpu * 1000,
    }


def cluster_phase(args, params, standalone_top) -> dict:
    """The ramp's top step over a 3-primary Cluster: experiments spread over the shards."""
    import redis
    from redis.cluster import key_slot

    from orion_track_redis.keys import GlobalKeys
    from orion_track_redis.testing import ClusterDeployment

    with (
        tempfile.TemporaryDirectory() as tmp,
        ClusterDeployment(Path(tmp) / "cluster", primaries=3, appendonly=True) as cluster,
    ):
        clients = [redis.Redis(host="127.0.0.1", port=n.port) for n in cluster.primaries]
        args.ramp_trial_s = [args.ramp_trial_s[-1]]
        (step,) = ramp_phase(cluster.url, clients, args, params, label="cluster")
        ranges = [(i * 16384 // 3, (i + 1) * 16384 // 3) for i in range(3)]
        gk = GlobalKeys(step["prefix"])
        shards = [0, 0, 0]
        for exp_id in step["exp_ids"]:
            slot = key_slot(gk.experiment(exp_id).lock.encode())
            shards[next(i for i, (a, b) in enumerate(ranges) if a <= slot < b)] += 1
        return {
            "experiments": args.ramp_experiments,
            "trials_per_s": step["trials_per_s"],
            "standalone_trials_per_s": standalone_top["trials_per_s"],
            "node_cpu_s": [round(c, 2) for c in step["node_cpu_s"]],
            "experiments_per_shard": shards,
            "step": step,
        }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run (< 60 s) for CI")
    ap.add_argument("--sizes", default="100,300,1000")
    ap.add_argument("--trials-per-worker", type=int, default=2)
    ap.add_argument("--trial-s", type=float, default=20.0, help="objective duration")
    ap.add_argument(
        "--hold-ms",
        type=float,
        default=5.0,
        help="the algorithm's time inside each lock hold (produce and observe)",
    )
    ap.add_argument("--procs", type=int, default=4, help="generator processes")
    ap.add_argument("--ramp-workers", type=int, default=240)
    ap.add_argument("--ramp-experiments", type=int, default=24)
    ap.add_argument("--ramp-trials", type=int, default=3)
    ap.add_argument("--ramp-trial-s", default="8,4,2,1,0.5,0")
    ap.add_argument("--ramp-hold-ms", type=float, default=1.0)
    ap.add_argument("--no-ramp", action="store_true")
    ap.add_argument("--cluster", action="store_true", help="also run the top step on a Cluster")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop our redis-servers too
    if args.smoke:
        args.sizes, args.trials_per_worker, args.trial_s = "40", 2, 1.0
        args.ramp_workers, args.ramp_experiments, args.ramp_trials = 20, 4, 2
        args.ramp_trial_s = "0.5,0"
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s]
    args.ramp_trial_s = [float(s) for s in str(args.ramp_trial_s).split(",") if s]
    seq = load_sequence()
    params = {
        "trial_s": args.trial_s,
        "hold_ms": args.hold_ms,
        "start_spread_s": 0.5,  # the fleet starts at once: the first lock is a burst
        "state_first": seq["state_release_bytes"]["first"],
        "state_per_release": seq["state_release_bytes"]["per_release"],
    }
    import redis

    from orion_track_redis.testing import RedisServer

    started = time.time()
    result = {
        "meta": {
            "mode": "smoke" if args.smoke else "full",
            "argv": sys.argv[1:],
            "params": params,
            "sequence": str(SEQUENCE.relative_to(ROOT)),
            "recorded_commands_per_trial": seq["commands_per_trial"],
            "fifo_eps_s": FIFO_EPS_S,
            "cpus": os.cpu_count(),
            "note": "machine shared with other jobs: ratios are the reliable part",
        }
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(
            Path(tmp) / "redis", appendonly=True, extra_args=["--maxclients", "10000"]
        ) as server,
    ):
        server.start()
        clients = [redis.Redis(host="127.0.0.1", port=server.port)]
        result["meta"]["redis_version"] = clients[0].info("server")["redis_version"]
        result["sizes"] = sizes_phase(server.url, clients, args, params)
        if not args.no_ramp:
            result["ramp"] = ramp_phase(server.url, clients, args, params)
            result["saturation"] = saturation(result["ramp"])
    if args.cluster and not args.no_ramp:
        result["cluster"] = cluster_phase(
            args, params, max(result["ramp"], key=lambda s: s["trials_per_s"])
        )
    result["meta"]["wall_s"] = time.time() - started
    problems = [
        f"{r['label']}: {p}"
        for r in result["sizes"] + result.get("ramp", [])
        for p in r["problems"]
    ]
    result["problems"] = problems
    print_summary(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(
        f"\n{'OK' if not problems else 'PROBLEMS: ' + '; '.join(problems)} "
        f"({result['meta']['wall_s']:.0f}s) -> {out}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
