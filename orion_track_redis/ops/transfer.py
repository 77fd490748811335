"""Moving experiments between storages: ``copy`` (Redis, PickledDB, MongoDB through Oríon's
Legacy storage) and a versioned JSON-lines ``export``/``import``.

Both go through the storage protocol only, keep experiment ids (so ``refers`` links stay valid),
and are idempotent: what already exists on the target (same experiment id, same trial id) is
skipped, so an interrupted run can simply be run again.

Export format (one JSON object per line, values encoded by :mod:`codec`, i.e. with type tags)::

    {"format": "orion-track-redis-export", "version": 1}
    {"kind": "experiment", "doc": {...}}
    {"kind": "lock", "experiment": <id>, "configuration": {...}, "state": <pickle bytes|null>}
    {"kind": "trial", "doc": {...}}
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Any

from orion.core.io.database import DuplicateKeyError
from orion.core.worker.trial import Trial

from orion_track_redis import codec
from orion_track_redis.keys import STATUSES
from orion_track_redis.orion_patches import hold
from orion_track_redis.state.codec import load_state

FORMAT, VERSION = "orion-track-redis-export", 1


def open_spec(spec: str, source: bool = False):
    """A storage from a SPEC: a Redis URI, ``pickleddb:PATH`` or ``mongodb://...``. A
    ``source`` PickledDB file must exist (PickledDB would create an empty one)."""
    from orion_track_redis.storage import Redis

    if spec.startswith("pickleddb:"):
        from orion.storage.legacy import Legacy

        path = spec[len("pickleddb:") :]
        if source and not os.path.isfile(path):
            raise LookupError(f"no PickledDB file at {path}: check the path after pickleddb:")
        return Legacy(database={"type": "pickleddb", "host": path})
    if spec.startswith("mongodb://"):
        from orion.storage.legacy import Legacy

        return Legacy(database={"type": "mongodb", "host": spec})
    return Redis(uri=spec)


def _experiments(storage, name=None) -> list[dict]:
    docs = storage.fetch_experiments({"name": name} if name else {})
    if name and not docs:  # a typo must not read as a successful, empty copy
        raise LookupError(f"no experiment named {name!r} in {_where(storage)}")
    # parents before children, so refers links point at existing experiments
    return sorted(docs, key=lambda d: (d.get("refers", {}) or {}).get("parent_id") is not None)


def _where(storage) -> str:
    backend = getattr(storage, "backend", None)  # ours; Oríon's Legacy has none
    return backend.opts.redacted if backend is not None else type(storage).__name__


def _counts(storage, exp_id) -> dict:
    trials = storage.fetch_trials(uid=exp_id)
    return {s: sum(t.status == s for t in trials) for s in STATUSES}


def observe_backlog(storage, doc, timeout: float = 60) -> int:
    """Observe the trials waiting in the experiment's backlog (batched observation) before its
    algorithm state is read: the stored state lags by exactly them, and neither a copy nor an
    export carries the backlog itself. How many were observed (0 for other storages)."""
    if not getattr(storage, "backlog_length", None) or not storage.backlog_length(uid=doc["_id"]):
        return 0
    from orion.core.io import experiment_builder

    experiment = experiment_builder.load(doc["name"], doc.get("version"), mode="w", storage=storage)
    return hold.flush(experiment, timeout=timeout)


def _copy_lock(source, target, exp_id, config):
    info = source.get_algorithm_lock_info(uid=exp_id)
    if info is None:
        return
    existing = target.get_algorithm_lock_info(uid=exp_id)
    if existing is None:
        target.initialize_algorithm_lock(exp_id, info.configuration)
    if info.state is not None:
        with target.acquire_algorithm_lock(uid=exp_id, timeout=60) as locked:
            locked.set_state(info.state)


def _copy_experiment(source, target, doc) -> tuple[int, int, int]:
    """Copy one experiment; returns (trials copied, trials already there, observed first)."""
    exp_id = doc["_id"]
    observed = observe_backlog(source, doc)
    if not target.fetch_experiments({"_id": exp_id}):
        config = dict(doc)
        try:
            target.create_experiment(config)
        except DuplicateKeyError:
            raise LookupError(
                f"the target already has an experiment {doc.get('name')!r} v{doc.get('version')} "
                f"with another id than {exp_id!r}: copy to another prefix or purge it first"
            ) from None
    copied = skipped = 0
    for trial in source.fetch_trials(uid=exp_id):
        try:
            target.register_trial(Trial(**trial.to_dict()))
            copied += 1
        except DuplicateKeyError:
            skipped += 1
    _copy_lock(source, target, exp_id, doc)
    return copied, skipped, observed


def copy(source, target, experiment=None, progress=None) -> dict:
    """Copy experiments, trials and algorithm states; verify counts per status on both sides."""
    docs = _experiments(source, experiment)
    report: dict[str, Any] = {"experiments": [], "verified": True}
    for i, doc in enumerate(docs, 1):
        copied, skipped, observed = _copy_experiment(source, target, doc)
        before, after = _counts(source, doc["_id"]), _counts(target, doc["_id"])
        same = before == after
        report["verified"] &= same
        report["experiments"].append(
            {
                "name": doc.get("name"),
                "version": doc.get("version"),
                "copied": copied,
                "skipped": skipped,
                "observed_first": observed,
                "source": before,
                "target": after,
                "equal": same,
            }
        )
        if progress is not None:
            bar = "#" * int(30 * i / len(docs))
            print(f"\r[{bar:30}] {i}/{len(docs)} experiments", end="", file=progress, flush=True)
    if progress is not None and docs:
        print(file=progress)
    return report


def render_report(report) -> str:
    lines = []
    for e in report["experiments"]:
        lines.append(
            f"{e['name']}-v{e['version']}: copied {e['copied']}, already there "
            f"{e['skipped']}; {'OK' if e['equal'] else 'MISMATCH'}"
            + (
                f" (the algorithm observed {e['observed_first']} waiting trial(s) first)"
                if e.get("observed_first")
                else ""
            )
        )
        for side in ("source", "target"):
            counts = ", ".join(f"{s} {n}" for s, n in e[side].items() if n)
            lines.append(f"  {side:6}: {counts or 'no trials'}")
    lines.append(
        "verified: counts per status are equal on both sides"
        if report["verified"]
        else "VERIFICATION FAILED: counts per status differ"
    )
    return "\n".join(lines)


def export_jsonl(storage, path, experiment=None) -> dict:
    """Write the experiments to ``path``; each one's backlog is observed first (the exported
    state is then up to date), counted in ``observed_first``."""
    count = {"experiments": 0, "trials": 0, "observed_first": 0}
    docs = _experiments(storage, experiment)  # before the file: a missing one creates nothing
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps({"format": FORMAT, "version": VERSION}) + "\n")
        for doc in docs:
            count["observed_first"] += observe_backlog(storage, doc)
            out.write(codec.dumps({"kind": "experiment", "doc": doc}) + "\n")
            info = storage.get_algorithm_lock_info(uid=doc["_id"])
            if info is not None:
                out.write(
                    codec.dumps(
                        {
                            "kind": "lock",
                            "experiment": doc["_id"],
                            "configuration": info.configuration,
                            "state": _pickled(info.state),
                        }
                    )
                    + "\n"
                )
            for trial in storage.fetch_trials(uid=doc["_id"]):
                out.write(codec.dumps({"kind": "trial", "doc": trial.to_dict()}) + "\n")
                count["trials"] += 1
            count["experiments"] += 1
    return count


def _pickled(state):
    """Algorithm states hold numpy arrays and Oríon objects: keep them as pickle bytes."""
    return None if state is None else pickle.dumps(state, protocol=4)


def import_jsonl(storage, path) -> dict:
    count = {"experiments": 0, "trials": 0, "experiments_skipped": 0, "trials_skipped": 0}
    with open(path, encoding="utf-8") as lines:
        header = json.loads(next(lines, "{}") or "{}")
        if header.get("format") != FORMAT or header.get("version", 0) > VERSION:
            raise ValueError(
                f"{path} is not an orion-redis export of version <= {VERSION} "
                f"(header: {header}); export it again with this version"
            )
        for number, line in enumerate(lines, 2):
            record = codec.loads(line, f"{path} line {number}")
            _import_record(storage, record, count)
    return count


def _import_record(storage, record, count):
    kind = record.get("kind")
    if kind == "experiment":
        try:
            storage.create_experiment(dict(record["doc"]))
            count["experiments"] += 1
        except DuplicateKeyError:
            count["experiments_skipped"] += 1
    elif kind == "lock":
        exp_id = record["experiment"]
        if storage.get_algorithm_lock_info(uid=exp_id) is None:
            storage.initialize_algorithm_lock(exp_id, record["configuration"])
        if record["state"] is not None:
            # the file is data: its pickle goes through the same allow-list as Redis contents
            state = load_state(record["state"], storage.backend.opts.state_secret)
            with storage.acquire_algorithm_lock(uid=exp_id, timeout=60) as locked:
                locked.set_state(state)
    elif kind == "trial":
        try:
            storage.register_trial(Trial(**record["doc"]))
            count["trials"] += 1
        except DuplicateKeyError:
            count["trials_skipped"] += 1
    else:
        raise ValueError(f"unknown record kind {kind!r} in export file")
