#!/usr/bin/env python
"""How fast a Slurm fleet gets a faulted task's trial back, with this backend's clean stop and
reservation leases, side by side with Oríon's own handling (``trap_signals=false``, ``lease=0``),
in one run, under both ProctrackTypes (tests/faults/test_slurm_fleet.py checks the same scenario's
invariants at a smaller lease).

    python benchmarks/studies/slurm_recovery.py            # default lease (30 s), KillWait 30 s
    python benchmarks/studies/slurm_recovery.py --lease 10 --kill-wait 10

Starts its own redis-server and one-node Slurm (root, Debian's slurm-wlm and munge). For each
fault (orion_track_redis.testing.slurm_fleet.FAULTS) it prints how long until no process of the
task was left ("gone") and until its trial left ``reserved`` ("back": released by its worker, or
recovered by another worker once its lease ended), and writes benchmarks/results/slurm.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from orion_track_redis import Redis  # noqa: E402
from orion_track_redis.testing import RedisServer  # noqa: E402
from orion_track_redis.testing.slurm import SlurmCluster  # noqa: E402
from orion_track_redis.testing.slurm_fleet import FleetScenario, overlapping  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"


def one_run(server, workdir: Path, proctrack: str, ours: bool, args) -> list[dict]:
    options = f"lease={args.lease}&stop_grace=5" if ours else "lease=0&trap_signals=false"
    uri = f"{server.url}/0?prefix=bench-{uuid.uuid4().hex[:8]}&{options}"
    storage = Redis(uri=uri)
    with SlurmCluster(workdir / "slurm", proctrack=proctrack, kill_wait=args.kill_wait) as cluster:
        scenario = FleetScenario(cluster, uri, workdir / "fleet", trials=16, seconds=args.seconds)
        outcome = scenario.run(storage, timeout=600)
    recovered = {r["trial"] for r in outcome.recoveries}
    rows = []
    for fault in outcome.faults:
        back = outcome.released_s.get(fault.trial)
        how = "recovered (lease)" if fault.trial in recovered else "released" if back else "stuck"
        rows.append(
            {
                "proctrack": proctrack,
                "handling": "orion-track-redis" if ours else "Oríon's own",
                "form": fault.form,
                "fault": fault.kind,
                "gone_s": None if fault.gone_s is None else round(fault.gone_s, 1),
                "back_s": None if back is None else round(back, 1),
                "how": how,
                "final": outcome.statuses.get(fault.trial),
                "overlaps": len(overlapping(outcome.runs)),
                "reserved_left": list(outcome.statuses.values()).count("reserved"),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    columns = ["proctrack", "handling", "form", "fault", "gone_s", "back_s", "how", "final",
               "overlaps", "reserved_left"]  # fmt: skip
    text = [[str("-" if r[c] is None else r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(v.ljust(w) for v, w in zip(t, widths)) for t in text]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--kill-wait", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=8.0, help="objective duration")
    parser.add_argument("--out", default=str(RESULTS / "slurm.json"))
    args = parser.parse_args(argv)
    ok, reason = SlurmCluster.available()
    if not ok:
        print(f"cannot run: {reason}")
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="slurm-bench-") as tmp:
        with RedisServer(Path(tmp) / "redis") as server:
            server.start()
            for proctrack in ("linuxproc", "cgroup"):
                for ours in (True, False):
                    work = Path(tmp) / f"{proctrack}-{'ours' if ours else 'orion'}"
                    rows += one_run(server, work, proctrack, ours, args)
                    print(table(rows[-5:]), flush=True)
    print(
        f"\nlease={args.lease:g} s, KillWait={args.kill_wait} s, objective {args.seconds:g} s; "
        "'-': not within the run (the task never left, or the trial stayed reserved)\n"
    )
    print(table(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
