"""One simulated `orion hunt` worker of fleet_sim.py (``SimWorker``, a thread replaying the recorded
per-trial cycle PRE / PRODUCE / RUN through its own storage) and the generator process that runs
many of them (``_process_main``), counting the commands it sends."""

from __future__ import annotations

import datetime
import random
import threading
import time
from collections import defaultdict

LOCK_TIMEOUT, RETRY_INTERVAL = 60, 1  # Oríon's

# The recorded cycle this replay follows (checked against the recording at start): Oríon's
# loop reserves first and produces (lock + register) only when nothing is pending.
PRE = [
    "fetch_trials",
    "fetch_trials",
    "count_broken_trials",
    "fetch_trials",
    "fetch_lost_trials",
    "fetch_pending_trials",
    "fetch_pending_trials",
    "reserve_trial",
]
PRODUCE = [
    "count_broken_trials",
    "fetch_trials",
    "lock_enter",
    "register_trial",
    "lock_exit",
    "fetch_lost_trials",
    "fetch_pending_trials",
    "fetch_pending_trials",
    "reserve_trial",
]
RUN = ["retrieve_result", "push_trial_results", "lock_enter", "lock_exit"]


# -- one simulated worker -------------------------------------------------------------------
class _Exp:
    def __init__(self, exp_id):
        self.id = self._id = exp_id


class SimWorker:
    """One `orion hunt` worker: its own storage (connection pool) and its own trial cache."""

    def __init__(self, uri, prefix, exp_id, params, stats):
        from orion_track_redis import Redis

        self.storage = Redis(uri=uri, prefix=prefix)
        self.exp, self.exp_id, self.p = _Exp(exp_id), exp_id, params
        self.ek = self.storage.backend.experiment_keys(exp_id)
        self.rev = None  # revision of this worker's trial cache (fetch_trials)
        self.stats = stats
        self.rng = random.Random()

    def timed(self, name, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.stats["calls"][name].append((time.perf_counter() - start) * 1000)

    def fetch_trials(self):
        """fetch_trials' Redis side: the changes since this worker's revision (no Trial built)."""
        from orion_track_redis.keys import CHANGE_LOG_KEEP
        from orion_track_redis.store.reads import (
            chunks as _chunks,
        )
        from orion_track_redis.store.reads import (
            is_cluster as _is_cluster,
        )
        from orion_track_redis.store.reads import (
            score_pairs as _score_pairs,
        )

        ek, storage = self.ek, self.storage
        if self.rev is not None:
            reply = storage.scripts.fetch_changes(
                rev=ek.rev,
                changed=ek.changed,
                all=ek.all,
                floor=ek.floor,
                cached_rev=self.rev,
                trial_prefix=ek.trial_prefix,
                max_changes=CHANGE_LOG_KEEP,
            )
            if len(reply) == 1 or int(reply[1]) >= 0:
                self.rev = int(reply[0])
                return
        pipe = storage.client.pipeline(transaction=True)
        pipe.get(ek.rev)
        pipe.execute_command("ZRANGE", ek.all, 0, -1, "WITHSCORES")
        raw_rev, pairs = pipe.execute()
        tokens = [t.decode() for t, _ in _score_pairs(pairs)]
        # the trials in fetch_docs chunks as the storage sends them (unparsed here)
        # (a Cluster pipeline refuses EVALSHA: one call per chunk there, as the storage does)
        pipe = None if _is_cluster(storage.client) else storage.client.pipeline(False)
        for chunk in _chunks(tokens):
            storage.scripts.fetch_docs(trials=[ek.trial_prefix + t for t in chunk], client=pipe)
        if pipe is not None:
            pipe.execute()
        self.rev = int(raw_rev or 0)

    def step(self, name, trial=None):
        s = self.storage
        if name == "fetch_trials":
            return self.timed(name, self.fetch_trials)
        if name == "count_broken_trials":
            return self.timed(name, s.count_broken_trials, self.exp)
        if name == "fetch_lost_trials":
            return self.timed(name, s.fetch_lost_trials, self.exp)
        if name == "fetch_pending_trials":
            return self.timed(name, s.fetch_pending_trials, self.exp)
        if name == "reserve_trial":
            return self.timed(name, s.reserve_trial, self.exp)
        if name == "retrieve_result":
            return trial
        if name == "push_trial_results":
            from orion.core.worker.trial import Trial

            trial.results = [
                Trial.Result(name="objective", type="objective", value=self.rng.random())
            ]
            trial.status = "completed"
            trial.end_time = datetime.datetime.utcnow()
            return self.timed(name, s.push_trial_results, trial)
        raise ValueError(name)

    def hold(self, produce: bool):
        """One algorithm-lock cycle: wait (measured against arrival), hold, write the state."""
        arrived = time.monotonic()
        start = time.perf_counter()
        try:
            with self.storage.acquire_algorithm_lock(
                uid=self.exp_id, timeout=LOCK_TIMEOUT, retry_interval=RETRY_INTERVAL
            ) as locked:
                acquired = time.monotonic()
                self.stats["calls"]["lock_acquire"].append((time.perf_counter() - start) * 1000)
                state = locked.state or {"releases": 0}
                time.sleep(self.p["hold_ms"] / 1000)
                if produce:
                    self.timed("register_trial", self.storage.register_trial, self._new_trial())
                n = state["releases"] + 1
                size = self.p["state_first"] + int(self.p["state_per_release"] * n)
                locked.set_state({"releases": n, "blob": bytes(size)})
                released = time.perf_counter()
            self.stats["calls"]["lock_release"].append((time.perf_counter() - released) * 1000)
            self.stats["locks"].append((arrived, acquired, time.monotonic(), self.exp_id))
        except Exception as exc:  # LockAcquisitionTimeout counts, others are reported
            self.stats["errors"].append(f"{type(exc).__name__}: {exc}")

    def _new_trial(self):
        from orion.core.worker.trial import Trial

        return Trial(
            experiment=self.exp_id,
            status="new",
            submit_time=datetime.datetime.utcnow(),
            exp_working_dir="sim-v1",
            params=[
                {"name": "/x", "type": "real", "value": self.rng.uniform(-5, 5)},
                {"name": "/y", "type": "real", "value": self.rng.uniform(-5, 5)},
            ],
        )

    def run(self, trials: int, go: threading.Event):
        go.wait()
        time.sleep(self.rng.uniform(0, self.p["start_spread_s"]))
        done = 0
        while done < trials:
            trial = None
            for name in PRE:
                trial = self.step(name)
            if trial is None:  # nothing pending: produce one (Oríon's order), then reserve
                for name in PRODUCE:
                    if name == "lock_enter":
                        self.hold(produce=True)
                    elif name not in ("register_trial", "lock_exit"):
                        trial = self.step(name)
            if trial is None:
                continue  # another worker took it: loop as Oríon does
            time.sleep(self.p["trial_s"] * self.rng.uniform(0.8, 1.2))
            self.step("push_trial_results", trial)
            self.hold(produce=False)
            self.stats["completed"].append(trial.id)
            done += 1


def _count_sent_commands():
    """A counter of the commands this process sends (every command, pipelined or not, goes
    through its connection's RESP packer): what the workers ask, without Lua's own calls
    that INFO commandstats mixes in."""
    import redis.connection as rc

    lock, counted = threading.Lock(), [0]

    def count():
        with lock:
            counted[0] += 1

    for name in ("PythonRespSerializer", "HiredisRespSerializer"):
        cls = getattr(rc, name, None)
        if cls is not None and not getattr(cls.pack, "_counted", False):

            def pack(self, *args, _orig=cls.pack):
                count()
                return _orig(self, *args)

            pack._counted = True
            cls.pack = pack
    return lambda: counted[0]


def _process_main(uri, prefix, exp_ids, count, trials, params, ready, go, out):
    """One generator process: ``count`` workers (threads), experiments assigned round robin."""
    sent = _count_sent_commands()
    stats = {"calls": defaultdict(list), "locks": [], "errors": [], "completed": []}
    workers = [
        SimWorker(uri, prefix, exp_ids[i % len(exp_ids)], params, stats) for i in range(count)
    ]
    for w in workers:
        w.storage.client.ping()  # open the pool's first connection now: counted while idle
    local_go = threading.Event()
    threads = [
        threading.Thread(target=w.run, args=(trials, local_go), daemon=True) for w in workers
    ]
    for t in threads:
        t.start()
    ready.set()
    go.wait()
    first = sent()
    local_go.set()
    for t in threads:
        t.join()
    out.put(
        {
            "sent": sent() - first,
            "calls": dict(stats["calls"]),
            "locks": stats["locks"],
            "errors": stats["errors"],
            "completed": stats["completed"],
        }
    )
