"""End-to-end fleet: `orion hunt` worker processes on ours and on Legacy+PickledDB, a trivial
objective, the same cap; two workers run under cProfile (profile_hunt.py) and their profiles are
split into storage, objective, sleep, imports and the rest."""

from __future__ import annotations

import contextlib
import datetime
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks import common
from benchmarks.common import HERE, _fmt, _legacy, _log

OBJECTIVE = '''\
"""Trivial objective: reports at once, without importing Oríon (writes ORION_RESULTS_PATH)."""
import json, os, sys
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:] if "=" in a)
if not args:  # "-x 1.0 -y 2.0" form
    it = iter(sys.argv[1:]); args = {k.lstrip("-"): v for k, v in zip(it, it)}
value = (float(args["x"]) - 2) ** 2 + (float(args["y"]) + 1) ** 2
with open(os.environ["ORION_RESULTS_PATH"], "w") as fh:
    json.dump([{"name": "objective", "type": "objective", "value": value}], fh)
'''


def _fleet_config(path, backend, location):
    """The fleet's config file. The experiment gets a shared working_dir: without one, each
    Oríon 0.2.7 worker runs trials in a temporary directory that it deletes when it stops, and
    a trial runs under the directory of the worker that produced it, so a worker that stops
    first breaks the trials other workers are still running there."""
    if backend == "redis":
        storage = f'storage:\n  type: redis\n  database:\n    host: "{location}"\n'
    else:
        storage = (
            f'storage:\n  type: legacy\n  database:\n    type: pickleddb\n    host: "{location}"\n'
        )
    path.write_text(
        storage + f'experiment:\n  working_dir: "{path.parent / "trials"}"\n'
        "  algorithms:\n    random:\n      seed: null\n"
    )
    return path


def stop_workers(workers, grace_s=20.0):
    """SIGINT every worker's process group still running, SIGKILL what is left after grace_s."""
    for w in workers:
        if w.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # its group may be gone already
                os.killpg(w.pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    for w in workers:
        if w.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, signal.SIGKILL)
            w.wait()


def _fleet_storage(backend, location):
    if backend == "redis":
        from orion_track_redis import Redis

        return Redis(uri=location)
    return _legacy("pickleddb", location)


def _run_fleet(cfg, backend, location, tmp, profile_dir=None):
    workdir = tmp / f"fleet-{backend}"
    workdir.mkdir()
    objective = workdir / "objective.py"
    objective.write_text(OBJECTIVE)
    config = _fleet_config(workdir / "orion_config.yaml", backend, location)
    name = f"fleet-{backend}"
    orion = str(Path(sys.executable).with_name("orion"))
    hunt = [
        "hunt",
        "--config",
        str(config),
        "-n",
        name,
        "--exp-max-trials",
        str(cfg["fleet_trials"]),
        "--exp-max-broken",
        "1000",
        "--idle-timeout",
        "600",
        sys.executable,
        str(objective),
        "-x~uniform(-5, 5)",
        "-y~uniform(-5, 5)",
    ]
    env = dict(os.environ, ORION_REDIS_URI="")
    env.pop("ORION_DB_ADDRESS", None)
    env.pop("ORION_STORAGE_TYPE", None)
    # create the experiment first (not timed): workers then only load it
    init = subprocess.run(
        [orion, *hunt[:1], "--init-only", *hunt[1:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=300,
    )
    if init.returncode != 0:
        raise RuntimeError(f"orion hunt --init-only failed:\n{init.stdout}\n{init.stderr}")
    cmds = []
    modes = ("wall", "cpu") if cfg["fleet_workers"] > 1 else ("cpu",)
    for w in range(cfg["fleet_workers"]):
        if profile_dir is not None and w < len(modes):
            mode = modes[w]
            cmds.append(
                [
                    sys.executable,
                    str(HERE / "profile_hunt.py"),
                    mode,
                    str(profile_dir / f"worker-{mode}.prof"),
                    *hunt,
                ]
            )
        else:
            cmds.append([orion, *hunt])
    cap = cfg["fleet_cap_s"]  # the same for every backend (see _compare_fleets)
    logs = [open(workdir / f"worker-{w}.log", "w") for w in range(len(cmds))]
    launch_utc = datetime.datetime.utcnow()  # trials' end_time is naive UTC too
    start = time.monotonic()
    workers = [
        subprocess.Popen(
            c, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True
        )
        for c, log in zip(cmds, logs)
    ]
    capped = False
    while any(w.poll() is None for w in workers):
        if time.monotonic() - start > cap:
            capped = True
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    if capped:
        stop_workers(workers)
    for log in logs:
        log.close()
    storage = _fleet_storage(backend, location)
    (exp,) = storage.fetch_experiments({"name": name})
    trials = storage.fetch_trials(uid=exp["_id"])
    counts = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    # when each completed trial ended, in seconds from the launch (those after a cap excluded)
    ends = sorted(
        (t.end_time - launch_utc).total_seconds()
        for t in trials
        if t.status == "completed" and t.end_time
    )
    ends = [e for e in ends if e <= elapsed]
    failed = [w.returncode for w in workers if w.returncode not in (0, None)]
    if failed and not capped:
        tail = (workdir / "worker-0.log").read_text()[-3000:]
        raise RuntimeError(f"{backend} fleet: workers exited with {failed}:\n{tail}")
    return {
        "backend": backend,
        "workers": len(workers),
        "target_trials": cfg["fleet_trials"],
        "completed": len(ends),
        "statuses": counts,
        "elapsed_s": elapsed,
        "cap_s": cap,
        "capped": capped,
        "launch_utc": launch_utc.isoformat(),
        "end_offsets_s": ends,
    }


def _compare_fleets(fleets):
    """Make the fleets comparable: Oríon's per-trial cost grows with the trials already in the
    experiment, so rates are taken over the same window W (the shorter run, from each fleet's
    own launch) and over the same first K trials (K = the smaller completed count)."""
    window = min(f["elapsed_s"] for f in fleets)
    k = min(f["completed"] for f in fleets)
    for f in fleets:
        in_window = sum(1 for e in f["end_offsets_s"] if e <= window)
        t_k = f["end_offsets_s"][k - 1] if k else None
        f.update(
            window_s=window,
            completed_in_window=in_window,
            trials_per_s=in_window / window,
            first_k=k,
            time_to_first_k_s=t_k,
            first_k_trials_per_s=k / t_k if t_k else None,
        )


def _protocol_methods():
    from orion.storage.base import BaseStorageProtocol

    return {
        n
        for n, _ in inspect.getmembers(BaseStorageProtocol, inspect.isfunction)
        if not n.startswith("_")
    }


def _storage_time(stats, markers):
    """Time in storage: call edges into the protocol methods (defined in a ``markers`` file)
    from outside those files, inclusive of everything below (redis-py, decoding). Protocol
    methods only: the context managers a storage enters within itself (``hold``, a database's
    ``locked_database``) are called by contextlib from outside and would count twice."""
    methods = _protocol_methods()
    total, by_method = 0.0, {}
    for (filename, _line, name), (_cc, _nc, _tt, _ct, callers) in stats.items():
        if name in methods and any(m in filename for m in markers):
            for caller, edge in callers.items():
                if not any(m in caller[0] for m in markers):
                    total += edge[3]
                    by_method[name] = by_method.get(name, 0.0) + edge[3]
    return total, by_method


def _outside(callers, markers):
    """Inclusive time of a function's calls from outside the storage (storage waits are
    storage time)."""
    return sum(
        edge[3] for caller, edge in callers.items() if not any(m in caller[0] for m in markers)
    )


def _profile_summary(path, storage_markers):
    """Split a hunt worker's profile: storage calls, the objective's subprocess, sleeping, the rest,
    over the whole process and (``storage_share_hunt_loop``) over the hunt loop only."""
    import pstats

    stats = pstats.Stats(str(path)).stats
    total = sum(v[2] for v in stats.values())
    storage, by_method = _storage_time(stats, storage_markers)
    objective = sleep = 0.0
    for (filename, _line, name), (_cc, _nc, _tt, _ct, callers) in stats.items():
        if filename.endswith("subprocess.py") and name in ("wait", "__init__"):
            objective += sum(
                edge[3]
                for caller, edge in callers.items()
                if not caller[0].endswith("subprocess.py")
            )
        elif name == "<built-in method time.sleep>":
            sleep += _outside(callers, storage_markers)
    # imports: cProfile leaves recursive re-entries out of cumtime, so the cumulative time of
    # _find_and_load is that of the outermost imports (start-up and lazy imports)
    imports = sum(
        v[3]
        for (f, _l, n), v in stats.items()
        if n == "_find_and_load" and "importlib._bootstrap" in f
    )
    other = max(0.0, total - storage - objective - sleep - imports)
    top = sorted(by_method.items(), key=lambda kv: -kv[1])[:8]
    out = {
        "total_s": total,
        "storage_s": storage,
        "objective_subprocess_s": objective,
        "sleep_s": sleep,
        "imports_s": imports,
        "orion_and_other_s": other,
        "storage_share": storage / total if total else 0.0,
        "top_storage_methods_s": dict(top),
    }
    out.update(_hunt_loop_share(path, storage_markers))
    return out


def _hunt_loop_share(path, markers):
    """Storage share of the hunt loop alone (Runner.run): storage time between the snapshots
    profile_hunt.py took when the loop started and ended / the loop's duration on the same
    clock."""
    before, after = Path(f"{path}.before-run"), Path(f"{path}.after-run")
    run = Path(f"{path}.run.json")
    if not (before.exists() and after.exists() and run.exists()):
        return {"hunt_loop_s": None, "storage_hunt_loop_s": None, "storage_share_hunt_loop": None}
    import pstats

    loop_s = json.loads(run.read_text())["run_s"]
    storage = (
        _storage_time(pstats.Stats(str(after)).stats, markers)[0]
        - _storage_time(pstats.Stats(str(before)).stats, markers)[0]
    )
    return {
        "hunt_loop_s": loop_s,
        "storage_hunt_loop_s": storage,
        "storage_share_hunt_loop": storage / loop_s if loop_s else None,
    }


def section_fleet(cfg, server, tmp):
    out = {}
    profile_dir = tmp / "profiles"
    (profile_dir / "pickleddb").mkdir(parents=True)
    prefix = f"fleet-{uuid.uuid4().hex[:6]}"
    out["redis"] = _run_fleet(cfg, "redis", f"{server.url}/0?prefix={prefix}", tmp, profile_dir)
    out["pickleddb"] = _run_fleet(
        cfg, "pickleddb", str(tmp / "fleet.pkl"), tmp, profile_dir / "pickleddb"
    )
    _compare_fleets([out["redis"], out["pickleddb"]])
    for b in ("redis", "pickleddb"):
        f = out[b]
        _log(
            f"  fleet {b}: {f['completed']} trials in {f['elapsed_s']:.1f}s"
            f"{' (capped)' if f['capped'] else ''}; {f['completed_in_window']} in the first "
            f"{f['window_s']:.0f}s, first {f['first_k']} in {_fmt(f['time_to_first_k_s'])}s"
        )
    out["profile"], out["profile_pickleddb"] = {}, {}
    for mode in ("wall", "cpu"):
        path = profile_dir / f"worker-{mode}.prof"
        if path.exists():
            out["profile"][mode] = _profile_summary(
                path, ("/orion_track_redis/", "/orion/storage/base.py")
            )
            shutil.copy(path, common.OUTDIR / f"fleet-worker-{mode}.prof")
        path = profile_dir / "pickleddb" / f"worker-{mode}.prof"
        if path.exists():
            out["profile_pickleddb"][mode] = _profile_summary(
                path,
                ("/orion/storage/legacy.py", "/orion/storage/base.py", "/orion/core/io/database/"),
            )
    return out
