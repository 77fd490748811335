#!/usr/bin/env python
"""A long randomised nemesis over a real fleet (issue 17): the seeded schedule of
``tests/faults/test_nemesis.py::test_randomised_nemesis`` (stalls of redis-server, slow and lossy
links, a full server, SIGKILLs of workers, partitions of one worker), for minutes.

    python benchmarks/studies/nemesis.py [--seed N] [--duration 240] [--workers 5] [--trials N]

The seed is printed (``NEMESIS_SEED`` or ``--seed`` replays the same schedule). Every invariant
checked here is the CI test's (``tests/faults/nemesis.py``: ``violations`` + ``acknowledged_lost`` +
the lock's recovery after each fault). Prints the schedule as it runs, then a table; exit
code 1 if an invariant broke.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[2] / "tests"
sys.path[:0] = [str(_TESTS / "faults"), str(_TESTS)]  # nemesis.py, and the helpers it uses
import nemesis  # noqa: E402 - the shared nemesis lives with the tests


def render(seed: int, result: dict, wall_s: float) -> str:
    counts = {}
    for event in result["schedule"]:
        counts[event["fault"]] = counts.get(event["fault"], 0) + 1
    rows = [
        ("seed", f"NEMESIS_SEED={seed}"),
        ("faults applied", ", ".join(f"{n} {f}" for f, n in sorted(counts.items()))),
        ("wall time", f"{wall_s:.0f} s"),
        ("completed", result["completed"]),
        ("throughput while faulted", f"{result['faulted_per_s']:.2f} trials/s"),
        ("workers started (incl. replacements)", result["workers_started"]),
        ("killed by the nemesis", result["killed"]),
        ("stopped with an error", len(result["stopped_with_error"])),
        ("trials rerun (after a kill or partition)", result["reruns"]),
        ("lock free or held anew after a fault, max", f"{result['lock_recovery_max_s']} s"),
        ("invariant violations", len(result["problems"])),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    lines += ["", "error lines of stopped workers:"] + [f"  {s}" for s in result["stopped_lines"]]
    lines += [f"VIOLATION: {p}" for p in result["problems"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seed", type=int, default=int(os.environ.get("NEMESIS_SEED") or random.randrange(10**6))
    )
    parser.add_argument("--duration", type=float, default=240.0, help="seconds of faults")
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=1.0, help="objective seconds")
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="max_trials (default: enough to outlast the faults)",
    )
    args = parser.parse_args(argv)
    # ~0.5 trials/s per worker under faults here (2 cores): the fleet outlasts the schedule
    trials = args.trials or int(args.duration * args.workers * 0.5 / args.sleep) + 30
    print(f"NEMESIS_SEED={args.seed} workers={args.workers} max_trials={trials}", flush=True)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="orion-nemesis-") as tmp:
        result = nemesis.run_nemesis(
            Path(tmp),
            args.seed,
            duration_s=args.duration,
            workers=args.workers,
            max_trials=trials,
            sleep_s=args.sleep,
            log=lambda m: print(m, flush=True),
        )
    print(render(args.seed, result, time.time() - start))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
