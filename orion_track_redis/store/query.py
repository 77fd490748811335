"""Mongo-style matching and projection, with exactly the semantics of Oríon's EphemeralDB.

Oríon's Legacy storage over EphemeralDB is the reference behaviour, so we reuse its document
matcher (dotted keys, ``$ne``, ``$in``, ``$gte``, ``$gt``, ``$lte``; an unknown operator is a
``ValueError`` as there) instead of re-implementing it. Simple top-level equality queries, the
common case on Oríon's hot paths, skip the flattening it does.
"""

from __future__ import annotations

from orion.core.io.database.ephemeraldb import EphemeralDocument

_ATOMS = (str, int, float, bool, type(None))


def _is_simple(query: dict) -> bool:
    return all(
        isinstance(k, str) and "." not in k and not k.startswith("$") and isinstance(v, _ATOMS)
        for k, v in query.items()
    )


def matches(doc: dict, query: dict | None) -> bool:
    """Whether ``doc`` matches ``query`` (None or {} match everything)."""
    if not query:
        return True
    if _is_simple(query):
        return all(k in doc and doc[k] == v for k, v in query.items())
    return EphemeralDocument(doc).match(query)


def project(doc: dict, selection: dict | None) -> dict:
    """Apply a Mongo projection; ``_id`` is always returned unless excluded explicitly."""
    if not selection:
        return doc
    return EphemeralDocument(doc).select(dict(selection))


def apply_set(doc: dict, changes: dict) -> dict:
    """Mongo ``$set``: top-level keys replace whole values; dotted keys set nested ones."""
    new = dict(doc)
    for key, value in changes.items():
        if "." not in key:
            new[key] = value
            continue
        head, *path = key.split(".")
        node = new[head] = _copy_dict(new.get(head))
        for part in path[:-1]:
            node[part] = _copy_dict(node.get(part))
            node = node[part]
        node[path[-1]] = value
    return new


def _copy_dict(value) -> dict:
    return dict(value) if isinstance(value, dict) else {}
