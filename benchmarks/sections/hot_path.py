"""Hot path: the five per-trial calls (register, reserve, heartbeat, push results, set status)
timed in 1..N spawned processes, ours side by side with a bare EVALSHA, Legacy+PickledDB and
Legacy+EphemeralDB.

Bare EVALSHA: our own lua/{register,reserve,update}_trial.lua, called through redis-py's Script
with precomputed keys and arguments -- the same server work, none of the backend's Python: what
a minimal client of the same scripts pays."""

from __future__ import annotations

import datetime
import multiprocessing as mp
import shutil
import tempfile
import time
import uuid

from benchmarks.common import (
    OPS,
    _bulk_legacy,
    _collect,
    _completed_trial,
    _Exp,
    _experiment_config,
    _legacy,
    _log,
    _new_trial,
    _redis_storage,
    _report,
    _set_result,
    _stats_us,
)


def _trial_pairs(trial):
    """A trial document as the field/value pairs our backend writes (precomputed once)."""
    from orion_track_redis import codec

    return codec.encode_trial(trial.to_dict())[0]


class BareOps:
    """The five hot-path calls as bare EVALSHAs of our scripts on keys of their own prefix."""

    def __init__(self, url, prefix, wid):
        import redis

        from orion_track_redis import codec, keys
        from orion_track_redis.store import scripts

        self.client = redis.Redis.from_url(url)
        self.tag = "{" + prefix + "}"
        self.register_s = self.client.register_script(scripts.source("register_trial"))
        self.reserve_s = self.client.register_script(scripts.source("reserve_trial"))
        self.update_s = self.client.register_script(scripts.source("update_trial"))
        sample = _completed_trial(1, 1, 1)
        self.full_pairs = _trial_pairs(sample)
        sample.status = "reserved"  # push writes a reserved trial (a completed one fails the CAS)
        self.push_pairs = _trial_pairs(sample)
        self.new_pairs = _trial_pairs(_new_trial(1, 1, 1))
        self.wid = wid
        self.count = 0
        self.idx = [
            f"{self.tag}:s:{s}"
            for s in ("new", "suspended", "interrupted", "reserved", "completed")
        ]
        self.all, self.rev, self.changed, self.floor = (
            f"{self.tag}:all",
            f"{self.tag}:rev",
            f"{self.tag}:changed",
            f"{self.tag}:floor",
        )
        self.leases, self.holders, self.clock, self.recoveries, self.recovered = (
            f"{self.tag}:leases",
            f"{self.tag}:holders",
            f"{self.tag}:lease_clock",
            f"{self.tag}:recoveries",
            f"{self.tag}:recovered",
        )
        self.holder = f"bare{wid} {{}}"  # our reserve records its holder, as this does
        self.prefix = f"{self.tag}:t:"
        self.now = codec.dumps(datetime.datetime.utcnow())
        self.ttl, self.keep = keys.REQUEST_TTL, keys.CHANGE_LOG_KEEP
        self.trims = "params 2;results 1"

    def _req(self):
        self.count += 1  # every write carries a fresh request id, as ours do
        return f"{self.tag}:req:{self.wid}-{self.count}"

    def make_trial(self, i):
        return f"w{self.wid}-{i}"

    def register(self, tok):
        return self.register_s(
            keys=[
                self.prefix + tok,
                self.all,
                self.idx[0],
                self.rev,
                self.changed,
                self._req(),
                self.floor,
            ],
            args=[tok, "now", self.ttl, self.keep, *self.new_pairs],
        )

    def register_completed(self, tok):
        return self.register_s(
            keys=[
                self.prefix + tok,
                self.all,
                self.idx[4],
                self.rev,
                self.changed,
                self._req(),
                self.floor,
            ],
            args=[tok, "now", self.ttl, self.keep, *self.full_pairs],
        )

    def reserve(self):
        reply = self.reserve_s(
            keys=[
                *self.idx[:4],
                self._req(),
                self.rev,
                self.changed,
                self.leases,
                self.holders,
                self.clock,
            ],
            args=[self.prefix, '"reserved"', self.now, self.ttl, 30, self.holder],
        )
        return reply[0].decode() if reply else None

    def _update(self, tok, new_index, new_status, score, trims, pairs):
        rc = self.update_s(
            keys=[
                self.prefix + tok,
                self.idx[3],
                new_index,
                self.rev,
                self.changed,
                self._req(),
                self.leases,
                self.holders,
                self.recoveries,
                self.recovered,
                f"{self.tag}:unobserved",
            ],
            args=[tok, '"reserved"', new_status, score, self.ttl, trims, "", "", *pairs],
        )
        if rc != 1:  # a failed CAS does less work: it would flatter the floor
            raise RuntimeError(f"bare update_trial of {tok} returned {rc}")
        return rc

    def heartbeat(self, tok):
        return self._update(tok, self.idx[3], "", "now", "", ("heartbeat", self.now))

    def push(self, tok):
        return self._update(tok, self.idx[3], '"reserved"', "", self.trims, self.push_pairs)

    def set_status(self, tok):
        return self._update(
            tok,
            self.idx[4],
            '"completed"',
            "now",
            "",
            ("status", '"completed"', "heartbeat", self.now),
        )


class ProtocolOps:
    """The five hot-path calls through an Oríon storage protocol object (ours or Legacy)."""

    def __init__(self, storage, exp_id, wid):
        self.storage, self.exp, self.wid = storage, _Exp(exp_id), wid
        self.exp_id = exp_id

    def make_trial(self, i):
        return _new_trial(self.exp_id, self.wid, i)

    def register(self, trial):
        return self.storage.register_trial(trial)

    def reserve(self):
        return self.storage.reserve_trial(self.exp)

    def heartbeat(self, trial):
        return self.storage.update_heartbeat(trial)

    def push(self, trial):
        _set_result(trial, 1.5)
        return self.storage.push_trial_results(trial)

    def set_status(self, trial):
        return self.storage.set_trial_status(trial, "completed", was="reserved")


def _make_ops(spec, wid):
    kind = spec["backend"]
    if kind == "bare":
        return BareOps(spec["url"], spec["prefix"], wid)
    if kind == "redis":
        return ProtocolOps(_redis_storage(spec["url"], spec["prefix"]), spec["exp_id"], wid)
    if kind == "pickleddb":
        return ProtocolOps(_legacy("pickleddb", spec["path"]), spec["exp_id"], wid)
    storage = _legacy("ephemeraldb")  # in memory: this process's own database
    config = _experiment_config("bench-ephemeral")
    storage.create_experiment(config)
    _bulk_legacy(storage, config["_id"], spec["background"])
    return ProtocolOps(storage, config["_id"], wid)


def _background(spec, url, storage, exp_id):
    """Fill a hot-path experiment with ``background`` finished trials (the same for every
    backend: PickledDB's cost grows with the size of its file)."""
    n = spec["background"]
    if spec["backend"] == "redis":
        for i in range(n):
            storage.register_trial(_completed_trial(exp_id, -1, i))  # workers use a >= 0
    elif spec["backend"] == "bare":
        bare = BareOps(url, spec["prefix"], "bg")
        for i in range(n):
            bare.register_completed(f"bg-{i}")
    elif spec["backend"] == "pickleddb":
        _bulk_legacy(storage, exp_id, n)


def _hot_worker(spec, wid, barrier, outdir):
    """One process of a hot-path group: five timed phases, each started on a barrier."""
    try:
        ops = _make_ops(spec, wid)
        phase_s, max_calls = spec["phase_s"], spec["max_calls"]
        out = {}
        mine, reserved = [], []

        def phase(name, fn, items=None, prepare=None):
            barrier.wait(timeout=300)
            samples = []
            start = time.monotonic()
            deadline = start + phase_s
            i = 0
            while i < max_calls and (items is None or i < len(items)):
                if items is not None:
                    item = items[i]
                else:
                    item = prepare(i) if prepare else i  # outside the timed call
                t0 = time.perf_counter()
                reply = fn(item)
                samples.append(time.perf_counter() - t0)
                i += 1
                if name == "reserve_trial":
                    if reply is None:  # nothing pending (should not happen): not a reserve
                        samples.pop()
                        break
                    reserved.append(reply)
                if time.monotonic() >= deadline:
                    break
            out[name] = {"samples": samples, "start": start, "end": time.monotonic()}

        # warm-up (untimed): connections, script loading, lazy imports
        warm = [ops.make_trial(10**7 + i) for i in range(3)]
        for t in warm:
            ops.register(t)
        for t in [ops.reserve() for _ in warm]:
            ops.heartbeat(t)
            ops.push(t)
            ops.set_status(t)
        phase("register_trial", lambda t: (ops.register(t), mine.append(t)), prepare=ops.make_trial)
        phase("reserve_trial", lambda _: ops.reserve(), items=mine)
        cycle = reserved or [None]
        phase("update_heartbeat", lambda i: ops.heartbeat(cycle[i % len(cycle)]))
        phase("push_trial_results", lambda i: ops.push(cycle[i % len(cycle)]))
        phase("set_trial_status", ops.set_status, items=list(reserved))
        _report(outdir, wid, out)
    except BaseException:  # report, never hang the parent
        import traceback

        _report(outdir, wid, error=traceback.format_exc())
        try:
            barrier.abort()  # the others must not wait for this one
        except Exception:  # noqa: BLE001
            pass


def _run_group(spec, nprocs):
    """Start ``nprocs`` spawned processes on the five phases; per-op latency and throughput."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(nprocs)
    outdir = tempfile.mkdtemp(prefix="hot-")
    procs = [
        ctx.Process(target=_hot_worker, args=(spec, w, barrier, outdir), daemon=True)
        for w in range(nprocs)
    ]
    for p in procs:
        p.start()
    results = _collect(procs, outdir, spec["backend"])
    shutil.rmtree(outdir, ignore_errors=True)
    rows = []
    for op in OPS:
        samples = [s for r in results for s in r[op]["samples"]]
        start = min(r[op]["start"] for r in results)
        end = max(r[op]["end"] for r in results)
        row = {
            "backend": spec["backend"],
            "procs": nprocs,
            "op": op,
            **_stats_us(samples),
            "throughput_per_s": len(samples) / (end - start) if samples else 0.0,
        }
        rows.append(row)
    return rows


def section_hot_path(cfg, server, tmp):
    rows = []
    for nprocs in cfg["procs"]:
        for backend in ("redis", "bare", "pickleddb", "ephemeraldb"):
            if backend == "ephemeraldb" and nprocs != 1:
                continue  # in memory per process: several processes would not share it
            prefix = f"hot-{backend}-{nprocs}-{uuid.uuid4().hex[:6]}"
            spec = {
                "backend": backend,
                "url": server.url,
                "prefix": prefix,
                "phase_s": cfg["pickled_phase_s"] if backend == "pickleddb" else cfg["phase_s"],
                "max_calls": cfg["max_calls"],
                "background": cfg["background"],
            }
            if backend == "pickleddb":
                spec["max_calls"] = 500
                spec["path"] = str(tmp / f"{prefix}.pkl")
                storage = _legacy("pickleddb", spec["path"])
            elif backend == "redis":
                storage = _redis_storage(server.url, prefix)
            if backend in ("redis", "pickleddb"):
                config = _experiment_config(prefix)
                storage.create_experiment(config)
                spec["exp_id"] = config["_id"]
            if backend != "ephemeraldb":
                _background(spec, server.url, backend != "bare" and storage, spec.get("exp_id"))
            t0 = time.monotonic()
            group = _run_group(spec, nprocs)
            _log(
                f"  hot path {backend:11} x{nprocs:<2}: {time.monotonic() - t0:5.1f}s  "
                + "  ".join(
                    f"{r['op'].split('_')[0]} {r['median_us']:.0f}µs"
                    for r in group
                    if r["median_us"]
                )
            )
            rows += group
    return {"rows": rows}
