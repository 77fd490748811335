"""The restart workload of benchmarks/peers.py: a fleet on redis-server (this backend, Optuna's
``JournalRedisBackend``) whose server is SIGKILLed mid-run, then started again on the same port
and directory, where it reloads its AOF (``appendonly yes``, ``appendfsync everysec``: the
``RedisServer`` defaults, the same for both peers)."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.peers_fleet import read_records


class Restarter:
    """Once every worker has started a trial and ``after_s`` more have passed: SIGKILL the
    redis-server (a crash: only what it already wrote to its AOF survives), wait ``down_s``
    (a supervisor's restart delay), start it again on the same port and dir, and note when it
    answers PING again (its AOF loaded)."""

    def __init__(self, redis_server, after_s: float, down_s: float):
        self.redis, self.after_s, self.down_s = redis_server, after_s, down_s
        self.steady_at = None
        self.restarted = False
        self.events: dict = {}

    def __call__(self, now, procs, runs: Path) -> None:
        if self.restarted:
            return
        if self.steady_at is None:
            started = {r["w"] for r in read_records(runs) if r["ev"] == "start"}
            if len(started) == len(procs):
                self.steady_at = now
            return
        if now - self.steady_at < self.after_s:
            return
        client = self.redis.client()
        info = client.info("persistence")
        client.close()
        self.events.update(
            aof_enabled=info.get("aof_enabled"),
            aof_bytes_before=info.get("aof_current_size") or info.get("aof_base_size"),
            how="SIGKILL",
            old_pid=self.redis.pid,
        )
        ended_before = sum(1 for r in read_records(runs) if r["ev"] == "end")
        self.events["kill_t"] = time.time()
        self.redis.kill()  # SIGKILL, then reaps it
        time.sleep(self.down_s)
        self.events["start_t"] = time.time()
        self.redis.start(timeout=120)
        self.events["up_t"] = time.time()
        self.restarted = True
        self.events.update(
            new_pid=self.redis.pid,
            port=self.redis.port,
            down_s=self.events["up_t"] - self.events["kill_t"],
            load_s=self.events["up_t"] - self.events["start_t"],
            trials_ended_before_kill=ended_before,
        )
