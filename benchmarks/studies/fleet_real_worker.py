"""The ``worker`` mode of fleet_real.py: `orion hunt` with two timers added (benchmark only),
every algorithm-lock acquisition through the storage (request -> acquired -> released, tagged
produce/observe) and every non-empty ``Experiment.fetch_lost_trials``, one JSON line each."""

from __future__ import annotations

import json
import sys
import threading
import time


# ------------------------------------------------------------------------------------------------
# worker mode: `orion hunt` with timers (benchmark only)
class _TimedLock:
    """Wraps the storage's lock context manager: request -> acquired -> released."""

    def __init__(self, cm, emit, op):
        self.cm, self.emit, self.rec = cm, emit, {"kind": "lock", "op": op}

    def __enter__(self):
        self.rec["request"] = time.time()
        try:
            value = self.cm.__enter__()
        except BaseException as exc:
            self.rec.update(error=type(exc).__name__, failed=time.time())
            self.emit(self.rec)
            raise
        self.rec["acquired"], self.rec["cpu_acquired"] = time.time(), time.process_time()
        return value

    def __exit__(self, *exc):
        try:
            return self.cm.__exit__(*exc)
        finally:
            self.rec["released"], self.rec["cpu_released"] = time.time(), time.process_time()
            self.emit(self.rec)


def _instrument(out_path: str) -> None:
    from orion.core.worker import experiment as experiment_mod
    from orion.core.worker import producer
    from orion.storage.legacy import Legacy

    from orion_track_redis.storage import Redis

    out = open(out_path, "a", buffering=1)
    write_lock = threading.Lock()
    current = threading.local()

    def emit(rec):
        with write_lock:
            out.write(json.dumps(rec) + "\n")

    for name in ("produce", "observe"):  # the two callers of the lock
        original = getattr(producer.Producer, name)

        def tagged(self, *args, _original=original, _name=name, **kw):
            current.op = _name
            try:
                return _original(self, *args, **kw)
            finally:
                current.op = None

        setattr(producer.Producer, name, tagged)

    for cls in (Redis, Legacy):

        def acquire(self, *args, _original=cls.acquire_algorithm_lock, **kw):
            return _TimedLock(_original(self, *args, **kw), emit, getattr(current, "op", None))

        cls.acquire_algorithm_lock = acquire

    original_lost = experiment_mod.Experiment.fetch_lost_trials

    def fetch_lost_trials(self, *args, **kw):
        trials = original_lost(self, *args, **kw)
        if trials:
            emit({"kind": "lost", "t": time.time(), "ids": [t.id for t in trials]})
        return trials

    experiment_mod.Experiment.fetch_lost_trials = fetch_lost_trials


def worker_main(out_path: str, argv: list[str]) -> int:
    _instrument(out_path)
    from orion.core.cli import main as orion_main

    sys.argv = ["orion", *argv]
    try:
        return orion_main(argv) or 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
