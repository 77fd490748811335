"""The report of benchmarks/peers.py: one table per workload (ratios vs orion-redis in the same
run), the issue's goals, the settings of each peer, and the generated block of docs/benchmarks.md
section "Peers"."""

from __future__ import annotations

from benchmarks.common import _fmt
from benchmarks.peers_common import API, BEGIN, DOCS_FILE, END, OURS, SECTION


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fleet_table(rows: list[dict]) -> list[str]:
    mine = {(r["workers"], r.get("sleep_s", 0.0)): r for r in rows if r["peer"] == OURS}
    out = [
        "| peer | workers | objective s | completed | wall s | trials/s | steady trials/s | "
        "steady ÷ orion-redis | utilisation | died | run twice | server CPU ms/trial | "
        "÷ orion-redis | worker CPU ms/trial |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        died, ours = len(r["died"]), mine.get((r["workers"], r.get("sleep_s", 0.0)))
        util = r.get("utilisation")
        out.append(
            f"| {r['peer']}{' (in-process, not `orion hunt`)' if r['peer'] == API else ''} | "
            f"{r['workers']} | {_fmt(r.get('sleep_s', 0.0), 1)} | {r['completed']}"
            f"{' (capped)' if r['capped'] else ''} | {_fmt(r['wall_s'], 1)} | "
            f"{_fmt(r['trials_per_s'])} | {_fmt(r['steady_trials_per_s'])} | "
            f"{_x(_ratio(r['steady_trials_per_s'], ours and ours['steady_trials_per_s']))} | "
            f"{'-' if util is None else f'{util:.0%}'} | {died} | {r['run_twice']} | "
            f"{_fmt(r['server_cpu_ms_per_trial'])} | "
            f"{_x(_ratio(r['server_cpu_ms_per_trial'], ours and ours['server_cpu_ms_per_trial']))}"
            f" | {_fmt(r.get('client_cpu_ms_per_trial'), 1)} |"
        )
    return out


def _growth_table(rows: list[dict]) -> list[str]:
    sizes = sorted({r["trials"] for r in rows})
    peers = list(dict.fromkeys(r["peer"] for r in rows))
    head = (
        "| peer | "
        + " | ".join(f"open + read {n:,} s | ÷ orion-redis" for n in sizes)
        + " | bytes/trial (largest) | ÷ orion-redis | what |"
    )
    out = [head, "|---|" + "---:|---:|" * len(sizes) + "---:|---:|---|"]
    by = {(r["peer"], r["trials"]): r for r in rows}
    for p in peers:
        cells = []
        for n in sizes:
            r, o = by.get((p, n)), by.get((OURS, n))
            cells += [_fmt(r and r["open_s"], 3), _x(_ratio(r and r["open_s"], o and o["open_s"]))]
        r, o = by.get((p, sizes[-1])), by.get((OURS, sizes[-1]))
        bpt = r and r["bytes_per_trial"]
        out.append(
            f"| {p} | " + " | ".join(cells) + f" | {_fmt(bpt, 0)} | "
            f"{_x(_ratio(bpt, o and o['bytes_per_trial']))} | "
            f"{(r and r['bytes_what']) or 'read through the proxy (no store of its own)'}"
            " |"
        )
    return out


def _faults_table(rows: list[dict]) -> list[str]:
    out = [
        "| peer | settings | killed | recovered (completed again) | run again after s | "
        "completed again after s | killed trials' final state | completed | run twice | "
        "died (not killed) |",
        "|---|---|---:|---:|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        ks = r["kills"]
        states = ", ".join(
            f"{k['trial']}: {k['state']}"
            + (f" (retried as {', '.join(k['retries'])})" if k["retries"] else "")
            for k in ks
        )
        out.append(
            f"| {r['peer']} | {r['settings']} | {len(ks)} | {r['recovered']} of {len(ks)} | "
            f"{' / '.join(_fmt(k['rerun_after_s'], 1) for k in ks) or '-'} | "
            f"{' / '.join(_fmt(k['completed_after_s'], 1) for k in ks) or '-'} | {states or '-'} | "
            f"{r['completed']} | {r['run_twice']} | {len(r['died'])} |"
        )
    return out


def _restart_table(rows: list[dict]) -> list[str]:
    out = [
        "| peer | went on | workers died | completed | lost (ended, not stored) | run twice | "
        "stuck reserved/RUNNING | exactly once | AOF bytes | down s (kill → PING) | "
        "first trial end after PING s | trials after restart |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ev = r["restart"] or {}
        out.append(
            f"| {r['peer']} | {'yes' if r['continued'] and not r['died'] else 'no'} | "
            f"{len(r['died'])} of {r['workers']} | {r['completed']} | {r['lost']} | "
            f"{r['ran_twice']} | {r['stuck']} | {'yes' if r['exactly_once'] else 'no'} | "
            f"{_fmt(ev.get('aof_bytes_before'), 0)} | {_fmt(ev.get('down_s'), 2)} | "
            f"{_fmt(r['first_end_after_up_s'], 2)} | {r['trials_after_restart']} |"
        )
    return out


def _memory_table(rows: list[dict]) -> list[str]:
    out = [
        "| peer | process sampled | trials | trials/s | RSS at trial 1 MB | RSS at 10 % MB | "
        "RSS at the end MB | growth MB per 1k trials | server bytes/trial | what |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['peer']} | {r['what']} | {r['completed']}{' (capped)' if r['capped'] else ''}"
            f" | {_fmt(r['trials_per_s'], 1)} | {_fmt(r.get('rss_first_mb'), 0)} | "
            f"{_fmt(r.get('rss_tenth_mb'), 0)} | {_fmt(r.get('rss_end_mb'), 0)} | "
            f"{_fmt(r.get('growth_mb_per_1k'), 2)} | {_fmt(r['server_bytes_per_trial'], 0)} | "
            f"{r['server_what'] or '-'} |"
        )
    return out


def settings(peer: str, m: dict, kind: str) -> str:
    if peer == API:
        return "Oríon Python API, suggest/observe loop, objective in-process"
    if peer == OURS:
        return f"`lease={m['lease_s']}` in the URI" if kind == "faults" else "defaults"
    if peer == "optuna-rdb-pg" and kind == "faults":
        return (
            f"heartbeat_interval={m['heartbeat_s']}, grace_period={m['grace_s']}, "
            "RetryHeartbeatStaleTrialCallback(max_retry=3)"
        )
    if peer == "optuna-grpc-pg" and kind == "faults":
        return "no heartbeat (the proxy has none)"
    if peer == "optuna-journal-redis" and kind == "faults":
        return "no heartbeat (RDB-only)"
    return "defaults"


def goals(results: dict) -> list[dict]:
    out = []
    fleets = results.get("fleet", [])
    for w in sorted({r["workers"] for r in fleets}):
        fleet = {r["peer"]: r for r in fleets if r["workers"] == w}
        ours, journal = fleet.get(OURS), fleet.get("optuna-journal-redis")
        if not (ours and journal):
            continue
        a, b = ours["steady_trials_per_s"], journal["steady_trials_per_s"]
        out.append(
            {
                "goal": f"fleet ({w} workers, random search): orion-redis "
                "steady trials/s ≥ optuna-journal-redis",
                "value": f"{_fmt(a)} vs {_fmt(b)} trials/s ({_x(_ratio(a, b))})",
                "pass": a is not None and b is not None and a >= b,
            }
        )
    growth = results.get("growth", [])
    if growth:
        sizes = {r["trials"] for r in growth}
        n = 10000 if 10000 in sizes else max(sizes)  # the goal is at 10k trials
        g = {r["peer"]: r for r in growth if r["trials"] == n}
        if OURS in g and "optuna-journal-redis" in g:
            q = _ratio(g[OURS]["open_s"], g["optuna-journal-redis"]["open_s"])
            out.append(
                {
                    "goal": f"open + read {n:,} trials: orion-redis ≤ 0.1x optuna-journal-redis",
                    "value": f"{_fmt(g[OURS]['open_s'], 3)} s vs "
                    f"{_fmt(g['optuna-journal-redis']['open_s'], 3)} s ({_x(q)})",
                    "pass": q is not None and q <= 0.1,
                }
            )
    faults = {r["peer"]: r for r in results.get("faults", [])}
    if OURS in faults:
        mine = faults[OURS]
        losers = [p for p, r in faults.items() if p != OURS and r["recovered"] < len(r["kills"])]
        out.append(
            {
                "goal": "every killed trial recovered on orion-redis where a peer loses it",
                "value": f"orion-redis {mine['recovered']} of {len(mine['kills'])}; "
                f"peers losing trials: {', '.join(losers) or 'none'}",
                "pass": bool(mine["kills"]) and mine["recovered"] == len(mine["kills"]),
            }
        )
    for r in [r for r in results.get("restart", []) if r["peer"] == OURS]:
        out.append(
            {
                "goal": f"Redis restarted from its AOF mid-run: {r['peer']} fleet goes on, every "
                "trial completed exactly once",
                "value": f"went on: {'yes' if r['continued'] and not r['died'] else 'no'}; "
                f"lost {r['lost']}, run twice {r['ran_twice']}, workers died {len(r['died'])}",
                "pass": r["continued"] and not r["died"] and r["exactly_once"] and r["finished"],
            }
        )
    return out


def render(results: dict, meta: dict) -> str:
    lines = [
        f"Run {meta['started_utc']} UTC, `{meta['command']}`: {meta['machine']}, "
        f"load average {meta['loadavg_start']} at the start, {meta.get('loadavg_end')} at "
        f"the end; {meta['seconds']:.0f} s. Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + "."
    ]
    if meta["skipped"]:
        lines += [
            "",
            "Skipped: " + "; ".join(f"{k} ({v})" for k, v in meta["skipped"].items()) + ".",
        ]
    m = meta["mode"]
    if results.get("fleet"):
        lines += [
            "",
            f"**Fleet** ({' and '.join(map(str, m['fleet_workers']))} workers, random "
            f"search, an objective of {' and '.join(f'{x:g}' for x in m.get('fleet_sleeps', (0,)))}"
            f" s (0: trivial), {m['fleet_trials']:,} trials; "
            f"cap {m['fleet_cap_s']:.0f} s, "
            f"PickledDB {m['pickled_cap_s']:.0f} s):",
            "",
        ]
        lines += _fleet_table(results["fleet"])
    if results.get("tpe"):
        lines += [
            "",
            f"**TPE fleet** ({m['tpe_workers']} workers, TPE, trivial objective, "
            f"{m['tpe_trials']} trials, cap {m['tpe_cap_s']:.0f} s):",
            "",
        ]
        lines += _fleet_table(results["tpe"])
    if results.get("growth"):
        lines += [
            "",
            "**Growth**: open an existing experiment/study and read all its trials, "
            f"in a fresh process (imports not timed; median of {m['growth_repeats']}); "
            "bytes per trial on the server:",
            "",
        ]
        lines += _growth_table(results["growth"])
    if results.get("faults"):
        lines += [
            "",
            f"**Faults** ({m['fault_workers']} workers, {m['fault_sleep_s']} s "
            f"objective, {m['fault_trials']} trials; SIGKILL of {m['fault_kills']} "
            "workers' process groups mid-trial):",
            "",
        ]
        lines += _faults_table(results["faults"])
    if results.get("restart"):
        lines += [
            "",
            f"**Redis restart** ({m['restart_workers']} workers, {m['restart_sleep_s']} s "
            f"objective, {m['restart_trials']} trials; redis-server SIGKILLed "
            f"{m['restart_after_s']:.0f} s into the steady state, started again "
            f"{m['restart_down_s']} s later on the same port and dir, from its AOF: "
            "`appendonly yes`, `appendfsync everysec`):",
            "",
        ]
        lines += _restart_table(results["restart"])
    if results.get("memory"):
        lines += [
            "",
            "**Memory** (one worker process alone, trivial objective, random search; RSS "
            f"sampled every {m['memory_every_s']} s; growth from 10 % of the trials to the end):",
            "",
        ]
        lines += _memory_table(results["memory"])
    notes = []
    for kind in ("fleet", "tpe", "faults", "restart"):
        for r in results.get(kind, []):
            for d in r["died"][:3]:
                notes.append(
                    f"- {kind} {r['peer']} worker {d['worker']} exited {d['exit']}: "
                    f"`{d['last_line'][:200]}`"
                    + (
                        f", first error: `{d['first_error'][:200]}`"
                        if d.get("first_error") and d["first_error"] != d["last_line"]
                        else ""
                    )
                )
    for kind, msg in meta.get("errors", {}).items():
        notes.append(f"- {kind}: {msg}")
    if notes:
        lines += ["", *notes]
    gl = goals(results)
    if gl:
        lines += ["", "| goal | measured | |", "|---|---|---|"]
        lines += [f"| {g['goal']} | {g['value']} | {'PASS' if g['pass'] else 'FAIL'} |" for g in gl]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = DOCS_FILE.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + block + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    DOCS_FILE.write_text(doc)
