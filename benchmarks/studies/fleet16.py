#!/usr/bin/env python
"""Only the end-to-end fleet section of run.py: 16 `orion hunt` workers, random search, a trivial
objective, 300 trials, the same cap, this backend (copy-free holds, the default, or
``--env ORION_REDIS_ACCELERATE=0``) vs Legacy+PickledDB, side by side in one run.

The full ``benchmarks/run.py`` runs this section too, with every other one; this script is for
measuring the fleet alone in a few minutes. Writes benchmarks/results/fleet16.json.

Usage: python benchmarks/studies/fleet16.py [--workers N] [--trials N] [--env NAME=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the package `benchmarks`
from benchmarks import common  # noqa: E402 - the main benchmark's fleet machinery
from benchmarks.common import MODES, RESULTS, _machine, choose_binary  # noqa: E402
from benchmarks.render import _fleet_table  # noqa: E402
from benchmarks.sections.fleet import section_fleet  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=MODES["full"]["fleet_workers"])
    parser.add_argument("--trials", type=int, default=MODES["full"]["fleet_trials"])
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the workers (repeatable)",
    )
    parser.add_argument("--out", default=str(RESULTS / "fleet16.json"))
    args = parser.parse_args(argv)
    os.environ.update(dict(item.split("=", 1) for item in args.env))  # workers inherit it
    cfg = dict(MODES["full"], fleet_workers=args.workers, fleet_trials=args.trials)
    from orion_track_redis.testing import RedisServer

    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="orion-redis-fleet16-") as tmp,
        RedisServer(Path(tmp) / "redis", binary=choose_binary(None)) as server,
    ):
        server.start()
        common.OUTDIR = Path(args.out).parent
        common.OUTDIR.mkdir(parents=True, exist_ok=True)
        fleet = section_fleet(cfg, server, Path(tmp))
    print("\n".join(_fleet_table({"fleet": fleet})))
    Path(args.out).write_text(
        json.dumps({"env": args.env, "fleet": fleet, "machine": _machine()}, indent=1, default=str)
    )
    print(f"\nwrote {args.out} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
