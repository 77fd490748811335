#!/usr/bin/env python
"""Run ``orion hunt`` under cProfile (used by benchmarks/run.py for the fleet profile).

Usage: python benchmarks/profile_hunt.py {wall|cpu} OUT.prof hunt ARGS...
``wall`` times with perf_counter (where the wall-clock time goes: storage, the objective's
subprocess, sleeping), ``cpu`` with process_time (where the worker's own CPU goes).
Only the main thread is profiled (the lock renewer thread is not).

Also writes ``OUT.prof.before-run`` and ``OUT.prof.after-run`` (the profile as it stood when the
hunt loop, ``orion.client.runner.Runner.run``, started and ended) and ``OUT.prof.run.json`` (the
loop's duration on the same clock): run.py subtracts one snapshot from the other to get the hunt
loop alone, without Python start-up, imports, building the experiment and the final summary.
"""

from __future__ import annotations

import cProfile
import json
import sys
import time


def _mark_hunt_loop(profile, out, timer):
    from orion.client import runner

    original = runner.Runner.run

    def run(self):
        profile.dump_stats(out + ".before-run")  # disables the profiler to take the snapshot
        profile.enable()  # keeps accumulating: the snapshot is not a reset
        start = timer()
        try:
            return original(self)
        finally:
            run_s = timer() - start
            profile.dump_stats(out + ".after-run")  # hunt's summary after the loop is not in it
            profile.enable()
            with open(out + ".run.json", "w") as fh:
                json.dump({"run_s": run_s}, fh)

    runner.Runner.run = run


def main() -> int:
    mode, out, *argv = sys.argv[1:]
    timer = time.process_time if mode == "cpu" else time.perf_counter
    profile = cProfile.Profile(timer)
    sys.argv = ["orion", *argv]
    code = 0
    profile.enable()
    try:
        _mark_hunt_loop(profile, out, timer)
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
