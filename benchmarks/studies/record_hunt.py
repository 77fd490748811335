#!/usr/bin/env python
"""Record what one real `orion hunt` worker asks of the storage per trial (input of fleet_sim.py).

Runs a real `orion hunt` (random search, 2 parameters, an objective that sleeps 2.5 s, Oríon's
heartbeat set to 1 s so the pacemaker's calls show) on this backend against a redis-server it
starts, and records two things at once:
- the storage methods the worker calls, in order (a ``sitecustomize`` put on the hunt's
  PYTHONPATH wraps the methods of ``orion_track_redis.Redis``: each call is bracketed by an
  ``ECHO mark:<call>:start|end`` on a side connection), and
- every command Redis receives (``MONITOR``), with its size in RESP bytes.
Each command is attributed to the storage call whose markers bracket it in MONITOR's order.
A trial cycle ends with the algorithm-lock hold that observes its result; one cycle in
the middle of the hunt is the steady-state template fleet_sim.py replays.

Writes benchmarks/data/hunt_sequence.json. Usage: python benchmarks/studies/record_hunt.py [TRIALS]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import orion

from orion_track_redis.store import scripts
from orion_track_redis.testing import RedisServer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "data" / "hunt_sequence.json"
HEARTBEAT = 1
OBJECTIVE_SLEEP = 2.5

# Wraps the storage methods in the hunt process; one JSON line per call (start, end, name).
SITECUSTOMIZE = r"""
import contextlib, functools, os
import redis
_SIDE = redis.Redis.from_url(os.environ["FLEET_RECORD_URL"])  # markers, in MONITOR's order
def _mark(name, edge):
    _SIDE.echo(f"mark:{name}:{edge}")
def _wrap(cls, name):
    method = getattr(cls, name)
    if name == "acquire_algorithm_lock":  # two steps: the acquisition, the release
        @contextlib.contextmanager
        def wrapper(self, *a, **k):
            _mark("lock_enter", "start")
            with method(self, *a, **k) as locked:
                _mark("lock_enter", "end")
                yield locked
                _mark("lock_exit", "start")
            _mark("lock_exit", "end")
    else:
        @functools.wraps(method)
        def wrapper(self, *a, **k):
            _mark(name, "start")
            try:
                return method(self, *a, **k)
            finally:
                _mark(name, "end")
    setattr(cls, name, wrapper)
from orion_track_redis.storage import Redis
for _name in [n for n in vars(Redis) if not n.startswith("_")
              and callable(getattr(Redis, n)) and n not in ("client", "scripts", "lock")]:
    _wrap(Redis, _name)
"""

OBJECTIVE = f"""
import argparse, time
from orion.client import report_objective
p = argparse.ArgumentParser(); p.add_argument("-x", type=float); p.add_argument("-y", type=float)
a = p.parse_args()
time.sleep({OBJECTIVE_SLEEP})
report_objective((a.x - 2) ** 2 + (a.y + 1) ** 2)
"""


def _resp_size(args: list[bytes]) -> int:
    """Bytes of a command in RESP (what the client sent)."""
    size = len(f"*{len(args)}\r\n")
    for arg in args:
        size += len(f"${len(arg)}\r\n") + len(arg) + 2
    return size


_MONITOR_LINE = re.compile(rb"^\+(\d+\.\d+) \[\d+ ([^\]]+)\] (.*)$")
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def _unescape(text: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(text):
        c = text[i]
        if c == 0x5C:  # backslash
            n = text[i + 1]
            if n == ord("x"):
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            out += {
                ord("n"): b"\n",
                ord("r"): b"\r",
                ord("t"): b"\t",
                ord("a"): b"\a",
                ord("b"): b"\b",
            }.get(n, bytes([n]))
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


def _monitor(port: int, sink: list, stop: threading.Event):
    """Raw MONITOR: redis-py's parser drops the argument boundaries we need for sizes."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"MONITOR\r\n")
    sock.settimeout(0.2)
    buf = b""
    while not stop.is_set():
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\r\n")
        for line in lines:
            match = _MONITOR_LINE.match(line)
            if match:
                args = [_unescape(a) for a in _ARG.findall(match[3])]
                sink.append((float(match[1]), match[2].decode(), args))
    sock.close()


def _script_names() -> dict:
    import hashlib

    return {hashlib.sha1(scripts.source(n).encode()).hexdigest(): n for n in scripts.NAMES}


def _command_name(args: list[bytes], shas: dict) -> str:
    name = args[0].decode().upper()
    if name == "EVALSHA":
        return f"EVALSHA {shas.get(args[1].decode(), '?')}"
    if name == "SCRIPT":
        return f"SCRIPT {args[1].decode().upper()}"
    return name


def record(trials: int = 8) -> dict:
    shas = _script_names()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "site").mkdir()
        (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        (tmp / "objective.py").write_text(OBJECTIVE)
        server = RedisServer(tmp / "redis", appendonly=False).start()
        try:
            uri = f"{server.url}/0?prefix=rec"
            (tmp / "config.yaml").write_text(
                f'storage:\n  type: redis\n  database:\n    host: "{uri}"\n'
                "experiment:\n  algorithms:\n    random:\n      seed: 1\n"
                f"worker:\n  heartbeat: {HEARTBEAT}\n"
            )
            commands, stop = [], threading.Event()
            monitor = threading.Thread(target=_monitor, args=(server.port, commands, stop))
            monitor.start()
            time.sleep(0.3)
            env = dict(
                os.environ,
                ORION_REDIS_URI="",
                ORION_HEARTBEAT=str(HEARTBEAT),
                FLEET_RECORD_URL=server.url,
                PYTHONPATH=os.pathsep.join([str(tmp / "site"), str(ROOT)]),
            )
            cmd = [
                str(Path(sys.executable).with_name("orion")),
                "hunt",
                "--config",
                str(tmp / "config.yaml"),
                "-n",
                "rec",
                "--max-trials",
                str(trials),
                sys.executable,
                str(tmp / "objective.py"),
                "-x~uniform(-5, 5)",
                "-y~uniform(-5, 5)",
            ]
            proc = subprocess.run(
                cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=600
            )
            time.sleep(0.3)
            stop.set()
            monitor.join()
            if proc.returncode != 0:
                raise SystemExit(f"orion hunt failed:\n{proc.stdout}\n{proc.stderr}")
        finally:
            server.stop()
    return summarize(commands, shas, trials)


def _attribute(commands: list, shas: dict) -> list:
    """Storage calls in order, each with the commands Redis received between its start and end
    markers (ECHO "mark:<call>:start|end" sent on a side connection before and after each
    call, so MONITOR's own order delimits them: no clock is involved)."""
    out, current = [], None
    for t, addr, args in commands:
        if addr == "lua":  # commands run inside a script: not sent by the client
            continue
        if args[0].upper() == b"ECHO" and args[1].startswith(b"mark:"):
            _, name, edge = args[1].decode().split(":")
            if edge == "start":
                current = {"call": name, "t0": t, "commands": []}
            elif current is not None:
                current["t1"] = t
                out.append(current)
                current = None
        elif current is not None:
            current["commands"].append(
                {"cmd": _command_name(args, shas), "bytes": _resp_size(args)}
            )
    return out


def _cycles(calls: list) -> list[list]:
    """Split at every observe hold (a lock hold with no register_trial inside)."""
    cycles, current, in_lock, produced = [], [], False, False
    for call in calls:
        current.append(call)
        if call["call"] == "lock_enter":
            in_lock, produced = True, False
        elif call["call"] == "register_trial" and in_lock:
            produced = True
        elif call["call"] == "lock_exit":
            in_lock = False
            if not produced:
                cycles.append(current)
                current = []
    return cycles


def summarize(commands, shas, trials) -> dict:
    attributed = _attribute(commands, shas)
    cycles = _cycles(attributed)
    # the state written at each release grows with the trials it knows (random search keeps
    # every trial in its registry): fit bytes = base + slope * release index
    releases = [
        c["bytes"]
        for call in attributed
        if call["call"] == "lock_exit"
        for c in call["commands"]
        if c["cmd"] == "EVALSHA lock_release"
    ]
    n = len(releases)
    mean_x, mean_y = (n - 1) / 2, sum(releases) / n
    slope = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(releases)) / sum(
        (i - mean_x) ** 2 for i in range(n)
    )
    template = cycles[len(cycles) // 2]
    steps = []
    for call in template:
        steps.append(
            {
                "call": call["call"],
                "ms": round((call["t1"] - call["t0"]) * 1000, 2),
                "commands": [c["cmd"] for c in call["commands"]],
                "request_bytes": sum(c["bytes"] for c in call["commands"]),
            }
        )
    per_trial = Counter(c for s in steps for c in s["commands"])
    return {
        "how": (
            "benchmarks/studies/record_hunt.py: a real `orion hunt` (1 worker, random search, "
            f"2 uniform params, objective sleeping {OBJECTIVE_SLEEP} s, Oríon heartbeat "
            f"{HEARTBEAT} s, {trials} trials) against a redis-server it starts; storage "
            "calls logged by a sitecustomize wrapping orion_track_redis.Redis, Redis "
            "commands by MONITOR, each command attributed to the call running when "
            "Redis received it"
        ),
        "orion_version": orion.core.__version__,
        "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cycles_recorded": len(cycles),
        "template_cycle": len(cycles) // 2,
        "trial_steps": steps,
        "commands_per_trial": dict(sorted(per_trial.items())),
        "request_bytes_per_trial": sum(s["request_bytes"] for s in steps),
        "state_release_bytes": {
            "first": releases[0],
            "per_release": round(slope, 1),
            "releases": releases,
        },
        "all_cycles": [[c["call"] for c in cycle] for cycle in cycles],
    }


def main(argv=None):
    trials = int((argv or sys.argv[1:] or [8])[0])
    result = record(trials)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{len(result['trial_steps'])} storage calls, "
        f"{sum(result['commands_per_trial'].values())} commands, "
        f"{result['request_bytes_per_trial']} request bytes per trial -> {OUT}"
    )
    for step in result["trial_steps"]:
        print(f"  {step['call']:<24} {step['ms']:>8.2f} ms  {' '.join(step['commands'])}")


if __name__ == "__main__":
    main()
