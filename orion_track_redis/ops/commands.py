"""What each ``orion-redis`` command does (ops/cli.py parses the command line and calls these).

Each ``cmd_*`` takes the parsed arguments and returns an exit code: 0 ok, 1 a problem was
found (lost trials, a stale lock, a failed verification); 2 (usage or configuration error) is
ops/cli.py's answer to the exceptions these raise.
"""

from __future__ import annotations

import json
import os
import sys
import time

from orion_track_redis.ops import admin, transfer
from orion_track_redis.orion_patches import hold as accel
from orion_track_redis.storage import Redis
from orion_track_redis.store import migrations

OK, PROBLEM, USAGE = 0, 1, 2


class NoServer(LookupError):
    """Nothing configured and the embedded server of this host is not running."""


def connect(args, setup=True, start=False) -> Redis:
    """Same resolution as the storage: --uri, else Oríon's config/env, else embedded. The
    embedded server is started only for a command that stores (``start``): reading a server
    that does not run would start an empty one."""
    import orion.core

    from orion_track_redis.server import embedded

    _warn_unselected_backend(orion.core.config.storage.type)
    options = {"prefix": args.prefix} if args.prefix else {}
    database = orion.core.config.storage.database.to_dict()
    # resolved once (a password file is read once); nothing connects before the check below
    storage = Redis(uri=args.uri, database=database, setup=False, **options)
    opts = storage.backend.opts
    data_dir = opts.url.split("://", 1)[1] or None
    if opts.scheme == "embedded" and not start and not embedded.is_running(data_dir):
        raise NoServer(
            f"no Redis URI is configured ({opts.source}) and the embedded redis-server of this "
            f"host is not running (data dir {embedded.data_dir_path(data_dir)}); this command "
            "does not start it. Give --uri redis://..., configure Oríon's storage "
            "(storage.database.host), or start the embedded server with a hunt."
        )
    if setup:
        storage.set_up()
    return storage


def _warn_unselected_backend(storage_type) -> None:
    """ORION_REDIS_URI names a Redis, but only the storage type selects the backend: a hunt
    in this environment would silently use PickledDB."""
    from orion_track_redis.config.uri import ENV_URI

    if os.environ.get(ENV_URI) and str(storage_type).lower() != "redis":
        print(
            f"orion-redis: warning: {ENV_URI} is set but Oríon's storage type is "
            f"{storage_type!r}: `orion hunt` here would NOT use Redis. Set "
            "ORION_STORAGE_TYPE=redis (or storage: {type: redis} in the Oríon config).",
            file=sys.stderr,
        )


def _embedded_note(storage: Redis) -> str:
    return (
        "embedded redis-server (this host only): " + storage.backend.opts.redacted + "\n"
        if storage.backend.opts.scheme == "embedded"
        else ""
    )


def _print(args, data, render):
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(render(data))


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    lines = [
        "  ".join(c.ljust(widths[c]) for c in columns),
        "  ".join("-" * widths[c] for c in columns),
    ]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


# -- info ----------------------------------------------------------------------------------------
def _connect_to_read(args) -> Redis | None:
    """``connect`` for info/status: None, after saying why, when no server runs to read."""
    try:
        return connect(args)
    except NoServer as exc:
        print(exc)
        return None


def cmd_info(args) -> int:
    storage = _connect_to_read(args)
    if storage is None:
        return OK
    data = admin.info(storage)
    _print(args, data, lambda d: "\n".join(f"{k:18} {v}" for k, v in d.items()))
    return PROBLEM if data.get("warnings") else OK


# -- status --------------------------------------------------------------------------------------
STATUS_COLUMNS = [
    "experiment",
    "version",
    "new",
    "reserved",
    "suspended",
    "completed",
    "interrupted",
    "broken",
    "lost",
    "recovered",
    "unobserved",
    "state_kib",
    "state_log",
    "lock",
    "holder",
    "held_s",
    "fence",
    "completed/min",
]


def _status_rows(storage: Redis, name) -> list[dict]:
    return [
        admin.experiment_status(storage, doc)
        for doc in storage.fetch_experiments(
            {"name": name} if name else {}, {"name": 1, "version": 1}
        )
    ]


def cmd_status(args) -> int:
    storage = _connect_to_read(args)
    if storage is None:
        return OK
    note = _embedded_note(storage)
    while True:
        rows = _status_rows(storage, args.name)
        if args.watch:
            print("\033[2J\033[H", end="")  # clear the screen for the live table
        _print(args, rows, lambda r: note + (_table(r, STATUS_COLUMNS) if r else "no experiment"))
        if not args.watch:
            break
        time.sleep(args.watch)
    if args.check and any(r["lost"] or r["lock"] == "stale" for r in rows):
        return PROBLEM
    return OK


# -- lock, lost, purge ---------------------------------------------------------------------------
def _experiment(storage: Redis, args) -> dict:
    docs = storage.fetch_experiments({"name": args.name})
    if args.version is not None:
        docs = [d for d in docs if d.get("version") == args.version]
    if not docs:
        raise LookupError(
            f"no experiment named {args.name!r}"
            + (f" with version {args.version}" if args.version else "")
        )
    return max(docs, key=lambda d: d.get("version", 1))


STATE_LINES = 40  # of the algorithm state in `lock show`'s text form (--json has it whole)


def cmd_lock(args) -> int:
    storage = connect(args)
    exp = _experiment(storage, args)
    row = admin.experiment_status(storage, exp)
    if args.action == "release":
        if row["lock"] == "free":  # nothing held: saying "released" would hide a wrong name
            print(f"the lock of {exp['name']} v{exp.get('version', 1)} is free: nothing released")
            return OK
        done = storage.release_algorithm_lock(uid=exp["_id"])
        print("released" if done else "no lock record")
        return OK if done else PROBLEM
    data = {k: row[k] for k in ("experiment", "version", "lock", "holder", "held_s", "fence")}
    info = storage.get_algorithm_lock_info(uid=exp["_id"])
    # as stored: with batched observation it lags by the backlog (docs/performance.md)
    data["unobserved"] = row["unobserved"]
    data["algorithm"] = info.configuration if info else None
    data["state"] = _keyed(info.state) if info else None
    _print(args, data, _render_lock)
    return OK


def _keyed(value):
    """The state with string keys for JSON (tuples and sets as lists, numpy arrays as their type
    and shape; the rest through str)."""
    if isinstance(value, dict):
        return {str(k): _keyed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_keyed(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "shape"):  # an RNG's 624 words say nothing
        return f"<{type(value).__name__} {value.dtype} {tuple(value.shape)}>"
    return value


def _render_lock(data: dict) -> str:
    import pprint

    lines = [f"{k:10} {v}" for k, v in data.items() if k != "state"]
    state = pprint.pformat(data["state"], width=100, compact=True).splitlines()
    more = len(state) - STATE_LINES
    lines += ["state"] + ["  " + line for line in state[:STATE_LINES]]
    return "\n".join(lines + ([f"  ... {more} more lines (--json shows all)"] if more > 0 else []))


def cmd_flush(args) -> int:
    """Observe the trials that wait in the experiment's backlog (batched observation)."""
    from orion.core.io import experiment_builder

    storage = connect(args)
    exp = _experiment(storage, args)
    experiment = experiment_builder.load(exp["name"], exp.get("version"), mode="w", storage=storage)
    observed = accel.flush(experiment, timeout=args.timeout)
    left = storage.backlog_length(uid=exp["_id"])
    print(f"observed {observed} trial(s); {left} waiting")
    return OK


HOLDER_COLUMNS = ["trial", "holder", "lease_left_s", "heartbeat_age_s"]
RECOVERY_COLUMNS = ["trial", "holder", "recovered_s_ago", "lease_ended_s_before"]


def cmd_holders(args) -> int:
    """Who holds each reserved trial (host:pid, Slurm job_task) and what was recovered."""
    storage = connect(args)
    exp = _experiment(storage, args)
    data = admin.reservations(storage, exp["_id"])

    def render(d) -> str:
        text = _table(d["reserved"], HOLDER_COLUMNS) if d["reserved"] else "no reserved trial"
        text += f"\n\n{_n(d['recovered'], 'trial')} recovered from dead holders"
        if d["recoveries"]:
            text += " (newest first):\n" + _table(d["recoveries"], RECOVERY_COLUMNS)
        return text

    _print(args, data, render)
    return OK


def cmd_lost(args) -> int:
    storage = connect(args)
    exp = _experiment(storage, args)
    lost = storage.fetch_lost_trials(_Exp(exp["_id"]))
    holders = {r["trial"]: r["holder"] for r in admin.reservations(storage, exp["_id"])["reserved"]}
    rows = [
        {
            "id": t.id,
            "holder": holders.get(t.id, ""),
            "heartbeat": str(t.heartbeat),
            "params": t.params,
        }
        for t in lost
    ]
    requeued = 0
    if args.requeue:
        for trial in lost:
            try:
                storage.set_trial_status(trial, "interrupted", was="reserved")
                requeued += 1
            except Exception:  # the worker came back meanwhile: leave it alone
                pass
    _print(
        args,
        {"lost": rows, "requeued": requeued},
        lambda d: (
            (
                _table(d["lost"], ["id", "holder", "heartbeat", "params"])
                if d["lost"]
                else "no lost trial"
            )
            + (f"\nrequeued {requeued}" if args.requeue else "")
        ),
    )
    return PROBLEM if lost and not args.requeue else OK


def cmd_purge(args) -> int:
    storage = connect(args)
    exp = _experiment(storage, args)
    label = f"{exp['name']}-v{exp.get('version', 1)}"
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError(
                f"purge of {label} needs a terminal to confirm it; "
                "pass --yes to purge without asking"
            )
        answer = input(f"Delete experiment {label}, its trials and its lock? Type its name: ")
        if answer.strip() != exp["name"]:
            print("aborted")
            return PROBLEM
    counts = admin.purge(storage, exp["_id"])
    print(
        f"purged {label}: {counts['trials']} trials, {counts['lock']} lock, "
        f"{counts['experiment']} experiment"
    )
    return OK


def cmd_stop_embedded(args) -> int:
    from orion_track_redis.server import embedded

    where = embedded.data_dir_path(args.data_dir)
    if embedded.stop_embedded(args.data_dir):
        print(f"stopped the embedded redis-server of {where} (its data stays there)")
    else:
        print(f"no embedded redis-server runs for {where}")
    return OK


# -- migration -----------------------------------------------------------------------------------
def cmd_copy(args) -> int:
    source = transfer.open_spec(args.source, source=True)
    target = transfer.open_spec(args.target)
    report = transfer.copy(source, target, experiment=args.experiment, progress=sys.stderr)
    print(transfer.render_report(report))
    return OK if report["verified"] else PROBLEM


def cmd_export(args) -> int:
    count = transfer.export_jsonl(connect(args), args.file, experiment=args.experiment)
    first = count["observed_first"]
    print(
        f"exported {_n(count['experiments'], 'experiment')}, {_n(count['trials'], 'trial')} "
        f"to {args.file}"
        + (f" (the algorithm observed {_n(first, 'waiting trial')} first)" if first else "")
    )
    return OK


def cmd_import(args) -> int:
    count = transfer.import_jsonl(connect(args, start=True), args.file)
    print(
        f"imported {_n(count['experiments'], 'experiment')}, {_n(count['trials'], 'trial')}"
        f" (already there: {_n(count['experiments_skipped'], 'experiment')}, "
        f"{_n(count['trials_skipped'], 'trial')})"
    )
    return OK


class _Exp:
    def __init__(self, exp_id):
        self._id = exp_id

    @property
    def id(self):
        return self._id


# -- metrics -------------------------------------------------------------------------------------
def cmd_metrics(args) -> int:
    """Prometheus' text format (ops/metrics.py): one scrape with --once, else an HTTP endpoint."""
    from orion_track_redis.ops import metrics

    try:
        metrics.require_client()
    except ImportError as exc:
        print(f"orion-redis: {exc}", file=sys.stderr)
        return USAGE
    metrics.parse_listen(args.listen)  # a bad --listen fails before connecting
    storage = connect(args)
    if args.once:
        print(metrics.render(storage), end="")
        return OK
    metrics.serve(
        storage,
        args.listen,
        ready=lambda host, port: print(
            f"serving Prometheus metrics on http://{host}:{port}/metrics", flush=True
        ),
    )
    return OK


# -- upgrade -------------------------------------------------------------------------------------
def cmd_upgrade(args) -> int:
    storage = connect(args, setup=False, start=True)  # setup refuses an older schema
    with storage.backend.guard():
        report = migrations.upgrade(storage.backend.client, storage.backend.keys)
    _print(
        args,
        report,
        lambda r: (
            f"schema {r['from']} -> {r['to']}: {r['trials_rewritten']} trials rewritten, "
            f"{r['log_entries_trimmed']} change-log entries trimmed"
            if r["from"] != r["to"]
            else f"schema {r['to']}: already up to date"
        ),
    )
    return OK


# -- serve ---------------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    """A redis-server for a Slurm fleet, in the foreground until stopped (server/serve.py)."""
    from orion_track_redis.server import serve

    return serve.serve(
        args.dir,
        bind=args.bind,
        port=args.port,
        tls=args.tls,
        connection_file=args.connection_file,
    )
