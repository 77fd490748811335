"""Schema versions of the data under a prefix (``{P}:schema``) and the upgrades between them.

1. (0.1.0) one JSON value per trial field; ``_id`` stored; the change log grows forever.
2. params/results elements in fields of their own and ``_id`` only when it differs from ``id``
   (codec.encode_trial: typical trial hashes stay listpack-encoded, ~3x smaller); the change
   log trimmed to keys.CHANGE_LOG_KEEP entries above a ``floor``.
3. the algorithm state is a snapshot plus a log of deltas (``{P:E}:lock:log``; store/lock.py,
   state/delta.py): a worker of version 2 would read the snapshot alone (an old state) and
   write a whole state over the log. Nothing to rewrite: a version-2 lock record reads as a
   snapshot with an empty log, and gets its epoch from its first write.

Workers refuse data of another version (storage.Redis._setup): an older worker would misread
the new layout, a newer one would write what older workers cannot read. ``orion-redis upgrade``
runs :func:`upgrade` once every worker of the older version has stopped. Each step is
idempotent: an interrupted upgrade is simply run again.
"""

from __future__ import annotations

import uuid

from orion_track_redis import codec
from orion_track_redis.errors import RedisStorageError
from orion_track_redis.keys import CHANGE_LOG_KEEP, GlobalKeys, glob_escape

SCHEMA_VERSION = 3
UPGRADE_LOCK_S = 600  # one upgrade at a time; expires if the upgrading process dies
_SCAN_COUNT = 1000


def _pattern(keys: GlobalKeys, suffix: str) -> str:
    """SCAN pattern of every experiment's ``suffix`` key (glob characters of P escaped)."""
    return "{" + glob_escape(keys.prefix) + ":*}" + suffix


def _trial_keys(client, keys: GlobalKeys):
    # SCAN, not the indexes: trials of a deleted experiment stay (like Legacy) and need it too
    return client.scan_iter(match=_pattern(keys, ":t:*"), count=_SCAN_COUNT)


def _v1_to_v2(client, keys: GlobalKeys, report: dict) -> None:
    for key in _trial_keys(client, keys):
        name = key.decode() if isinstance(key, bytes) else key
        fields = client.hgetall(name)
        if not fields:
            continue
        pairs, _ = codec.encode_trial(codec.decode_trial_fields(fields, name))
        new = {k.encode(): v.encode() for k, v in zip(pairs[::2], pairs[1::2])}
        if new == fields:
            continue  # already in the new layout (a re-run)
        pipe = client.pipeline(transaction=True)  # one key: atomic on every topology
        pipe.delete(name)
        pipe.hset(name, mapping=new)
        pipe.execute()
        report["trials_rewritten"] += 1
    for key in client.scan_iter(match=_pattern(keys, ":changed"), count=_SCAN_COUNT):
        report["log_entries_trimmed"] += _trim_change_log(client, key.decode())


def _trim_change_log(client, changed: str) -> int:
    size = client.zcard(changed)
    if size <= CHANGE_LOG_KEEP:
        return 0
    cut = size - CHANGE_LOG_KEEP
    ((_, floor),) = client.zrange(changed, cut - 1, cut - 1, withscores=True)
    floor_key = changed[: -len(":changed")] + ":floor"
    pipe = client.pipeline(transaction=True)
    pipe.zremrangebyrank(changed, 0, cut - 1)
    pipe.set(floor_key, int(floor))
    pipe.execute()
    return cut


def _v2_to_v3(client, keys: GlobalKeys, report: dict) -> None:
    """Nothing to rewrite (see the module's docstring): the version number is the change."""


STEPS = {1: _v1_to_v2, 2: _v2_to_v3}  # from version -> function upgrading to version + 1


def stored_version(client, keys: GlobalKeys) -> int | None:
    raw = client.get(keys.schema)
    return None if raw is None else int(raw)


def upgrade(client, keys: GlobalKeys) -> dict:
    """Bring the data under ``keys.prefix`` to :data:`SCHEMA_VERSION`; returns a report."""
    report = {
        "from": stored_version(client, keys),
        "to": SCHEMA_VERSION,
        "trials_rewritten": 0,
        "log_entries_trimmed": 0,
    }
    lock, owner = f"{keys.tag}:upgrading", uuid.uuid4().hex
    if not client.set(lock, owner, nx=True, ex=UPGRADE_LOCK_S):
        raise RedisStorageError(
            f"another upgrade of prefix {keys.prefix!r} is running (key {lock}); wait for it, "
            f"or delete that key if its process died (it expires after {UPGRADE_LOCK_S} s)."
        )
    try:
        version = report["from"]
        if version is None:  # nothing stored yet
            client.set(keys.schema, SCHEMA_VERSION)
            return report
        if version > SCHEMA_VERSION:
            raise newer_schema_error(keys.prefix, version)
        while version < SCHEMA_VERSION:
            STEPS[version](client, keys, report)
            version += 1
            client.set(keys.schema, version)
        return report
    finally:
        if client.get(lock) == owner.encode():
            client.delete(lock)


def newer_schema_error(prefix: str, version: int) -> RedisStorageError:
    return RedisStorageError(
        f"the data under prefix {prefix!r} has schema version {version}, newer than this "
        f"orion-track-redis understands ({SCHEMA_VERSION}). Upgrade orion-track-redis on this "
        "machine (pip install -U orion-track-redis)."
    )


def older_schema_error(prefix: str, version: int, redacted_uri: str) -> RedisStorageError:
    return RedisStorageError(
        f"the data under prefix {prefix!r} has schema version {version}, older than this "
        f"orion-track-redis writes ({SCHEMA_VERSION}). Stop every worker of the older version, "
        f"then run once: orion-redis --uri '{redacted_uri}' --prefix '{prefix}' upgrade "
        "(give the password in the URI; it is not shown here). Nothing is lost meanwhile: "
        "the older version keeps working on this data until then."
    )
