"""``Redis``: Oríon's storage protocol on Redis.

Contract (Oríon 0.2.7, see ../README.md "Design"): behaves like Oríon's Legacy storage where
Oríon's docs are silent; raises Oríon's own exceptions (``DuplicateKeyError``, ``FailedUpdate``,
``LockAcquisitionTimeout``, ``MissingArguments``); returns real ``Trial`` objects sorted by
``submit_time``. Every state change of a trial is one Lua script call (see ``lua/``); reads are
pipelined. The storage pickles (Oríon cloudpickles it for every trial) and reconnects lazily.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os

import orion.core
from orion.core.io.database import DuplicateKeyError
from orion.core.worker.trial import Trial, validate_status
from orion.storage.base import (
    BaseStorageProtocol,
    FailedUpdate,
    get_trial_uid_and_exp,
    get_uid,
)

from . import accel, codec, migrations, query
from .trials import build as build_trial, clone as clone_trial, sort_key, to_doc
from .connection import RedisDB, fail_fast, make_client, refuse_plain_server_for_tls
from .errors import CorruptData, install_cli_excepthook, translate_errors
from .gcpause import no_gc
from .keys import (CHANGE_LOG_KEEP, PENDING, REQUEST_TTL, STATUSES, ExperimentKeys, GlobalKeys,
                   escape, new_request_id, token)
from .lock import LockClient
from .scripts import Scripts, run_streamed
from .serverchecks import check_server, server_info
from .uri import Options, resolve

log = logging.getLogger(__name__)

DELETE_BATCH = 500
# trials per fetch_docs call: bounds how long one call blocks Redis (3 ms). Larger chunks cost
# Redis more per trial (its Lua heap grows: 10k trials take 95 ms of Redis time in chunks of
# 1,000, 82 ms in chunks of 300), smaller ones add a call's overhead each.
FETCH_CHUNK = 300
STREAM_CHUNK_MIN = 150  # the smallest chunk of a streamed read (and its last one)
CHANGES_MAX = CHANGE_LOG_KEEP  # a reader more changes behind reloads everything


def _accelerate(opts: Options) -> bool:
    """Copy-free lock holds for this storage: on unless switched off (option, env var) or
    Oríon is not a verified version (accel.install logs why)."""
    # installed whatever the switches (on a verified Oríon): a non-accelerated storage of ours
    # still observes a backlog that batching workers of the same fleet left
    return accel.install() and opts.accelerate and accel.env_allows()


def _batch(opts: Options, accelerated: bool) -> bool:
    """Batched observation: only with the accelerator (its holds observe the backlog)."""
    return accelerated and opts.batch_observe and accel.env_allows(accel.BATCH_ENV)


def _now() -> datetime.datetime:
    return datetime.datetime.utcnow()


def _epoch(moment) -> float | None:
    """Naive-UTC datetime -> epoch seconds (a score comparable with the server's TIME)."""
    if not isinstance(moment, datetime.datetime):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


_FIELD_OK: set = set()  # field names already validated (Oríon uses a dozen)


def _checked(doc: dict) -> dict:
    """``doc`` once its field names are known to be storable (fetch_docs.lua writes them into
    JSON unescaped, and '#' marks list elements)."""
    for key in doc:
        if key not in _FIELD_OK:
            if not isinstance(key, str) or not key or any(c in key for c in '"\\#') \
                    or not key.isprintable():
                raise ValueError(f"field name {key!r} cannot be stored: use a printable string "
                                 "without quotes, backslashes or '#'")
            if len(_FIELD_OK) < 1000:
                _FIELD_OK.add(key)
    return doc


def _flat_pairs(doc: dict) -> list:
    """Field/value pairs of an experiment document (one JSON value per field)."""
    out = []
    for key, value in _checked(doc).items():
        out += [key, codec.dumps(value)]
    return out


class Redis(BaseStorageProtocol):
    """Oríon storage backed by Redis. See the README for configuration.

    Parameters
    ----------
    uri: str, optional
        Redis URI (``redis://``, ``rediss://``, ``unix://``, ``fakeredis://``, ``embedded://``).
    database: dict, optional
        Oríon's ``database`` section; its ``host`` is used when it holds a Redis URI.
    setup: bool
        Check the schema version (and write it on a fresh database). ``orion db upgrade``
        passes False.
    **options
        ``prefix``, ``lock_ttl``, ``state_secret`` and connection options (see ``uri.py``).
    """

    def __init__(self, uri=None, database=None, setup=True, **options):
        install_cli_excepthook()  # before anything here can raise
        self._opts: Options = resolve(uri, database, options)
        log.info("orion-track-redis: using %s (from %s, prefix %s)",
                 self._opts.redacted, self._opts.source, self._opts.prefix)
        self._client = None
        self._pid = None
        self._cache = {}
        self._eks = {}
        self._keys = GlobalKeys(self._opts.prefix)
        self._db = RedisDB(self._opts)
        self.accelerated_holds = _accelerate(self._opts)
        self.batched_observation = _batch(self._opts, self.accelerated_holds)
        if setup:
            if self._opts.scheme == "rediss":
                refuse_plain_server_for_tls(self._opts)
            with self._guard(), fail_fast(self.client):
                self._setup()

    # -- connection, pickling ----------------------------------------------------------------
    def __getstate__(self):
        return {"opts": self._opts}

    def __setstate__(self, state):
        self._opts = state["opts"]
        self._client = None
        self._pid = None
        self._cache = {}
        self._eks = {}
        self._keys = GlobalKeys(self._opts.prefix)
        self._db = RedisDB(self._opts)
        self.accelerated_holds = _accelerate(self._opts)
        self.batched_observation = _batch(self._opts, self.accelerated_holds)

    @property
    def client(self):
        # a forked child must not share its parent's sockets
        if self._client is None or self._pid != os.getpid():
            self._client = make_client(self._opts)
            self._scripts = Scripts(self._client, self._opts.replica_acks,
                                    self._opts.replica_ack_timeout, self._opts.redacted)
            self._lock = LockClient(self._client, self._scripts, self._opts.lock_ttl,
                                    self._opts.state_secret)
            self._pid = os.getpid()
        return self._client

    @property
    def scripts(self) -> Scripts:
        self.client  # noqa: B018 - connects lazily
        return self._scripts

    @property
    def lock(self) -> LockClient:
        self.client  # noqa: B018
        return self._lock

    def _guard(self):
        return translate_errors(self._opts.redacted)

    def _setup(self):
        if self._opts.scheme != "fakeredis":  # fakeredis has no INFO
            info = server_info(self.client)
            if info is not None:
                check_server(info, self._opts.redacted)
        stored = migrations.stored_version(self.client, self._keys)
        if stored is None:
            self.client.setnx(self._keys.schema, migrations.SCHEMA_VERSION)
        elif stored > migrations.SCHEMA_VERSION:
            raise migrations.newer_schema_error(self._opts.prefix, stored)
        elif stored < migrations.SCHEMA_VERSION:
            raise migrations.older_schema_error(self._opts.prefix, stored, self._opts.redacted)

    def _ek(self, exp_id) -> ExperimentKeys:
        try:  # memoised: every hot-path call needs the keys of its experiment
            return self._eks[exp_id]
        except KeyError:
            keys = self._eks[exp_id] = self._keys.experiment(exp_id)
            return keys
        except TypeError:  # an unhashable id
            return self._keys.experiment(exp_id)

    # -- benchmarks ---------------------------------------------------------------------------
    def create_benchmark(self, config):
        """Insert a benchmark, unique on its name."""
        with self._guard():
            if "_id" not in config:
                config["_id"] = self.client.incr(self._keys.benchmarks + ":seq")
            if not self.client.hsetnx(self._keys.benchmarks, codec.dumps(config.get("name")),
                                      codec.dumps(config)):
                raise DuplicateKeyError(f"Duplicate key error: benchmark name={config.get('name')}")
        return 1

    def fetch_benchmark(self, query_, selection=None):
        with self._guard():
            raw = self.client.hgetall(self._keys.benchmarks)
        docs = [codec.loads(v, self._keys.benchmarks) for v in raw.values()]
        docs.sort(key=lambda d: (str(type(d.get("_id"))), d.get("_id")))
        return [query.project(d, selection) for d in docs if query.matches(d, query_)]

    # -- experiments --------------------------------------------------------------------------
    def create_experiment(self, config, algo_locked=0, algo_state=None, algo_heartbeat=None):
        """Insert an experiment (unique name+version and _id) and initialise its lock."""
        with self._guard():
            generated = "_id" not in config
            while True:
                if generated:
                    config["_id"] = self.client.incr(self._keys.exp_seq)
                rc = self._insert_experiment(config)
                if rc == 1:
                    break
                if rc == -1:
                    raise DuplicateKeyError(
                        "Duplicate key error: index=name_1_version_1 "
                        f"value=({config.get('name')!r}, {config.get('version')!r})")
                if not generated:
                    raise DuplicateKeyError(f"Duplicate key error: index=_id_ value={config['_id']!r}")
            self.lock.initialize(self._ek(config["_id"]), config.get("algorithm", {}),
                                 state=algo_state, locked=bool(algo_locked))
        return 1

    def _insert_experiment(self, config) -> int:
        exp_token = token(config["_id"])
        return int(self.scripts.create_experiment(
            keys=[self._keys.exp_names, self._keys.exps, self._keys.exp(exp_token)],
            args=[codec.dumps([config.get("name"), config.get("version")]), exp_token,
                  *_flat_pairs(config)],
        ))

    def _experiment_tokens(self) -> list[str]:
        return [t.decode() for t in self.client.zrange(self._keys.exps, 0, -1)]

    def _read_experiments(self, tokens) -> list[dict]:
        pipe = self.client.pipeline(transaction=False)
        for exp_token in tokens:
            pipe.hgetall(self._keys.exp(exp_token))
        docs = []
        for exp_token, fields in zip(tokens, pipe.execute()):
            if fields:
                docs.append(codec.decode_fields(fields, self._keys.exp(exp_token)))
        return docs

    def fetch_experiments(self, query_, selection=None):
        """Experiments matching a Mongo-style query, in creation order."""
        query_ = query_ or {}
        with self._guard():
            if type(query_.get("_id")) in (int, str):  # exact key lookup
                docs = self._read_experiments([token(query_["_id"])])
            elif "_id" in query_ and query_["_id"] is None:
                return []
            else:
                docs = self._read_experiments(self._experiment_tokens())
        out = []
        for doc in docs:
            if query.matches(doc, query_):
                selected = query.project(doc, selection)
                if (selection or {}).get("_id", 1):  # _id unless explicitly excluded
                    selected["_id"] = doc["_id"]
                out.append(selected)
        return out

    def update_experiment(self, experiment=None, uid=None, where=None, **kwargs):
        """Top-level set of fields (nested dicts replaced whole); returns the count updated."""
        uid = get_uid(experiment, uid)
        kwargs.pop("_id", None)  # _id is immutable, and Oríon passes it back unchanged
        key = self._keys.exp(token(uid))
        with self._guard():
            return self.client.transaction(
                lambda pipe: self._update_experiment(pipe, key, where, kwargs), key,
                value_from_callable=True)

    def _update_experiment(self, pipe, key, where, changes) -> int:
        fields = pipe.hgetall(key)
        if not fields:
            pipe.multi()
            return 0
        doc = codec.decode_fields(fields, key)
        if not query.matches(doc, where):
            pipe.multi()
            return 0
        old_name = codec.dumps([doc.get("name"), doc.get("version")])
        new = _apply_set(doc, changes)
        new_name = codec.dumps([new.get("name"), new.get("version")])
        if new_name != old_name and pipe.hexists(self._keys.exp_names, new_name):
            raise DuplicateKeyError(f"Duplicate key error: index=name_1_version_1 value={new_name}")
        touched = {k: new[k] for k in {k.split(".")[0] for k in changes}}
        pipe.multi()
        if touched:
            pipe.hset(key, mapping=codec.encode_fields(touched))
        if new_name != old_name:
            pipe.hdel(self._keys.exp_names, old_name)
            pipe.hset(self._keys.exp_names, new_name, token(doc["_id"]))
        return 1

    def delete_experiment(self, experiment=None, uid=None):
        """Delete the experiment document (not its trials nor its lock, like Legacy)."""
        uid = get_uid(experiment, uid)
        exp_token = token(uid)
        key = self._keys.exp(exp_token)
        with self._guard():
            name, version = self.client.hmget(key, "name", "version")
            name_field = codec.dumps([codec.loads(name, key) if name else None,
                                      codec.loads(version, key) if version else None])
            return int(self.scripts.delete_experiment(
                keys=[self._keys.exp_names, self._keys.exps, key], args=[name_field, exp_token]))

    # -- trials: writes -----------------------------------------------------------------------
    def register_trial(self, trial):
        """Insert a new trial; ``DuplicateKeyError`` if (experiment, id) exists."""
        trial_id = trial.id  # hashes the params: once per call
        doc = to_doc(trial, trial_id)
        doc.setdefault("_id", trial_id)  # a truthy, unique _id, kept as id_override
        ek = self._ek(doc["experiment"])
        validate_status(doc["status"])
        trial_token = escape(trial_id)
        with self._guard():
            pairs, _ = codec.encode_trial(_checked(doc))
            rc = int(self.scripts.register_trial(
                keys=[ek.trial_prefix + trial_token, ek.all, ek.status(doc["status"]), ek.rev,
                      ek.changed, ek.request(new_request_id()), ek.floor],
                args=[trial_token, self._score_of(doc), REQUEST_TTL, CHANGE_LOG_KEEP, *pairs],
            ))
        if rc == -1:
            raise DuplicateKeyError(
                f"Duplicate key error: index=experiment_1_id_1 value=({doc['experiment']!r}, "
                f"{trial_id!r})")
        trial.id_override = doc["_id"]
        return trial

    @staticmethod
    def _score_of(doc) -> str:
        """Index score of a new trial: its heartbeat when reserved with one, its end time when
        completed with one (a copied or imported trial completed back then, not now: `orion-redis
        status` counts completions per minute from it), else server time."""
        if doc.get("status") == "reserved" and _epoch(doc.get("heartbeat")) is not None:
            return repr(_epoch(doc["heartbeat"]))
        if doc.get("status") == "completed" and _epoch(doc.get("end_time")) is not None:
            return repr(_epoch(doc["end_time"]))
        return "now"

    def reserve_trial(self, experiment):
        """Reserve one pending trial (new, suspended or interrupted) or return None."""
        ek = self._ek(get_uid(experiment))
        request = new_request_id()  # a retried EVALSHA carries it again: same trial back
        with self._guard():
            reply = self.scripts.reserve_trial(
                keys=[*(ek.status(s) for s in PENDING), ek.status("reserved"),
                      ek.request(request), ek.rev, ek.changed],
                args=[ek.trial_prefix, codec.dumps("reserved"), codec.dumps(_now()),
                      REQUEST_TTL],
            )
        if len(reply) < 3:
            return None
        it = iter(reply[1:])
        return self._trial(dict(zip(it, it)), ek.trial_prefix + reply[0].decode())

    def _patch(self, ek, trial_id, expected, fields, new_status=None, score="") -> int:
        """One update_trial.lua call: 1 updated, 0 status differs, -1 no such trial.
        ``fields``: a document, or ready (pairs, trims) for our own fixed fields."""
        trial_token = escape(trial_id)
        pairs, trims = fields if type(fields) is tuple else codec.encode_trial(_checked(fields))
        return int(self.scripts.update_trial(
            keys=[ek.trial_prefix + trial_token, ek.status(expected),
                  ek.status(new_status or expected),
                  ek.rev, ek.changed, ek.request(new_request_id())],
            args=[trial_token, codec.dumps(expected),
                  codec.dumps(new_status) if new_status else "", score, REQUEST_TTL,
                  ";".join(trims), *pairs],
        ))

    def set_trial_status(self, trial, status, heartbeat=None, was=None):
        """Compare-and-set the status (``was`` defaults to ``trial.status``). An explicit
        heartbeat datetime is stored and scored as given (as ``register_trial`` does: a caller
        may age a trial); anything else means now, on the server's clock."""
        score = "now"
        if isinstance(heartbeat, datetime.datetime):
            score = repr(_epoch(heartbeat))
        else:
            heartbeat = _now()  # Oríon sometimes passes an int here
        was = was or trial.status
        validate_status(status)
        validate_status(was)
        ek = self._ek(trial.experiment)
        trial_id = trial.id
        with self._guard():
            fields = ["status", codec.dumps(status), "heartbeat", codec.dumps(heartbeat)], ()
            rc = self._patch(ek, trial_id, was, fields, new_status=status, score=score)
        if rc != 1:
            raise FailedUpdate(
                f"trial {trial_id} is not {was!r} in storage" if rc == 0 else
                f"trial {trial_id} does not exist in storage")
        trial.status = status

    def update_heartbeat(self, trial):
        """Refresh the heartbeat of a reserved trial; 0 (stop the pacemaker) otherwise."""
        ek = self._ek(trial.experiment)
        with self._guard():
            fields = ["heartbeat", codec.dumps(_now())], ()
            return max(0, self._patch(ek, trial.id, "reserved", fields, score="now"))

    def push_trial_results(self, trial):
        """Write the whole trial, only while it is reserved; ``FailedUpdate`` otherwise."""
        trial_id = trial.id  # hashes the params: once per call
        doc = to_doc(trial, trial_id)
        ek = self._ek(trial.experiment)
        with self._guard():
            rc = self._patch(ek, trial_id, "reserved", doc, new_status=doc.get("status"))
        if rc != 1:
            raise FailedUpdate(f"trial {trial_id} is not reserved in storage")
        return rc

    def update_trial(self, trial=None, uid=None, experiment_uid=None, where=None, **kwargs):
        """Set fields of one trial if it matches ``where``; returns 1 or 0."""
        trial_uid, experiment_uid = get_trial_uid_and_exp(trial, uid, experiment_uid)
        ek = self._ek(experiment_uid)
        # like Legacy, the trial's own id and experiment replace those of ``where``
        where = {k: v for k, v in (where or {}).items() if k not in ("id", "experiment")}
        with self._guard():
            docs = self._read_trials(ek, [escape(trial_uid)])
            if not docs or not query.matches(docs[0], where):
                return 0
            return self._apply_update(ek, docs[0], kwargs)

    def update_trials(self, experiment=None, uid=None, where=None, **kwargs):
        """Set fields of every trial matching ``where``; returns the count updated."""
        uid = get_uid(experiment, uid)
        ek = self._ek(uid)
        with self._guard():
            return sum(self._apply_update(ek, doc, kwargs)
                       for doc in self._matching_docs(ek, where))

    def _apply_update(self, ek, doc, changes) -> int:
        new_status = changes.get("status")
        if "status" in changes and new_status is None:
            raise ValueError("status None cannot be stored: give one of "
                             f"{Trial.allowed_stati} (Legacy would store None and then "
                             "never reserve nor count the trial)")
        if new_status is not None:
            validate_status(new_status)
        new = _apply_set(doc, changes)
        touched = {k: new[k] for k in {k.split(".")[0] for k in changes}}
        score = ""
        if "heartbeat" in changes and _epoch(changes["heartbeat"]) is not None:
            score = repr(_epoch(changes["heartbeat"]))  # lets tests age a reserved trial
        return max(0, self._patch(ek, doc["id"], doc["status"], touched, new_status, score))

    def delete_trials(self, experiment=None, uid=None, where=None):
        """Delete the trials matching ``where``; returns the count deleted."""
        uid = get_uid(experiment, uid)
        ek = self._ek(uid)
        with self._guard():
            if where:
                tokens = [escape(d["id"]) for d in self._matching_docs(ek, where)]
            else:
                tokens = [t.decode() for t in self.client.zrange(ek.all, 0, -1)]
            deleted = 0
            for start in range(0, len(tokens), DELETE_BATCH):
                batch = tokens[start:start + DELETE_BATCH]
                deleted += int(self.scripts.delete_trials(
                    keys=[ek.all, *(ek.status(s) for s in STATUSES), ek.rev, ek.changed,
                          *(ek.trial_prefix + t for t in batch)],
                    args=batch,
                ))
        return deleted

    # -- trials: reads ------------------------------------------------------------------------
    def _trial(self, fields: dict, key: str) -> Trial:
        doc = codec.decode_trial_fields(fields, key)
        try:
            return build_trial(doc)
        except (TypeError, AttributeError, ValueError) as exc:
            raise CorruptData(f"{key} does not hold an Oríon trial ({exc}). Remove the key or "
                              "use another prefix.") from None

    def _read_trials(self, ek: ExperimentKeys, tokens, then=None, meanwhile=None) -> list:
        """Documents of the existing trials among ``tokens`` (one script call per chunk),
        mapped chunk by chunk through ``then(docs) -> list`` if given. ``meanwhile()`` runs
        once the calls are sent, while Redis works on the first one (again if streaming fails
        and the plain path takes over: keep it idempotent)."""
        then = then or (lambda docs: docs)
        chunks = _chunks(tokens)
        # Redis Cluster (topologies): redis-py refuses EVALSHA inside a cluster pipeline, so
        # the chunks go one call each there (all in the experiment's slot, one node anyway).
        cluster = _is_cluster(self.client)
        if len(chunks) > 1 and not cluster and self._opts.scheme != "fakeredis":
            streamed = self._streamed_docs(ek, chunks, then, meanwhile)
            if streamed is not None:
                return streamed
        if meanwhile is not None:
            meanwhile()
        pipe = None if cluster else self.client.pipeline(transaction=False)
        replies = [self.scripts.fetch_docs(keys=[ek.trial_prefix + t for t in chunk], client=pipe)
                   for chunk in chunks]
        if pipe is not None:
            replies = pipe.execute() if tokens else []
        return then(self._decode_docs(ek, replies, tokens))

    def _streamed_docs(self, ek: ExperimentKeys, chunks, then, meanwhile) -> list | None:
        """The chunks' documents, each chunk parsed (and passed to ``then``) while Redis
        assembles the next: a cold 10k-trial fetch spends about as long in Redis as here, and
        the two overlap on 2 cores. None: streaming failed, take the plain path."""
        parsed = run_streamed(
            self.client, self.scripts.fetch_docs,
            [[ek.trial_prefix + t for t in chunk] for chunk in chunks],
            lambda i, reply: then(self._decode_docs(ek, [reply], chunks[i])), meanwhile)
        return None if parsed is None else [item for items in parsed for item in items]

    def _decode_docs(self, ek: ExperimentKeys, texts, tokens) -> list[dict]:
        """Parse the JSON objects that fetch_docs/fetch_changes joined, in one json call."""
        texts = [t for t in texts if t]
        if not texts:
            return []
        try:
            with no_gc():
                return [codec.restore_id(doc)
                        for doc in codec.loads(b"[" + b",".join(texts) + b"]", ek.all)]
        except CorruptData:  # find and name the culprit
            for trial_token in tokens:
                key = ek.trial_prefix + trial_token
                codec.decode_trial_fields(self.client.hgetall(key), key)
            raise

    def _all_docs(self, ek: ExperimentKeys) -> "_ExperimentCache":
        """Every trial of the experiment, refreshed from what changed since the last call.

        Every trial write bumps ``rev`` and records the trial in ``changed`` with that rev, so a
        repeated fetch reads only the trials written since (deleted ones leave a tombstone), in
        one fetch_changes.lua call.
        """
        cache = self._cache.get(ek.exp_token)
        if cache is not None:
            reply = self.scripts.fetch_changes(keys=[ek.rev, ek.changed, ek.all, ek.floor],
                                               args=[cache.rev, ek.trial_prefix, CHANGES_MAX])
            rev = int(reply[0])
            if len(reply) == 1:
                return cache
            count = int(reply[1])
            if count >= 0:
                tokens = [t.decode() for t in reply[2:2 + count]]
                orders = {t: float(o) if o else None
                          for t, o in zip(tokens, reply[2 + count:2 + 2 * count])}
                cache.update(tokens, _built(self._decode_docs(ek, [reply[-1]], tokens)), rev,
                             orders)
                return cache
            # too many changes, or the counter went back: reload everything
        with no_gc():  # every object made here lives on: GC passes would only cost
            pipe = self.client.pipeline(transaction=True)
            pipe.get(ek.rev)
            # raw: redis-py's own WITHSCORES parsing re-formats every score (RESP3 -> RESP2
            # shape), 150 ms for 10k trials
            pipe.execute_command("ZRANGE", ek.all, 0, -1, "WITHSCORES")
            raw_rev, pairs = pipe.execute()
            pairs = _score_pairs(pairs)
            tokens = [t.decode() for t, _ in pairs]
            orders = {}
            cache = self._cache[ek.exp_token] = _ExperimentCache()
            built = self._read_trials(
                ek, tokens, then=_built,
                meanwhile=lambda: orders.update(zip(tokens, map(float, (s for _, s in pairs)))))
            cache.update(tokens, built, int(raw_rev or 0), orders)
        return cache

    def _tokens_for(self, ek: ExperimentKeys, where: dict | None) -> list[str]:
        """Candidate trial tokens for ``where``, from the status indexes when it allows."""
        if isinstance((where or {}).get("id"), str):
            return [escape(where["id"])]
        statuses = _indexed_statuses(where)
        if statuses is None:
            return [t.decode() for t in self.client.zrange(ek.all, 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for s in statuses:
            pipe.zrange(ek.status(s), 0, -1)
        return [t.decode() for batch in pipe.execute() for t in batch]

    def _matching_docs(self, ek: ExperimentKeys, where: dict | None) -> list[dict]:
        where = {k: v for k, v in (where or {}).items() if k != "experiment"} if where else None
        docs = self._read_trials(ek, self._tokens_for(ek, where))
        return [d for d in docs if query.matches(d, where)]

    def _build(self, docs) -> list[Trial]:
        with no_gc():
            return self._build_trials(docs)

    def _build_trials(self, docs) -> list[Trial]:
        built = []
        for doc in docs:
            try:
                built.append(build_trial(doc))
            except (TypeError, AttributeError, ValueError) as exc:
                raise _not_a_trial(doc, exc) from None
        built.sort(key=sort_key)
        return built

    def fetch_trials(self, experiment=None, uid=None, where=None):
        """All trials of an experiment matching ``where``, sorted by submit_time."""
        uid = get_uid(experiment, uid)
        ek = self._ek(uid)
        # like Legacy, the experiment of ``where`` is replaced by ``uid``
        where = {k: v for k, v in (where or {}).items() if k != "experiment"}
        with self._guard():
            if _indexed(where):
                return self._build(self._matching_docs(ek, where))
            cache = self._all_docs(ek)
        with no_gc():
            if not where:
                return [clone_trial(trial) for trial in cache.ordered()]
            return [clone_trial(trial) for trial, doc in cache.ordered_pairs()
                    if query.matches(doc, where)]

    def get_trial(self, trial=None, uid=None, experiment_uid=None):
        trial_uid, experiment_uid = get_trial_uid_and_exp(trial, uid, experiment_uid)
        if not isinstance(trial_uid, str):  # trial ids are strings: Legacy finds nothing
            return None
        with self._guard():
            docs = self._read_trials(self._ek(experiment_uid), [escape(trial_uid)])
        return self._build(docs)[0] if docs else None

    def retrieve_result(self, trial, *args, **kwargs):
        """Results already sit on the trial object (as with Legacy)."""
        return trial

    def fetch_lost_trials(self, experiment):
        """Reserved trials without a heartbeat for 5 x worker.heartbeat, on the server clock."""
        ek = self._ek(get_uid(experiment))
        threshold = orion.core.config.worker.heartbeat * 5
        with self._guard():
            tokens = self.scripts.lost_trials(keys=[ek.status("reserved")], args=[threshold])
            docs = self._read_trials(ek, [t.decode() for t in tokens])
        return self._build([d for d in docs if d.get("status") == "reserved"])

    def _by_statuses(self, experiment, statuses) -> list[Trial]:
        ek = self._ek(get_uid(experiment))
        with self._guard():
            return self._build(self._matching_docs(ek, {"status": {"$in": list(statuses)}}))

    def fetch_pending_trials(self, experiment):
        return self._by_statuses(experiment, PENDING)

    def fetch_noncompleted_trials(self, experiment):
        return self._by_statuses(experiment, [s for s in STATUSES if s != "completed"])

    def fetch_trials_by_status(self, experiment, status):
        return self._by_statuses(experiment, [status])

    def _count(self, experiment, status) -> int:
        with self._guard():
            return int(self.client.zcard(self._ek(get_uid(experiment)).status(status)))

    def count_completed_trials(self, experiment):
        return self._count(experiment, "completed")

    def count_broken_trials(self, experiment):
        return self._count(experiment, "broken")

    # -- algorithm lock -----------------------------------------------------------------------
    def initialize_algorithm_lock(self, experiment_id, algorithm_config):
        """Create the lock record if absent; returns 1 if created, 0 if it existed."""
        with self._guard():
            return self.lock.initialize(self._ek(experiment_id), algorithm_config)

    def release_algorithm_lock(self, experiment=None, uid=None, new_state=None):
        """Release the lock whoever holds it (``orion db release``); 1 if there is a lock."""
        uid = get_uid(experiment, uid)
        with self._guard():
            return self.lock.force_release(self._ek(uid), new_state)

    def get_algorithm_lock_info(self, experiment=None, uid=None):
        uid = get_uid(experiment, uid)
        with self._guard():
            return self.lock.info(self._ek(uid))

    def delete_algorithm_lock(self, experiment=None, uid=None):
        uid = get_uid(experiment, uid)
        with self._guard():
            return self.lock.delete(self._ek(uid))

    @contextlib.contextmanager
    def acquire_algorithm_lock(self, experiment=None, uid=None, timeout=60, retry_interval=1,
                               backlog=False):
        """Hold the algorithm lock (TTL ``lock_ttl``, renewed while held). ``backlog``: the
        held state also carries the trials waiting to be observed (see ``lock.Held``)."""
        uid = get_uid(experiment, uid)
        with self._guard(), self.lock.hold(self._ek(uid), timeout, retry_interval,
                                           backlog=backlog) as locked:
            yield locked

    # -- batched observation ------------------------------------------------------------------
    def observe_later(self, experiment, trial) -> int:
        """Record ``trial`` for the next hold to observe; returns the backlog's length."""
        with self._guard():
            return self.lock.observe_later(self._ek(get_uid(experiment)), trial)

    def backlog_length(self, experiment=None, uid=None) -> int:
        """Trials completed or released but not yet observed by the algorithm."""
        with self._guard():
            return self.lock.backlog_length(self._ek(get_uid(experiment, uid)))


def _indexed_statuses(where) -> list | None:
    """The statuses a ``where`` restricts to, when a status index can answer it."""
    status = (where or {}).get("status")
    if isinstance(status, str):
        return [status]
    if isinstance(status, dict) and set(status) == {"$in"} and \
            all(isinstance(s, str) for s in status["$in"]):
        return list(dict.fromkeys(status["$in"]))  # a repeated status must not read twice
    return None


def _indexed(where) -> bool:
    return isinstance((where or {}).get("id"), str) or _indexed_statuses(where) is not None


class _ExperimentCache:
    """Trial objects of one experiment, as of revision ``rev`` (callers get clones).

    ``order`` holds each trial's registration rank (its score in ``{P:E}:all``): trials with
    equal submit_time keep the order an uncached read (and Legacy) gives them. Documents are
    rebuilt from the trials only when a ``where`` query needs them: keeping the fetched ones
    would double the objects a cold fetch leaves for the garbage collector (+15% of its time)
    and the memory of the cache."""

    __slots__ = ("rev", "trials", "ids", "order", "_docs", "_ordered")

    def __init__(self):
        self.rev = -1
        self.trials: dict[str, Trial] = {}
        self.ids: dict[str, str] = {}  # token -> the trial's stored id, for its document
        self.order: dict[str, float] = {}
        self._docs: dict[str, dict] = {}
        self._ordered = None

    def update(self, tokens, built, rev, orders):
        """``built``: (token, id, trial) of the existing trials among ``tokens`` (_built)."""
        with no_gc():
            self._update(tokens, built, rev, orders)

    def _update(self, tokens, built, rev, orders):
        self.order.update((t, o) for t, o in orders.items() if o is not None)
        for trial_token in tokens:  # changed or deleted: forget, then re-add what still exists
            self.trials.pop(trial_token, None)
            self.ids.pop(trial_token, None)
            self._docs.pop(trial_token, None)
        for trial_token, trial_id, trial in built:
            self.trials[trial_token] = trial
            self.ids[trial_token] = trial_id
        for trial_token in tokens:
            if trial_token not in self.trials:
                self.order.pop(trial_token, None)
        self.rev = rev
        self._ordered = None

    def _sorted(self) -> tuple[list, list]:
        """(tokens, trials) by submit_time, ties in registration order."""
        if self._ordered is None:
            order, trials = self.order.get, self.trials
            tokens = sorted(trials, key=lambda t: order(t, 0.0))
            tokens.sort(key=lambda t: sort_key(trials[t]))  # stable: ties keep registration
            self._ordered = (tokens, [trials[t] for t in tokens])
        return self._ordered

    def ordered(self) -> list:
        return self._sorted()[1]

    def ordered_pairs(self):
        """(trial, document) in order; documents built once, on demand."""
        docs, ids = self._docs, self.ids
        for trial_token, trial in zip(*self._sorted()):
            doc = docs.get(trial_token)
            if doc is None:
                doc = docs[trial_token] = to_doc(trial, ids[trial_token])
            yield trial, doc


def _chunks(tokens: list) -> list[list]:
    """Chunks of at most FETCH_CHUNK tokens, at least 4 from 600 tokens on (so a streamed
    read overlaps Redis and this process), the last one small: it is the only one parsed
    after Redis is done."""
    size = max(STREAM_CHUNK_MIN, min(FETCH_CHUNK, -(-len(tokens) // 4)))
    if len(tokens) <= size:
        return [tokens] if tokens else []
    body = len(tokens) - STREAM_CHUNK_MIN
    return ([tokens[i:min(i + size, body)] for i in range(0, body, size)]
            + [tokens[body:]])


def _built(docs) -> list:
    """(token, id, Trial) for each document (what the cache keeps)."""
    out = []
    for doc in docs:
        try:
            trial_id = doc["id"]
            out.append((escape(trial_id), trial_id, build_trial(doc)))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise _not_a_trial(doc, exc) from None
    return out


def _not_a_trial(doc: dict, exc: Exception) -> CorruptData:
    return CorruptData(f"a trial of experiment {doc.get('experiment')!r} is not an Oríon trial "
                       f"({exc}).")


def _score_pairs(reply) -> list:
    """(member, score) pairs of a raw ZRANGE WITHSCORES reply: RESP3 nests them, RESP2 is flat."""
    if reply and isinstance(reply[0], list):
        return reply
    return list(zip(reply[::2], reply[1::2]))


def _is_cluster(client) -> bool:
    """Whether ``client`` is a ``redis.cluster.RedisCluster`` (redis+cluster:// URIs)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _apply_set(doc: dict, changes: dict) -> dict:
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
