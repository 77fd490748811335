"""The read path of trials: chunked and streamed ``fetch_docs`` calls, the per-process trial
cache kept up to date from the change log (``fetch_changes``), and Trial building.

``storage.Redis`` owns one ``TrialReader``; nothing here writes to Redis.
"""

from __future__ import annotations

from orion.core.worker.trial import Trial

from orion_track_redis import codec
from orion_track_redis.errors import CorruptData
from orion_track_redis.gcpause import no_gc
from orion_track_redis.keys import CHANGE_LOG_KEEP, ExperimentKeys, escape
from orion_track_redis.store import query
from orion_track_redis.store.scripts import run_streamed
from orion_track_redis.store.trials import build as build_trial
from orion_track_redis.store.trials import sort_key, to_doc

# trials per fetch_docs call: bounds how long one call blocks Redis (3 ms). Larger chunks cost
# Redis more per trial (its Lua heap grows: 10k trials take 95 ms of Redis time in chunks of
# 1,000, 82 ms in chunks of 300), smaller ones add a call's overhead each.
FETCH_CHUNK = 300
STREAM_CHUNK_MIN = 150  # the smallest chunk of a streamed read (and its last one)
CHANGES_MAX = CHANGE_LOG_KEEP  # a reader more changes behind reloads everything


class TrialReader:
    """Reads trials of any experiment through ``client()``/``scripts()`` (the storage's lazy,
    fork-aware accessors); keeps one ``ExperimentCache`` per experiment for ``all``."""

    def __init__(self, client, scripts, fake: bool):
        self._client = client
        self._scripts = scripts
        self._fake = fake  # fakeredis: no streaming (it has no real socket)
        self.caches: dict[str, ExperimentCache] = {}

    def trial(self, fields: dict, key: str) -> Trial:
        doc = codec.decode_trial_fields(fields, key)
        try:
            return build_trial(doc)
        except (TypeError, AttributeError, ValueError) as exc:
            raise CorruptData(
                f"{key} does not hold an Oríon trial ({exc}). Remove the key or use another prefix."
            ) from None

    def read(self, ek: ExperimentKeys, tokens, then=None, meanwhile=None) -> list:
        """Documents of the existing trials among ``tokens`` (one script call per chunk),
        mapped chunk by chunk through ``then(docs) -> list`` if given. ``meanwhile()`` runs
        once the calls are sent, while Redis works on the first one (again if streaming fails
        and the plain path takes over: keep it idempotent)."""
        then = then or (lambda docs: docs)
        parts = chunks(tokens)
        # Redis Cluster (topologies): redis-py refuses EVALSHA inside a cluster pipeline, so
        # the chunks go one call each there (all in the experiment's slot, one node anyway).
        client = self._client()
        cluster = is_cluster(client)
        if len(parts) > 1 and not cluster and not self._fake:
            streamed = self._streamed_docs(ek, parts, then, meanwhile)
            if streamed is not None:
                return streamed
        if meanwhile is not None:
            meanwhile()
        pipe = None if cluster else client.pipeline(transaction=False)
        fetch_docs = self._scripts().fetch_docs
        replies = [
            fetch_docs(trials=[ek.trial_prefix + t for t in chunk], client=pipe) for chunk in parts
        ]
        if pipe is not None:
            replies = pipe.execute() if tokens else []
        return then(self._decode_docs(ek, replies, tokens))

    def _streamed_docs(self, ek: ExperimentKeys, parts, then, meanwhile) -> list | None:
        """The chunks' documents, each chunk parsed (and passed to ``then``) while Redis
        assembles the next: a cold 10k-trial fetch spends about as long in Redis as here, and
        the two overlap on 2 cores. None: streaming failed, take the plain path."""
        parsed = run_streamed(
            self._client(),
            self._scripts().fetch_docs.script,  # KEYS: the trial hashes; no ARGV
            [[ek.trial_prefix + t for t in chunk] for chunk in parts],
            lambda i, reply: then(self._decode_docs(ek, [reply], parts[i])),
            meanwhile,
        )
        return None if parsed is None else [item for items in parsed for item in items]

    def _decode_docs(self, ek: ExperimentKeys, texts, tokens) -> list[dict]:
        """Parse the JSON objects that fetch_docs/fetch_changes joined, in one json call."""
        texts = [t for t in texts if t]
        if not texts:
            return []
        try:
            with no_gc():
                return [
                    codec.restore_id(doc)
                    for doc in codec.loads(b"[" + b",".join(texts) + b"]", ek.all)
                ]
        except CorruptData:  # find and name the culprit
            for trial_token in tokens:
                key = ek.trial_prefix + trial_token
                codec.decode_trial_fields(self._client().hgetall(key), key)
            raise

    def all(self, ek: ExperimentKeys) -> ExperimentCache:
        """Every trial of the experiment, refreshed from what changed since the last call.

        Every trial write bumps ``rev`` and records the trial in ``changed`` with that rev, so a
        repeated fetch reads only the trials written since (deleted ones leave a tombstone), in
        one fetch_changes.lua call.
        """
        cache = self.caches.get(ek.exp_token)
        if cache is not None:
            reply = self._scripts().fetch_changes(
                rev=ek.rev,
                changed=ek.changed,
                all=ek.all,
                floor=ek.floor,
                cached_rev=cache.rev,
                trial_prefix=ek.trial_prefix,
                max_changes=CHANGES_MAX,
            )
            rev = int(reply[0])
            if len(reply) == 1:
                return cache
            count = int(reply[1])
            if count >= 0:
                tokens = [t.decode() for t in reply[2 : 2 + count]]
                orders = {
                    t: float(o) if o else None
                    for t, o in zip(tokens, reply[2 + count : 2 + 2 * count])
                }
                cache.update(
                    tokens, _built(self._decode_docs(ek, [reply[-1]], tokens)), rev, orders
                )
                return cache
            # too many changes, or the counter went back: reload everything
        with no_gc():  # every object made here lives on: GC passes would only cost
            pipe = self._client().pipeline(transaction=True)
            pipe.get(ek.rev)
            # raw: redis-py's own WITHSCORES parsing re-formats every score (RESP3 -> RESP2
            # shape), 150 ms for 10k trials
            pipe.execute_command("ZRANGE", ek.all, 0, -1, "WITHSCORES")
            raw_rev, pairs = pipe.execute()
            pairs = score_pairs(pairs)
            tokens = [t.decode() for t, _ in pairs]
            orders = {}
            cache = self.caches[ek.exp_token] = ExperimentCache()
            built = self.read(
                ek,
                tokens,
                then=_built,
                meanwhile=lambda: orders.update(zip(tokens, map(float, (s for _, s in pairs)))),
            )
            cache.update(tokens, built, int(raw_rev or 0), orders)
        return cache

    def _tokens_for(self, ek: ExperimentKeys, where: dict | None) -> list[str]:
        """Candidate trial tokens for ``where``, from the status indexes when it allows."""
        if where and isinstance(where.get("id"), str):
            return [escape(where["id"])]
        statuses = _indexed_statuses(where)
        if statuses is None:
            return [t.decode() for t in self._client().zrange(ek.all, 0, -1)]
        pipe = self._client().pipeline(transaction=False)
        for s in statuses:
            pipe.zrange(ek.status(s), 0, -1)
        return [t.decode() for batch in pipe.execute() for t in batch]

    def matching(self, ek: ExperimentKeys, where: dict | None) -> list[dict]:
        where = {k: v for k, v in (where or {}).items() if k != "experiment"} if where else None
        docs = self.read(ek, self._tokens_for(ek, where))
        return [d for d in docs if query.matches(d, where)]

    def build(self, docs) -> list[Trial]:
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


def _indexed_statuses(where) -> list | None:
    """The statuses a ``where`` restricts to, when a status index can answer it."""
    status = (where or {}).get("status")
    if isinstance(status, str):
        return [status]
    if (
        isinstance(status, dict)
        and set(status) == {"$in"}
        and all(isinstance(s, str) for s in status["$in"])
    ):
        return list(dict.fromkeys(status["$in"]))  # a repeated status must not read twice
    return None


def indexed(where) -> bool:
    return isinstance((where or {}).get("id"), str) or _indexed_statuses(where) is not None


class ExperimentCache:
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


def count_by_status(client, ek: ExperimentKeys, statuses) -> list[int]:
    """How many trials of the experiment are in each of ``statuses``: one ZCARD per index,
    in one round trip."""
    pipe = client.pipeline(transaction=False)
    for status in statuses:
        pipe.zcard(ek.status(status))
    return [int(n) for n in pipe.execute()]


def chunks(tokens: list) -> list[list]:
    """Chunks of at most FETCH_CHUNK tokens, at least 4 from 600 tokens on (so a streamed
    read overlaps Redis and this process), the last one small: it is the only one parsed
    after Redis is done."""
    size = max(STREAM_CHUNK_MIN, min(FETCH_CHUNK, -(-len(tokens) // 4)))
    if len(tokens) <= size:
        return [tokens] if tokens else []
    body = len(tokens) - STREAM_CHUNK_MIN
    return [tokens[i : min(i + size, body)] for i in range(0, body, size)] + [tokens[body:]]


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
    return CorruptData(
        f"a trial of experiment {doc.get('experiment')!r} is not an Oríon trial ({exc})."
    )


def score_pairs(reply) -> list:
    """(member, score) pairs of a raw ZRANGE WITHSCORES reply: RESP3 nests them, RESP2 is flat."""
    if reply and isinstance(reply[0], list):
        return reply
    return list(zip(reply[::2], reply[1::2]))


def is_cluster(client) -> bool:
    """Whether ``client`` is a ``redis.cluster.RedisCluster`` (redis+cluster:// URIs)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)
