"""Experiment and benchmark documents: one hash per experiment, indexed by creation order
(``{P}:exps``) and by name+version (``{P}:exp_names``, the uniqueness Oríon relies on);
benchmarks in one hash by name. ``storage.Redis`` calls these inside its error boundary."""

from __future__ import annotations

from orion.core.io.database import DuplicateKeyError

from orion_track_redis import codec
from orion_track_redis.keys import GlobalKeys, token
from orion_track_redis.store import codes, query


def _flat_pairs(doc: dict) -> list:
    """Field/value pairs of an experiment document (one JSON value per field)."""
    out = []
    for key, value in codec.checked(doc).items():
        out += [key, codec.dumps(value)]
    return out


def _duplicate_name(name_field: str) -> DuplicateKeyError:
    return DuplicateKeyError(f"Duplicate key error: index=name_1_version_1 value={name_field}")


class ExperimentStore:
    """Experiments and benchmarks under one prefix, through ``client()``/``scripts()`` (the
    storage's lazy, fork-aware accessors)."""

    def __init__(self, client, scripts, keys: GlobalKeys):
        self._client = client
        self._scripts = scripts
        self._keys = keys

    # -- benchmarks ---------------------------------------------------------------------------
    def create_benchmark(self, config: dict) -> None:
        """Insert a benchmark, unique on its name."""
        client = self._client()
        if "_id" not in config:
            config["_id"] = client.incr(self._keys.benchmarks + ":seq")
        if not client.hsetnx(
            self._keys.benchmarks, codec.dumps(config.get("name")), codec.dumps(config)
        ):
            raise DuplicateKeyError(f"Duplicate key error: benchmark name={config.get('name')}")

    def fetch_benchmarks(self, query_, selection=None) -> list[dict]:
        raw = self._client().hgetall(self._keys.benchmarks)
        docs = [codec.loads(v, self._keys.benchmarks) for v in raw.values()]
        docs.sort(key=lambda d: (str(type(d.get("_id"))), d.get("_id")))
        return [query.project(d, selection) for d in docs if query.matches(d, query_)]

    # -- experiments --------------------------------------------------------------------------
    def create(self, config: dict) -> None:
        """Insert an experiment, unique on name+version and on ``_id`` (generated if absent)."""
        generated = "_id" not in config
        while True:
            if generated:
                config["_id"] = self._client().incr(self._keys.exp_seq)
            rc = self._insert(config)
            if rc == codes.DONE:
                return
            if rc == -1 or not generated:  # a duplicate _id that was generated: a new one
                codes.check(
                    "create_experiment",
                    rc,
                    name=config.get("name"),
                    version=config.get("version"),
                    id=config["_id"],
                )

    def _insert(self, config: dict) -> int:
        exp_token = token(config["_id"])
        config = _rooted(config)
        return int(
            self._scripts().create_experiment(
                exp_names=self._keys.exp_names,
                exps=self._keys.exps,
                exp=self._keys.exp(exp_token),
                name_version=codec.dumps([config.get("name"), config.get("version")]),
                exp_token=exp_token,
                fields=_flat_pairs(config),
            )
        )

    def _tokens(self) -> list[str]:
        return [t.decode() for t in self._client().zrange(self._keys.exps, 0, -1)]

    def _read(self, tokens) -> list[dict]:
        pipe = self._client().pipeline(transaction=False)
        for exp_token in tokens:
            pipe.hgetall(self._keys.exp(exp_token))
        docs = []
        for exp_token, fields in zip(tokens, pipe.execute()):
            if fields:
                docs.append(codec.decode_fields(fields, self._keys.exp(exp_token)))
        return docs

    def fetch(self, query_, selection=None) -> list[dict]:
        """Experiments matching a Mongo-style query, in creation order."""
        query_ = query_ or {}
        if type(query_.get("_id")) in (int, str):  # exact key lookup
            docs = self._read([token(query_["_id"])])
        elif "_id" in query_ and query_["_id"] is None:
            return []
        else:
            docs = self._read(self._tokens())
        out = []
        for doc in docs:
            if query.matches(doc, query_):
                selected = query.project(doc, selection)
                if (selection or {}).get("_id", 1):  # _id unless explicitly excluded
                    selected["_id"] = doc["_id"]
                out.append(selected)
        return out

    def update(self, uid, where, changes: dict) -> int:
        """Top-level set of fields (nested dicts replaced whole); returns the count updated."""
        changes.pop("_id", None)  # _id is immutable, and Oríon passes it back unchanged
        key = self._keys.exp(token(uid))
        return self._client().transaction(
            lambda pipe: self._update(pipe, key, where, changes), key, value_from_callable=True
        )

    def _update(self, pipe, key, where, changes) -> int:
        fields = pipe.hgetall(key)
        if not fields:
            pipe.multi()
            return 0
        doc = codec.decode_fields(fields, key)
        if not query.matches(doc, where):
            pipe.multi()
            return 0
        old_name = codec.dumps([doc.get("name"), doc.get("version")])
        new = query.apply_set(doc, changes)
        new_name = codec.dumps([new.get("name"), new.get("version")])
        if new_name != old_name and pipe.hexists(self._keys.exp_names, new_name):
            raise _duplicate_name(new_name)
        touched = {k: new[k] for k in {k.split(".")[0] for k in changes}}
        pipe.multi()
        if touched:
            pipe.hset(key, mapping=codec.encode_fields(touched))
        if new_name != old_name:
            pipe.hdel(self._keys.exp_names, old_name)
            pipe.hset(self._keys.exp_names, new_name, token(doc["_id"]))
        return 1

    def delete(self, uid) -> int:
        """Delete the experiment document (not its trials nor its lock, like Legacy)."""
        exp_token = token(uid)
        key = self._keys.exp(exp_token)
        name, version = self._client().hmget(key, "name", "version")
        name_field = codec.dumps(
            [
                codec.loads(name, key) if name else None,
                codec.loads(version, key) if version else None,
            ]
        )
        return int(
            self._scripts().delete_experiment(
                exp_names=self._keys.exp_names,
                exps=self._keys.exps,
                exp=key,
                name_version=name_field,
                exp_token=exp_token,
            )
        )


def _rooted(config: dict) -> dict:
    """The document to store: a root experiment (``refers`` without a parent) gets its
    ``root_id`` in the creating script itself. Oríon's builder sets it with a second call, and a
    worker that loaded the experiment in between wrote ``refers`` back with ``root_id: null``
    (then `orion list` shows nothing). The caller's config is left as Oríon built it."""
    refers = config.get("refers")
    if not isinstance(refers, dict) or refers.get("parent_id") is not None:
        return config
    if refers.get("root_id") is not None:
        return config
    return {**config, "refers": {**refers, "root_id": config["_id"]}}
