"""The processes of one fleet_real.py fleet, seen from /proc and from their files: the fleet's
memory and CPU (``memory_sample``, the sampler's reading), a process's CPU, a worker's log, and
the JSON lines the objective and the timers write."""

from __future__ import annotations

import collections
import json
import os
import resource
import time
from pathlib import Path


# ------------------------------------------------------------------------------------------------
# memory of the fleet, from /proc
def _children_map() -> dict[int, list[int]]:
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children[ppid].append(int(entry))
    return children


def _kib(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_sample(roots: list[int]) -> dict:
    """RSS and PSS (KiB) summed over the process trees of ``roots``; CPU seconds per tree."""
    children = _children_map()
    trees = {}
    for root in roots:
        seen, stack = set(), [root]
        while stack:
            pid = stack.pop()
            if pid not in seen:
                seen.add(pid)
                stack.extend(children.get(pid, ()))
        trees[root] = seen
    every = set().union(*trees.values()) if trees else set()
    return {
        "t": time.time(),
        "processes": len(every),
        "rss_kib": sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in every),
        "pss_kib": sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in every),
        "mem_available_kib": _kib("/proc/meminfo", "MemAvailable:"),
        "tree_cpu_s": {
            str(root): sum(_process_cpu(p, children=True) for p in tree)
            for root, tree in trees.items()
        },
        "machine_busy_s": _machine_busy(),
    }


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores, every process), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------
# one fleet's processes and files
def _log_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]


def _worker_record(index, code, end, log_path) -> dict:
    lines = _log_lines(log_path)
    record = {
        "index": index,
        "exit": code,
        "end": end,
        "last_line": lines[-1][-300:] if lines else "",
    }
    if code != 0 or any("Traceback" in line for line in lines):  # keep the story
        record["log_tail"] = [line[-300:] for line in lines[-25:]]
    return record


def _read_jsonl(paths) -> list[dict]:
    out = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def _children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int, children: bool = False) -> float:
    """utime + stime (+ the waited-for children's with ``children``) of a process, 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(v) for v in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")
