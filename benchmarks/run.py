#!/usr/bin/env python
"""The benchmark suite of issue 5: our Redis backend measured side by side, in one run, with a bare
EVALSHA of the same shape, Oríon's Legacy+PickledDB and Legacy+EphemeralDB.

    python benchmarks/run.py            # full run (~17 min on 2 cores)
    python benchmarks/run.py --quick    # fewer sizes/processes, 4-worker fleet (~7 min)
    python benchmarks/run.py --smoke    # tiny, for CI (~2 min): every section, meaningless numbers

Starts its own redis-server (``/usr/bin/redis-server`` when present, else the one found by
``orion_track_redis.server.binaries.find_redis_server``; ``--redis-server PATH`` overrides) on a
free
loopback port in a temporary directory, never a server that is already running. Prints a table
with ratios and the targets of issue 5 (PASS/FAIL), writes ``benchmarks/results/latest.json``
and ``benchmarks/results/benchmarks.png`` (``--docs`` also copies the plot to ``docs/`` and the
table to ``docs/benchmarks.md``'s generated section).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package `benchmarks`
from benchmarks import common  # noqa: E402
from benchmarks.common import (  # noqa: E402
    MODES,
    RESULTS,
    _loadavg,
    _log,
    _machine,
    _versions,
    choose_binary,
)
from benchmarks.render import render_table, write_docs  # noqa: E402
from benchmarks.render_plot import plot  # noqa: E402
from benchmarks.sections.anatomy import section_anatomy  # noqa: E402
from benchmarks.sections.commands import section_commands  # noqa: E402
from benchmarks.sections.fetch import section_fetch  # noqa: E402
from benchmarks.sections.fleet import section_fleet  # noqa: E402
from benchmarks.sections.hot_path import section_hot_path  # noqa: E402
from benchmarks.sections.lock import section_lock  # noqa: E402
from benchmarks.sections.memory import section_memory  # noqa: E402
from benchmarks.targets import evaluate_targets, fleet_bound  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="fewer sizes and processes")
    group.add_argument("--smoke", action="store_true", help="tiny run for CI (< 60 s)")
    parser.add_argument("--redis-server", help="redis-server binary to start")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"), help="JSON output path")
    parser.add_argument(
        "--docs",
        action="store_true",
        help="also write docs/benchmarks.png and the generated part of docs/benchmarks.md",
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = MODES[mode]
    from orion_track_redis.server.binaries import server_version
    from orion_track_redis.testing import RedisServer

    binary = choose_binary(args.redis_server)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    common.OUTDIR = out_path.parent
    started = time.monotonic()
    res = {
        "meta": {
            "mode": mode,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            "command": "python benchmarks/run.py"
            + {"full": "", "quick": " --quick", "smoke": " --smoke"}[mode],
            "started_utc": datetime.datetime.utcnow().isoformat(timespec="seconds"),
            "machine": _machine(),
            "versions": _versions(),
            "loadavg_start": _loadavg(),
        }
    }
    sections = {}
    with tempfile.TemporaryDirectory(prefix="orion-redis-bench-") as tmpdir:
        tmp = Path(tmpdir)
        with RedisServer(tmp / "redis", binary=binary) as server:
            server.start()
            info = server.client().info("server")
            res["meta"]["redis"] = {
                "binary": binary,
                "version": info["redis_version"],
                "binary_version": ".".join(map(str, server_version(binary))),
                "appendonly": "everysec (RedisServer default)",
                "url": server.url,
            }
            _log(
                f"orion-track-redis benchmarks, {mode} run; redis-server {info['redis_version']} "
                f"({binary}) on {server.url}"
            )
            for name, fn in (
                ("commands_per_call", lambda: section_commands(cfg, server)),
                ("memory", lambda: section_memory(cfg, server)),
                ("hot_path", lambda: section_hot_path(cfg, server, tmp)),
                ("fetch", lambda: section_fetch(cfg, server)),
                ("lock_handoff", lambda: section_lock(cfg, server)),
                ("lock_hold_anatomy", lambda: section_anatomy(cfg, server, tmp)),
                ("fleet", lambda: section_fleet(cfg, server, tmp)),
            ):
                t0 = time.monotonic()
                _log(f"[{name}]")
                value = fn()
                if name == "fetch":
                    res["fetch_trials"], res["per_call_growth"] = value
                else:
                    res[name] = value
                sections[name] = time.monotonic() - t0
    res["meta"]["section_seconds"] = sections
    res["meta"]["loadavg_end"] = _loadavg()
    res["meta"]["duration_s"] = time.monotonic() - started
    res["fleet_bound"] = fleet_bound(res)
    res["targets"] = evaluate_targets(res)
    table = render_table(res)
    out_path.write_text(json.dumps(res, indent=1, default=str))
    png = out_path.parent / (
        "benchmarks.png" if out_path.name == "latest.json" else out_path.stem + ".png"
    )
    try:
        plot(res, png)
    except ImportError:
        png = None
        _log("matplotlib is not installed: no plot (pip install 'orion-track-redis[bench]')")
    print()
    print(table)
    print(f"\nwrote {out_path}{f' and {png}' if png else ''} in {res['meta']['duration_s']:.0f} s")
    if args.docs and png:
        write_docs(res, table, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
