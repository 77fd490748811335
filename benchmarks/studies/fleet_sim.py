#!/usr/bin/env python
"""A simulated fleet of `orion hunt` workers against one redis-server (issue 13, part 2-3).

Each simulated worker replays, per trial, the storage calls a real worker makes, in their order
and with their payloads: benchmarks/data/hunt_sequence.json, recorded from a real `orion hunt`
by benchmarks/studies/record_hunt.py. A worker is a thread holding its own
``orion_track_redis.Redis``
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
Usage: python benchmarks/studies/fleet_sim.py [--smoke] [--sizes 100,300,1000] [--cluster] ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the package `benchmarks`
from benchmarks.studies.fleet_sim_measure import (  # noqa: E402
    FIFO_EPS_S,
    check_invariants,
    create_experiments,
    run_phase,
)
from benchmarks.studies.fleet_sim_worker import PRE, PRODUCE, RUN  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEQUENCE = ROOT / "benchmarks" / "data" / "hunt_sequence.json"
RESULTS = ROOT / "benchmarks" / "results" / "fleet_sim.json"


def load_sequence() -> dict:
    seq = json.loads(SEQUENCE.read_text())
    recorded = [s["call"] for s in seq["trial_steps"]]
    if recorded != PRE + PRODUCE + RUN:
        raise SystemExit(
            f"{SEQUENCE} no longer has the cycle this replay follows: {recorded}; "
            "update PRE/PRODUCE/RUN in fleet_sim_worker.py"
        )
    return seq


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
