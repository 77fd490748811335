#!/usr/bin/env python
"""Per-call latency of the hot path vs a bare EVALSHA of a script of the same shape.

Starts its own redis-server on a free loopback port, measures side by side in one run, prints
a table and writes benchmarks/results/reserve_latency.json.
Usage: python benchmarks/studies/reserve_latency.py [N_TRIALS]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from orion.core.worker.trial import Trial

from orion_track_redis import Redis
from orion_track_redis.testing import RedisServer

# Same shape as reserve_trial.lua: read 3 zset heads, move one member, write 3 hash fields.
BARE = """
local best = nil
for i = 1, 3 do
  local head = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if head[1] then best = head[1] end
end
if best == nil then return {} end
redis.call('ZREM', KEYS[1], best)
redis.call('ZADD', KEYS[4], 1, best)
redis.call('HSET', ARGV[1] .. best, 'status', ARGV[2], 'start_time', ARGV[3], 'heartbeat', ARGV[3])
local doc = redis.call('HGETALL', ARGV[1] .. best)
table.insert(doc, 1, best)
return doc
"""


class _Exp:
    def __init__(self, exp_id):
        self.id = self._id = exp_id


def _timed(fn, n):
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _row(name, samples):
    return {
        "call": name,
        "n": len(samples),
        "median_us": statistics.median(samples) * 1e6,
        "p99_us": sorted(samples)[int(len(samples) * 0.99) - 1] * 1e6,
    }


def main(n=2000):
    with tempfile.TemporaryDirectory() as tmp, RedisServer(tmp) as server:
        server.start()
        storage = Redis(uri=server.url, prefix="bench")
        config = {"name": "bench", "version": 1, "algorithm": {"random": {}}}
        storage.create_experiment(config)
        exp_id = config["_id"]
        for i in range(n):
            storage.register_trial(
                Trial(
                    experiment=exp_id,
                    status="new",
                    params=[
                        {"name": "/x", "type": "real", "value": float(i)},
                        {"name": "/y", "type": "integer", "value": i},
                    ],
                )
            )
        client = storage.client
        for i in range(n):  # a copy of the trials for the bare script to move around
            client.zadd("bare:new", {f"t{i}": i})
            client.hset(f"bare:t{i}", mapping={"status": '"new"', "x": "1.0"})
        bare = client.register_script(BARE)
        args = ["bare:", '"reserved"', '"2024-01-01T00:00:00"']
        bare_keys = ["bare:new", "bare:s", "bare:i", "bare:r"]
        rows = [
            _row("bare EVALSHA (same shape)", _timed(lambda: bare(keys=bare_keys, args=args), n)),
            _row("reserve_trial", _timed(lambda: storage.reserve_trial(_Exp(exp_id)), n)),
        ]
        trials = storage.fetch_trials_by_status(_Exp(exp_id), "reserved")[: n // 2]
        it = iter(trials)
        rows.append(
            _row(
                "update_heartbeat", _timed(lambda: storage.update_heartbeat(next(it)), len(trials))
            )
        )
        it = iter(trials)
        rows.append(
            _row(
                "set_trial_status",
                _timed(
                    lambda: storage.set_trial_status(next(it), "completed", was="reserved"),
                    len(trials),
                ),
            )
        )
        base = rows[0]["median_us"]
        print(f"{'call':28} {'n':>6} {'median µs':>10} {'p99 µs':>9} {'× bare':>7}")
        for row in rows:
            row["ratio_vs_bare"] = row["median_us"] / base
            print(
                f"{row['call']:28} {row['n']:6d} {row['median_us']:10.1f} {row['p99_us']:9.1f} "
                f"{row['ratio_vs_bare']:7.2f}"
            )
        out = Path(__file__).resolve().parents[1] / "results"
        out.mkdir(exist_ok=True)
        (out / "reserve_latency.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
