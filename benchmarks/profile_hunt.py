#!/usr/bin/env python
"""Run ``orion hunt`` under cProfile (used by benchmarks/run.py for the fleet profile).

Usage: python benchmarks/profile_hunt.py {wall|cpu} OUT.prof hunt ARGS...
``wall`` times with perf_counter (where the wall-clock time goes: storage, the objective's
subprocess, sleeping), ``cpu`` with process_time (where the worker's own CPU goes).
Only the main thread is profiled (the lock renewer thread is not).
"""
from __future__ import annotations

import cProfile
import sys
import time


def main() -> int:
    mode, out, *argv = sys.argv[1:]
    timer = time.process_time if mode == "cpu" else time.perf_counter
    profile = cProfile.Profile(timer)
    sys.argv = ["orion", *argv]
    code = 0
    profile.enable()
    try:
        from orion.core.cli import main as orion_main

        code = orion_main(argv) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        profile.disable()
        profile.dump_stats(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
