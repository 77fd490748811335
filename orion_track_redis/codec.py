"""JSON encoding of documents that round-trips Python types exactly.

Oríon hashes trial parameters (md5 of their repr), so 1, 1.0 and "1" must come back as they
went in; experiments carry datetimes that must compare ``==`` after a round trip. Plain JSON
keeps int/float/str/bool/None/list/dict-with-str-keys; everything else is wrapped in a one-key
tag object:

========================  ==========================================
``{"$dt": iso}``          naive or aware ``datetime.datetime``
``{"$date": iso}``        ``datetime.date``
``{"$td": [d, s, us]}``   ``datetime.timedelta``
``{"$tuple": [...]}``     tuple (lists stay lists)
``{"$bytes": b64}``       bytes
``{"$map": [[k, v]...]}`` dict with any non-str key
``{"$path": text}``        ``pathlib`` path (read back as ``pathlib.Path``; an experiment
                          given its working_dir as a Path stores one in every trial)
``{"$esc": [k, v]}``      a real dict whose only key happens to look like a tag
========================  ==========================================

NaN and ±inf use Python's JSON extensions (``NaN``, ``Infinity``), which ``json`` reads back.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import pathlib
from typing import NoReturn

from orion_track_redis.errors import CorruptData

_TAGS = ("$dt", "$date", "$td", "$tuple", "$bytes", "$map", "$esc", "$path")
_SIMPLE = (str, int, float, bool, type(None))


def _enc(obj):
    """Recursively turn ``obj`` into JSON-native values, tagging what JSON would lose."""
    if isinstance(obj, _SIMPLE):
        # numpy scalars subclass float/int in part; make them plain so json accepts them
        return obj if type(obj) in _SIMPLE else _plain_number(obj)
    if isinstance(obj, list):
        return [_enc(v) for v in obj]
    if isinstance(obj, dict):
        if all(type(k) is str for k in obj):
            if len(obj) == 1 and next(iter(obj)) in _TAGS:
                ((key, val),) = obj.items()
                return {"$esc": [key, _enc(val)]}  # a pair, so the hook never sees the tag
            return {k: _enc(v) for k, v in obj.items()}
        return {"$map": [[_enc(k), _enc(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_enc(v) for v in obj]}
    if isinstance(obj, _dt.datetime):
        return {"$dt": obj.isoformat()}
    if isinstance(obj, _dt.date):
        return {"$date": obj.isoformat()}
    if isinstance(obj, _dt.timedelta):
        return {"$td": [obj.days, obj.seconds, obj.microseconds]}
    if isinstance(obj, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, pathlib.PurePath):
        return {"$path": str(obj)}
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return _enc(obj.tolist())
    raise TypeError(f"cannot store a value of type {type(obj).__name__}: {obj!r:.80}")


def _plain_number(obj):
    for kind in (bool, int, float, str):
        if isinstance(obj, kind):
            return kind(obj)
    return obj


def _dec_tag(obj: dict):
    """object_hook for json.loads: undo the tags of :func:`_enc`."""
    if len(obj) != 1:
        return obj
    if "$dt" in obj:  # the usual tag (4 timestamps per trial): no unpacking
        return _dt.datetime.fromisoformat(obj["$dt"])
    ((tag, val),) = obj.items()
    if tag == "$tuple":
        return tuple(val)
    if tag == "$esc":
        return {val[0]: val[1]}
    if tag == "$map":
        return {_hashable(k): v for k, v in val}
    if tag == "$date":
        return _dt.date.fromisoformat(val)
    if tag == "$td":
        return _dt.timedelta(days=val[0], seconds=val[1], microseconds=val[2])
    if tag == "$bytes":
        return base64.b64decode(val)
    if tag == "$path":
        return pathlib.Path(val)
    return obj


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


_ENCODE_STR = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


def dumps(obj) -> str:
    """Encode one value as compact JSON text."""
    kind = type(obj)  # fast paths for the hot path's statuses, ids and timestamps
    if kind is str:
        return _ENCODE_STR(obj)
    if kind is _dt.datetime:
        return '{"$dt":"' + obj.isoformat() + '"}'
    if obj is None:
        return "null"
    if kind is int:
        return repr(obj)
    if kind is float and obj - obj == 0:  # finite: json writes repr(); NaN/inf take the slow path
        return repr(obj)
    if kind is list and not obj:  # a new trial's results
        return "[]"
    return json.dumps(_enc(obj), separators=(",", ":"), ensure_ascii=False)


_DECODER = json.JSONDecoder(object_hook=_dec_tag)
_FIELD_PREFIX: dict = {}  # hash field name -> its JSON key text, memoised (a handful of names)


def _raise_corrupt(where: str, exc: Exception) -> NoReturn:
    raise CorruptData(
        f"{where} is not a document written by orion-track-redis ({exc}). Another program "
        "may write under the same prefix: use a different `prefix` option or remove the key."
    ) from None


def loads(text, where: str = "a stored value"):
    """Decode what :func:`dumps` produced; ``where`` names the Redis key in errors."""
    try:
        return _DECODER.decode(text.decode() if isinstance(text, bytes) else text)
    except (ValueError, TypeError, AttributeError) as exc:
        _raise_corrupt(where, exc)


def encode_fields(doc: dict) -> dict[str, str]:
    """Top-level fields of a document -> hash fields (one JSON value each)."""
    return {key: dumps(value) for key, value in doc.items()}


def _field_prefix(name) -> bytes:
    prefix = _FIELD_PREFIX.get(name)
    if prefix is None:
        text = name.decode() if isinstance(name, bytes) else name
        prefix = _FIELD_PREFIX[name] = json.dumps(text).encode() + b":"
    return prefix


def decode_fields(fields: dict, where: str) -> dict:
    """Inverse of :func:`encode_fields` (keys/values may be bytes).

    The fields are joined into one JSON object and parsed once: a parse per field costs ~10x
    more, and fetch_trials decodes every trial of an experiment.
    """
    if len(fields) < 2:  # a lone field could look like a type tag to the object hook
        return {
            (k.decode() if isinstance(k, bytes) else k): loads(v, where) for k, v in fields.items()
        }
    body = b",".join(
        _field_prefix(k) + (v if isinstance(v, bytes) else v.encode()) for k, v in fields.items()
    )
    try:
        return _DECODER.decode("{" + body.decode() + "}")
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        _raise_corrupt(where, exc)


# -- trial documents (schema 2) ------------------------------------------------------------------
# A Redis hash stays in its compact listpack encoding (~3x smaller than a hashtable) only while
# every value is <= 64 bytes (hash-max-listpack-value). A trial's params/results lists easily
# exceed that, so each element of an Oríon-shaped list gets its own field, "params#0", ...,
# holding name TAB type TAB value (JSON each; JSON never contains a raw tab). The fetch scripts
# rebuild the lists server-side (lua/include/trial_json.lua); decode_trial_fields does it here.
# ``_id`` is not stored when it equals ``id`` (Oríon's usual case): readers add it back. Other
# lists stay one JSON field.
LIST_FIELDS = ("params", "results")
_ELEMENT_KEYS = frozenset(("name", "type", "value"))


def _oriented(items) -> bool:
    return (
        type(items) is list
        and len(items) > 0
        and all(type(i) is dict and i.keys() == _ELEMENT_KEYS for i in items)
    )


def encode_trial(doc: dict) -> tuple[list[str], list[str]]:
    """Trial document -> (hash field/value pairs, list trims for update_trial.lua).

    A trim ``"name n"`` tells the script to delete ``name#k`` for k >= n, and the whole
    ``name`` field when n > 0 (so a list written in either form replaces the other)."""
    pairs, trims = [], []
    for key, value in doc.items():
        if key == "_id" and value == doc.get("id"):
            continue
        if key in LIST_FIELDS:
            if _oriented(value):
                for index, item in enumerate(value):
                    pairs += [f"{key}#{index}", _element(item)]
                trims.append(f"{key} {len(value)}")
                continue
            trims.append(f"{key} 0")
        pairs += [key, dumps(value)]
    return pairs, trims


def _element(item: dict) -> str:
    return f"{dumps(item['name'])}\t{dumps(item['type'])}\t{dumps(item['value'])}"


def _element_json(raw: bytes) -> bytes:
    name, kind, value = raw.split(b"\t")
    return b'{"name":' + name + b',"type":' + kind + b',"value":' + value + b"}"


def decode_trial_fields(fields: dict, where: str) -> dict:
    """Inverse of :func:`encode_trial` for one HGETALL reply (bytes or str)."""
    plain: dict = {}
    lists: dict = {}
    for key, value in fields.items():
        key = key.decode() if isinstance(key, bytes) else key
        value = value if isinstance(value, bytes) else value.encode()
        name, sep, index = key.partition("#")
        if sep and name in LIST_FIELDS and index.isdigit():
            lists.setdefault(name, {})[int(index)] = value
        else:
            plain[key] = value
    doc = decode_fields(plain, where) if plain else {}  # a stale whole field is checked too
    try:
        for name, items in lists.items():
            doc[name] = loads(
                b"[" + b",".join(_element_json(items[i]) for i in sorted(items)) + b"]", where
            )
    except ValueError as exc:
        _raise_corrupt(where, exc)
    return restore_id(doc)


def restore_id(doc: dict) -> dict:
    """``doc`` with its ``_id``: :func:`encode_trial` does not store one equal to ``id``."""
    if "_id" not in doc and "id" in doc:
        doc["_id"] = doc["id"]
    return doc


def utcnow() -> _dt.datetime:
    """Naive UTC now, as Oríon stores its datetimes."""
    return _dt.datetime.utcnow()


def epoch(moment) -> float | None:
    """Naive-UTC datetime -> epoch seconds (a score comparable with the server's TIME)."""
    if not isinstance(moment, _dt.datetime):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.timestamp()


_FIELD_OK: set = set()  # field names already validated (Oríon uses a dozen)


def checked(doc: dict) -> dict:
    """``doc`` once its field names are known to be storable (fetch_docs.lua writes them into
    JSON unescaped, and '#' marks list elements)."""
    for key in doc:
        if key not in _FIELD_OK:
            if (
                not isinstance(key, str)
                or not key
                or any(c in key for c in '"\\#')
                or not key.isprintable()
            ):
                raise ValueError(
                    f"field name {key!r} cannot be stored: use a printable string "
                    "without quotes, backslashes or '#'"
                )
            if len(_FIELD_OK) < 1000:
                _FIELD_OK.add(key)
    return doc
