#!/usr/bin/env python
"""Peers: this backend side by side with Oríon's PickledDB and Optuna 5's storages, each on a
real server started here on loopback, in one run.

    python benchmarks/peers.py [--quick] [--docs] [--peers a,b] [--workloads fleet,growth,...]

Peers: ``orion-redis`` (Oríon 0.2.7 ``orion hunt`` on this backend, its defaults: copy-free
holds, batched observation), ``orion-pickleddb`` (Oríon's Legacy+PickledDB, today's baseline),
``optuna-journal-redis`` (``JournalStorage(JournalRedisBackend)`` on the same redis-server),
``optuna-rdb-pg`` (``RDBStorage`` on PostgreSQL, psycopg2) and ``optuna-grpc-pg``
(``GrpcStorageProxy`` in front of ``get_storage`` of the same database, one proxy process);
and ``orion-redis-api`` (fleet and memory only): Oríon's Python API on this backend, the
objective called in-process, which is not what ``orion hunt`` users get.

Workloads (modules ``benchmarks/peers_*.py``):
- ``fleet``: W worker processes (``orion hunt``; a Python process running ``study.optimize``
  with ``MaxTrialsCallback``) on one experiment/study, random search, a trivial objective, N
  trials, for each W of the mode (16 and 64): steady trials/s (from the moment every worker has
  started a trial to the last trial start), deaths, storage-server CPU per trial;
- ``tpe``: the fleet with TPE (Oríon's ``tpe``, Optuna's ``TPESampler``), fewer trials;
- ``restart``: a fleet on redis-server, the server SIGKILLed mid-run and started again on the
  same port from its AOF: did the fleet go on, trials lost or run twice, time to recover;
- ``faults``: W workers, 1 s objective, SIGKILL of 2 workers' process groups mid-trial: was the
  killed trial run again (and completed), how long after the kill;
- ``memory``: one worker process alone for many trials: RSS growth, server bytes per trial;
- ``growth``: open an existing experiment/study of 1k and 10k trials and read all its trials,
  in a fresh process (imports not timed), median of 3; bytes per trial on the server.

Prints the tables (ratios vs orion-redis), writes ``benchmarks/results/peers.json``; ``--docs``
replaces the generated part of docs/benchmarks.md's section "Peers". Backends that cannot start
(no PostgreSQL, no optuna) are skipped with the reason, never a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package `benchmarks`
from benchmarks.common import _fmt  # noqa: E402
from benchmarks.peers_common import (  # noqa: E402
    API,
    DOCS_FILE,
    MODES,
    OURS,
    PEERS,
    RESULTS,
    WORKLOADS,
    Env,
    _log,
)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in (
        "orion",
        "orion-track-redis",
        "optuna",
        "redis",
        "sqlalchemy",
        "psycopg2-binary",
        "grpcio",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _start_servers(stack, tmp: Path, peers: list[str], skipped: dict):
    from benchmarks.common import choose_binary
    from orion_track_redis.testing import RedisServer

    redis_server = stack.enter_context(RedisServer(tmp / "redis", binary=choose_binary()))
    redis_server.start()
    optuna_peers = [p for p in peers if p.startswith("optuna")]
    try:
        import optuna  # noqa: F401
    except ImportError as exc:
        for p in optuna_peers:
            skipped[p] = f"optuna not importable: {exc}"
        return redis_server, None, None
    pg = proxy = None
    if "optuna-rdb-pg" in peers or "optuna-grpc-pg" in peers:
        try:
            import psycopg2  # noqa: F401

            from benchmarks.peers_servers import PostgresServer

            pg = PostgresServer()
            stack.callback(pg.stop)
            pg.start()
        except Exception as exc:  # noqa: BLE001 - no PostgreSQL: the peers are skipped
            pg = None
            for p in ("optuna-rdb-pg", "optuna-grpc-pg"):
                if p in peers:
                    skipped[p] = f"PostgreSQL cannot start: {type(exc).__name__}: {exc}"
    if pg is not None and "optuna-grpc-pg" in peers:
        try:
            import grpc  # noqa: F401

            from benchmarks.peers_servers import GrpcProxy

            proxy = GrpcProxy(pg.url)
            stack.callback(proxy.stop)
            proxy.start()
        except Exception as exc:  # noqa: BLE001
            proxy = None
            skipped["optuna-grpc-pg"] = f"gRPC proxy cannot start: {type(exc).__name__}: {exc}"
    return redis_server, pg, proxy


def _child(argv: list[str]) -> int | None:
    """The child modes: workers, timed reads and the gRPC proxy, each in a process of its own."""
    if argv[0] == "_optuna_worker":
        from benchmarks.peers_worker import optuna_worker_main

        return optuna_worker_main(json.loads(argv[1]))
    if argv[0] == "_orion_api_worker":
        from benchmarks.peers_worker import orion_api_worker_main

        return orion_api_worker_main(json.loads(argv[1]))
    if argv[0] == "_open":
        from benchmarks.peers_growth import open_main

        return open_main(json.loads(argv[1]))
    if argv[0] == "_grpc_proxy":
        from benchmarks.peers_servers import grpc_proxy_main

        return grpc_proxy_main(argv[1], int(argv[2]))
    return None


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI's smoke test)")
    parser.add_argument(
        "--docs",
        action="store_true",
        help="write the tables into docs/benchmarks.md (section 'Peers')",
    )
    parser.add_argument("--peers", default=",".join((*PEERS, API)))
    parser.add_argument(
        "--workloads",
        default=None,
        help=f"comma-separated, of {','.join(WORKLOADS)} (default: all; "
        "--quick: all but tpe, which runs the fleet's code)",
    )
    parser.add_argument("--fleet-workers", help="override the mode's fleet workers, e.g. 16,64")
    parser.add_argument("--fleet-trials", type=int, help="override the mode's fleet trials")
    parser.add_argument(
        "--fleet-sleep", help="the fleet objective's seconds, comma-separated, e.g. 0,1 (default 0)"
    )
    parser.add_argument("--growth-sizes", help="comma-separated, e.g. 1000,10000,30000")
    parser.add_argument("--memory-trials", help="override, e.g. orion-redis=2000,optuna=10000")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    mode = dict(MODES["quick" if args.quick else "full"])
    if args.fleet_workers:
        mode["fleet_workers"] = tuple(int(s) for s in args.fleet_workers.split(","))
    if args.fleet_trials:
        mode["fleet_trials"] = args.fleet_trials
    if args.fleet_sleep:
        mode["fleet_sleeps"] = tuple(float(s) for s in args.fleet_sleep.split(","))
    if args.growth_sizes:
        mode["growth_sizes"] = tuple(int(s) for s in args.growth_sizes.split(","))
    if args.memory_trials:
        over = dict(kv.split("=") for kv in args.memory_trials.split(","))
        mode["memory_trials"] = {**mode["memory_trials"], **{k: int(v) for k, v in over.items()}}
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if args.workloads is None:
        args.workloads = ",".join(w for w in WORKLOADS if not (args.quick and w == "tpe"))
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = (set(peers) - {*PEERS, API}) | (set(workloads) - set(WORKLOADS))
    if bad:
        parser.error(f"unknown peer(s)/workload(s) {sorted(bad)}")
    return args, mode, peers, workloads


def run_workloads(env: Env, m: dict, live: list[str], workloads: list[str], meta: dict) -> dict:
    from benchmarks.peers_analyse import analyse_faults, analyse_fleet, analyse_restart
    from benchmarks.peers_fleet import run_fleet
    from benchmarks.peers_growth import run_growth
    from benchmarks.peers_memory import run_memory
    from benchmarks.peers_report import settings
    from benchmarks.peers_restart import Restarter

    results: dict = {k: [] for k in workloads}

    def attempt(kind, peer, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one peer's failure is reported, not fatal
            meta["errors"][f"{kind} {peer}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            _log(f"  {kind} {peer} FAILED:\n{traceback.format_exc()}")
            return None

    def fleet(kind, peer, workers, trials, sleep_s, cap_s, analyse=analyse_fleet, **kw):
        _log(f"{kind} {peer}: {workers} workers, {trials} trials")
        raw = attempt(
            kind,
            peer,
            lambda: run_fleet(
                env, peer, workers=workers, trials=trials, sleep_s=sleep_s, cap_s=cap_s, **kw
            ),
        )
        if raw:
            a = analyse(raw)
            a["settings"] = settings(peer, m, kind)
            results[kind].append(a)
            _log(
                f"  {a['completed']} completed in {a['wall_s']:.1f}s, steady "
                f"{_fmt(a['steady_trials_per_s'])}/s, died {len(a['died'])}"
            )
            return a
        return None

    if "fleet" in workloads:
        for sleep_s in m.get("fleet_sleeps", (0.0,)):
            for w in m["fleet_workers"]:
                for peer in live:
                    if peer == "orion-pickleddb" and w > m["big_fleet"]:
                        continue
                    cap = m["pickled_cap_s"] if peer == "orion-pickleddb" else m["fleet_cap_s"]
                    fleet("fleet", peer, w, m["fleet_trials"], sleep_s, cap)
    if "tpe" in workloads:
        for peer in [p for p in live if p in m["tpe_peers"]]:
            fleet(
                "tpe",
                peer,
                m["tpe_workers"],
                m["tpe_trials"],
                0.0,
                m["tpe_cap_s"],
                algo="tpe",
                tag="tpe",
            )
    if "restart" in workloads:
        for peer in [p for p in live if p in m["restart_peers"]]:
            a = fleet(
                "restart",
                peer,
                m["restart_workers"],
                m["restart_trials"],
                m["restart_sleep_s"],
                m["restart_cap_s"],
                analyse=analyse_restart,
                tag="restart",
                tick=Restarter(env.redis, m["restart_after_s"], m["restart_down_s"]),
            )
            if a:
                _log(
                    f"  went on {a['continued']}, lost {a['lost']}, run twice {a['ran_twice']}, "
                    f"exactly once {a['exactly_once']}, down {_fmt(a['restart'].get('down_s'))}s"
                )
    if "faults" in workloads:
        for peer in [p for p in live if p not in ("orion-pickleddb", API)]:
            a = fleet(
                "faults",
                peer,
                m["fault_workers"],
                m["fault_trials"],
                m["fault_sleep_s"],
                m["fault_cap_s"],
                analyse=analyse_faults,
                kills=m["fault_kills"],
                kill_after_s=m["fault_kill_after_s"],
                lease=m["lease_s"] if peer == OURS else None,
                heartbeat=True,
                tag="faults",
            )
            if a:
                _log(
                    f"  killed {len(a['kills'])}, recovered {a['recovered']}: "
                    f"{[(k['state'], k['completed_after_s']) for k in a['kills']]}"
                )
    if "memory" in workloads:
        for peer in [p for p in live if p != "orion-pickleddb"]:
            n = m["memory_trials"].get(peer, m["memory_trials"]["optuna"])
            _log(f"memory {peer}: {n} trials, one worker")
            row = attempt(
                "memory",
                peer,
                lambda peer=peer, n=n: run_memory(
                    env, peer, n, m["memory_every_s"], m["memory_cap_s"]
                ),
            )
            if row:
                results["memory"].append(row)
                _log(
                    f"  {row['completed']} trials in {row['wall_s']:.0f}s, RSS "
                    f"{_fmt(row.get('rss_first_mb'), 0)} -> {_fmt(row.get('rss_end_mb'), 0)} MB"
                )
    if "growth" in workloads:
        built: dict = {}
        order = [p for p in PEERS if p in live]  # the RDB study before the proxy reads it
        for n in m["growth_sizes"]:
            for peer in order:
                if peer == "optuna-grpc-pg" and ("optuna-rdb-pg", n) not in built:
                    continue
                _log(f"growth {peer}: {n} trials")
                row = attempt(
                    "growth",
                    peer,
                    lambda peer=peer, n=n: run_growth(env, peer, n, m["growth_repeats"], built),
                )
                if row:
                    results["growth"].append(row)
                    _log(
                        f"  open+read {row['open_s']:.3f}s (build {row['build_s']:.1f}s), "
                        f"{_fmt(row['bytes_per_trial'], 0)} B/trial"
                    )
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with contextlib.suppress(ImportError):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if argv and argv[0].startswith("_"):
        return _child(argv)
    args, mode, peers, workloads = _parse(argv)
    out_path = (
        Path(args.out)
        if args.out
        else RESULTS / ("peers-quick.json" if args.quick else "peers.json")
    )
    from benchmarks.common import _machine
    from benchmarks.peers_report import goals, render, write_docs

    started = time.time()
    meta = {
        "started_utc": datetime.datetime.utcnow().isoformat(timespec="seconds"),
        "command": "python benchmarks/peers.py " + " ".join(argv),
        "machine": "{nproc} cores, {memory_gib} GiB, {cpu}".format(**_machine()),
        "loadavg_start": [round(x, 1) for x in os.getloadavg()],
        "versions": _versions(),
        "mode": mode,
        "skipped": {},
        "errors": {},
    }
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="peers-")))
        redis_server, pg, proxy = _start_servers(stack, tmp, peers, meta["skipped"])
        meta["versions"]["redis-server"] = redis_server.client().info("server")["redis_version"]
        if pg is not None:
            meta["versions"]["postgresql"] = pg.version
        env = Env(tmp, redis_server, pg, proxy, meta["skipped"])
        env.mode = mode
        live = [p for p in peers if p not in meta["skipped"]]
        for p, why in meta["skipped"].items():
            _log(f"skipped {p}: {why}")
        results = run_workloads(env, mode, live, workloads, meta)
    meta["loadavg_end"] = [round(x, 1) for x in os.getloadavg()]
    meta["seconds"] = time.time() - started
    text = render(results, meta)
    print(text, flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(
        json.dumps(
            {"meta": meta, "results": results, "goals": goals(results)}, indent=1, default=str
        )
    )
    _log(f"wrote {out_path}")
    if args.docs:
        write_docs(text)
        _log(f"updated {DOCS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
