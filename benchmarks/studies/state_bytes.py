#!/usr/bin/env python
"""Bytes the algorithm state costs per lock hold and per trial: compressed vs uncompressed.

Oríon rewrites the whole algorithm state into the lock hash at every release of the algorithm
lock (one produce and one observe hold per trial), so the state's size is what the AOF and every
replica receive per trial, and it grows with the experiment (issue 12, part 3). Three sections,
measured side by side in one run (on a shared machine: compare ratios, not absolute times):

1. codecs: zlib levels 1/3/6, zstandard levels 1/3, lz4 (when installed) and the codec of
   ``statecodec`` itself (zstd 3, window sized to the state) on the data-only bodies of real
   random-search, TPE and ASHA states: ratio, compress and decompress time (best of 5).
2. state bytes per hold: what ``dump_state`` stores, unsigned and signed, uncompressed (version
   1, the bytes written before compression: ``COMPRESS_MIN`` disabled) and compressed.
3. AOF bytes per trial: a real redis-server with ``appendonly yes`` (AOF rewrites disabled so the
   file only grows). Per algorithm, size and codec an experiment is filled to the size in one
   lock hold (its trials registered as completed, like a hunt's), then ``--window`` hunt steps
   (``client.suggest`` + ``client.observe``: a produce and an observe hold each, plus the trial
   writes) are measured by the growth of ``aof_current_size``. Target: compressed <= 0.3x.

States are built by driving Oríon's algorithms through ``build_experiment`` (space x, y
uniform(-5, 5), like the demo hunt; ASHA adds a fidelity). TPE runs with ``n_initial_points``
above the size: in its model phase Oríon's TPE builds a scipy distribution per observed trial
(~0.4 s per suggestion at 500 trials, so O(n²) to fill), and its state has the same structure
in both phases (registries of trials, RNG state).

Usage: python benchmarks/studies/state_bytes.py [--sizes 500,2000] [--window 20]
Writes benchmarks/results/state_bytes.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import pickle
import platform
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import zstandard
from orion.client import build_experiment

from orion_track_redis import Redis, datapickle
from orion_track_redis.state import codec as statecodec
from orion_track_redis.testing import RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the package `benchmarks`
from benchmarks.sections.anatomy import (  # noqa: E402 - the main benchmark's trials
    _objective,
    register_completed,
)

SPACE = {"x": "uniform(-5, 5)", "y": "uniform(-5, 5)"}
FIDELITY_SPACE = {**SPACE, "f": "fidelity(1, 27, base=3)"}
SECRET = b"benchmark-secret"
TARGET = 0.3  # compressed AOF bytes per trial / uncompressed


def algorithms(size: int, window: int) -> dict:
    """name -> (algorithm configuration, space); TPE stays in its random phase (see above)."""
    return {
        "random": ({"random": {"seed": 1}}, SPACE),
        "tpe": ({"tpe": {"seed": 1, "n_initial_points": size + window + 10}}, SPACE),
        "asha": ({"asha": {"seed": 1}}, FIDELITY_SPACE),
    }


def fill(client, n: int) -> tuple[dict, int]:
    """Add up to ``n`` completed trials in ONE lock hold (one by one would cost O(n²) state
    copies); return the state that hold writes and the trials added (ASHA's brackets end)."""
    exp = client._experiment
    with exp.acquire_algorithm_lock() as algo:
        done = 0
        while done < n:
            trials = algo.suggest(min(n - done, 100))
            if not trials:
                break
            register_completed(exp, trials)
            algo.observe(trials)
            done += len(trials)
    return algo.state_dict, done


class uncompressed:
    """``with uncompressed():`` statecodec writes version 1, as the code before compression."""

    def __enter__(self):
        self._saved, statecodec.COMPRESS_MIN = statecodec.COMPRESS_MIN, sys.maxsize

    def __exit__(self, *exc):
        statecodec.COMPRESS_MIN = self._saved


def _best(fn, repeat: int = 5):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _codecs() -> dict:
    """name -> (compress, decompress) of bytes."""
    zstd_dec = zstandard.ZstdDecompressor()
    out = {
        f"zlib-{lvl}": (lambda b, lvl=lvl: zlib.compress(b, lvl), zlib.decompress)
        for lvl in (1, 3, 6)
    }
    for lvl in (1, 3):
        out[f"zstd-{lvl}"] = (zstandard.ZstdCompressor(level=lvl).compress, zstd_dec.decompress)
    header = statecodec.ZMAGIC + b"\x02"
    out["statecodec (zstd-3, window = state)"] = (
        lambda b: statecodec._compress(b)[1],
        lambda z: statecodec._inflate(header, z),
    )
    try:
        import lz4.frame
    except ImportError:
        print("(lz4 not installed: `pip install lz4` adds it to the codec table)")
    else:
        out["lz4"] = (lz4.frame.compress, lz4.frame.decompress)
    return out


def codec_rows(name: str, size: int, state: dict) -> list[dict]:
    body = datapickle.dumps(state)
    load_s, _ = _best(lambda: datapickle.loads(body))
    rows = []
    for codec, (compress, decompress) in _codecs().items():
        comp_s, frame = _best(functools.partial(compress, body))
        dec_s, back = _best(functools.partial(decompress, frame))
        assert back == body, codec
        rows.append(
            {
                "algorithm": name,
                "trials": size,
                "codec": codec,
                "body_bytes": len(body),
                "stored_bytes": len(frame),
                "ratio": len(body) / len(frame),
                "compress_ms": comp_s * 1e3,
                "decompress_ms": dec_s * 1e3,
                "unpickle_ms": load_s * 1e3,
            }
        )
    return rows


def hold_rows(name: str, size: int, state: dict) -> list[dict]:
    rows = []
    for secret in (None, SECRET):
        with uncompressed():
            before = statecodec.dump_state(state, secret)
        after = statecodec.dump_state(state, secret)
        assert before[:5] == statecodec.MAGIC and after[:5] == statecodec.ZMAGIC
        assert pickle.dumps(statecodec.load_state(after, secret), 5) == pickle.dumps(
            statecodec.load_state(before, secret), 5
        )
        dump_s, _ = _best(functools.partial(statecodec.dump_state, state, secret))
        load_s, _ = _best(functools.partial(statecodec.load_state, after, secret))
        with uncompressed():
            dump0_s, _ = _best(functools.partial(statecodec.dump_state, state, secret))
        load0_s, _ = _best(functools.partial(statecodec.load_state, before, secret))
        rows.append(
            {
                "algorithm": name,
                "trials": size,
                "form": "signed" if secret else "data-only",
                "uncompressed_bytes": len(before),
                "compressed_bytes": len(after),
                "ratio": len(after) / len(before),
                "dump_ms": [dump0_s * 1e3, dump_s * 1e3],
                "load_ms": [load0_s * 1e3, load_s * 1e3],
            }
        )
    return rows


def _aof_size(client) -> int:
    """AOF bytes written so far, once Redis has no AOF buffer pending (everysec may postpone)."""
    for _ in range(200):
        info = client.info("persistence")
        if info["aof_enabled"] and not info.get("aof_buffer_length", 0):
            return int(info["aof_current_size"])
        time.sleep(0.02)
    raise RuntimeError("the AOF buffer never drained")


def aof_row(server, name: str, size: int, window: int, compress: bool) -> dict:
    algorithm, space = algorithms(size, window)[name]
    tag = f"{name}-{size}-{'zstd' if compress else 'plain'}"
    storage = Redis(uri=server.url, prefix=f"bytes-{tag}")
    client = build_experiment(
        f"bytes-{tag}",
        space=space,
        algorithm=algorithm,
        max_trials=10 * (size + window),
        storage=storage,
    )
    with contextlib.nullcontext() if compress else uncompressed():
        if fill(client, size)[1] != size:
            raise RuntimeError(f"{name} stopped suggesting before {size} trials")
        redis_client = server.client()
        lock_key = storage.backend.experiment_keys(client._experiment.id).lock
        start = _aof_size(redis_client)
        for _ in range(window):
            trial = client.suggest()
            client.observe(trial, _objective(trial.params))
        grown = _aof_size(redis_client) - start
        state_bytes = redis_client.hstrlen(lock_key, "state")
    return {
        "algorithm": name,
        "trials": size,
        "compressed": compress,
        "window": window,
        "aof_bytes_per_trial": grown / window,
        "stored_state_bytes": state_bytes,
    }


def _print_codecs(rows):
    print("\n1. codecs on data-only state bodies (best of 5; ms)")
    print(
        f"{'algorithm':9} {'trials':>6} {'codec':36} {'body':>9} {'stored':>8} {'ratio':>6} "
        f"{'comp':>6} {'dec':>6} {'unpickle':>8}"
    )
    for r in rows:
        print(
            f"{r['algorithm']:9} {r['trials']:6d} {r['codec']:36} {r['body_bytes']:9d} "
            f"{r['stored_bytes']:8d} {r['ratio']:6.2f} {r['compress_ms']:6.2f} "
            f"{r['decompress_ms']:6.2f} {r['unpickle_ms']:8.2f}"
        )


def _print_holds(rows):
    print("\n2. state bytes per hold (what dump_state stores; dump/load ms uncompressed -> zstd)")
    print(
        f"{'algorithm':9} {'trials':>6} {'form':9} {'uncompressed':>12} {'zstd':>8} "
        f"{'x':>6} {'dump ms':>13} {'load ms':>13}"
    )
    for r in rows:
        print(
            f"{r['algorithm']:9} {r['trials']:6d} {r['form']:9} {r['uncompressed_bytes']:12d} "
            f"{r['compressed_bytes']:8d} {r['ratio']:6.3f} "
            f"{r['dump_ms'][0]:6.2f}>{r['dump_ms'][1]:6.2f} "
            f"{r['load_ms'][0]:6.2f}>{r['load_ms'][1]:6.2f}"
        )


def _print_aof(rows):
    print(f"\n3. AOF bytes per trial (redis-server, appendonly yes; target zstd <= {TARGET}x)")
    print(
        f"{'algorithm':9} {'trials':>6} {'uncompressed':>12} {'zstd':>9} {'x':>6} "
        f"{'stored state':>17} {'':4}"
    )
    pairs = {}
    for r in rows:
        pairs.setdefault((r["algorithm"], r["trials"]), {})[r["compressed"]] = r
    verdicts = []
    for (name, size), pair in pairs.items():
        plain, zstd = pair[False], pair[True]
        ratio = zstd["aof_bytes_per_trial"] / plain["aof_bytes_per_trial"]
        ok = ratio <= TARGET
        verdicts.append({"algorithm": name, "trials": size, "ratio": ratio, "pass": ok})
        print(
            f"{name:9} {size:6d} {plain['aof_bytes_per_trial']:12.0f} "
            f"{zstd['aof_bytes_per_trial']:9.0f} {ratio:6.3f} "
            f"{plain['stored_state_bytes']:8d}>{zstd['stored_state_bytes']:8d} "
            f"{'PASS' if ok else 'FAIL'}"
        )
    return verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="500,2000", help="trials per experiment (comma list)")
    parser.add_argument("--window", type=int, default=20, help="hunt steps measured per size")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    logging.disable(logging.WARNING)  # Oríon warns about fidelity and duplicates
    warnings.simplefilter("ignore")

    codecs, holds, aof = [], [], []
    with (
        tempfile.TemporaryDirectory(prefix="state-bytes-") as tmp,
        RedisServer(
            Path(tmp) / "redis", appendonly=True, extra_args=["--auto-aof-rewrite-percentage", "0"]
        ) as server,
    ):
        for size in sizes:
            for name, (algorithm, space) in algorithms(size, args.window).items():
                storage = Redis(uri=server.url, prefix=f"states-{name}-{size}")
                client = build_experiment(
                    f"states-{name}-{size}",
                    space=space,
                    algorithm=algorithm,
                    max_trials=10 * size,
                    storage=storage,
                )
                state, done = fill(client, size)
                if any(r["algorithm"] == name and r["trials"] == done for r in holds):
                    continue  # ASHA's brackets ended at the same size again
                codecs += codec_rows(name, done, state)
                holds += hold_rows(name, done, state)
                print(f"  built {name}: {done} trials", flush=True)
            for name in ("random", "tpe"):
                for compress in (False, True):
                    aof.append(aof_row(server, name, size, args.window, compress))
        version = server.client().info("server")["redis_version"]
    _print_codecs(codecs)
    _print_holds(holds)
    verdicts = _print_aof(aof)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "redis_server": version,
        "zstandard": zstandard.__version__,
        "window": args.window,
        "sizes": sizes,
        "note": "shared machine: compare ratios within this run",
    }
    (args.out / "state_bytes.json").write_text(
        json.dumps(
            {"meta": meta, "codecs": codecs, "holds": holds, "aof": aof, "targets": verdicts},
            indent=2,
        )
    )
    print(f"\nwrote {args.out / 'state_bytes.json'}")
    return 0 if all(v["pass"] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
