"""The write path of trials: one Lua script call per state change (register, reserve, the
compare-and-set of ``update_trial.lua``, delete), with the request ids that make a retried
call idempotent. ``storage.Redis`` validates, raises Oríon's exceptions and calls these inside
its error boundary."""

from __future__ import annotations

from orion.core.worker.trial import Trial, validate_status

from orion_track_redis import codec
from orion_track_redis.keys import (
    CHANGE_LOG_KEEP,
    PENDING,
    REQUEST_TTL,
    STATUSES,
    ExperimentKeys,
    escape,
    new_request_id,
)
from orion_track_redis.store import query

DELETE_BATCH = 500  # trials per delete_trials.lua call: bounds how long one call blocks Redis


def score_of(doc: dict) -> str:
    """Index score of a new trial: its heartbeat when reserved with one, its end time when
    completed with one (a copied or imported trial completed back then, not now: `orion-redis
    status` counts completions per minute from it), else server time."""
    if doc.get("status") == "reserved" and codec.epoch(doc.get("heartbeat")) is not None:
        return repr(codec.epoch(doc["heartbeat"]))
    if doc.get("status") == "completed" and codec.epoch(doc.get("end_time")) is not None:
        return repr(codec.epoch(doc["end_time"]))
    return "now"


class TrialWriter:
    """Trial writes through ``client()``/``scripts()`` (the storage's lazy, fork-aware
    accessors)."""

    def __init__(self, client, scripts):
        self._client = client
        self._scripts = scripts

    def register(self, ek: ExperimentKeys, doc: dict, trial_token: str) -> int:
        """1 registered, -1 a trial with this id exists."""
        pairs, _ = codec.encode_trial(codec.checked(doc))
        return int(
            self._scripts().register_trial(
                trial=ek.trial_prefix + trial_token,
                all=ek.all,
                status=ek.status(doc["status"]),
                rev=ek.rev,
                changed=ek.changed,
                request=ek.request(new_request_id()),
                floor=ek.floor,
                token=trial_token,
                score=score_of(doc),
                request_ttl=REQUEST_TTL,
                changed_keep=CHANGE_LOG_KEEP,
                fields=pairs,
            )
        )

    def reserve(self, ek: ExperimentKeys, lease: float, holder: str) -> list:
        """reserve_trial.lua's reply: [token, field, value, ...] of the reserved trial, or
        shorter when no trial is pending. The trial gets a lease of ``lease`` seconds (0: none)
        and ``holder`` (lease.Holder.record) as its holder."""
        request = new_request_id()  # a retried EVALSHA carries it again: same trial back
        new, suspended, interrupted = (ek.status(s) for s in PENDING)
        return self._scripts().reserve_trial(
            new=new,
            suspended=suspended,
            interrupted=interrupted,
            reserved=ek.status("reserved"),
            request=ek.request(request),
            rev=ek.rev,
            changed=ek.changed,
            leases=ek.leases,
            holders=ek.holders,
            lease_clock=ek.lease_clock,
            trial_prefix=ek.trial_prefix,
            status=codec.dumps("reserved"),
            now=codec.dumps(codec.utcnow()),
            request_ttl=REQUEST_TTL,
            lease=lease,
            holder=holder,
        )

    def patch(
        self,
        ek: ExperimentKeys,
        trial_id,
        expected: str,
        fields,
        new_status=None,
        score: str = "",
        holder: str = "",
        record: bytes = b"",
    ) -> int:
        """One update_trial.lua call: 1 updated, 0 status differs (or ``holder``, when given,
        does not hold it), -1 no such trial. ``fields``: a document, or ready (pairs, trims)
        for our own fixed fields. ``record``: the trial encoded for the algorithm's backlog,
        appended in the same script (batched observation), or empty."""
        trial_token = escape(trial_id)
        if type(fields) is not tuple:
            fields = codec.encode_trial(codec.checked(fields))
        pairs, trims = fields
        return int(
            self._scripts().update_trial(
                trial=ek.trial_prefix + trial_token,
                was_index=ek.status(expected),
                new_index=ek.status(new_status or expected),
                rev=ek.rev,
                changed=ek.changed,
                request=ek.request(new_request_id()),
                leases=ek.leases,
                holders=ek.holders,
                recoveries=ek.recoveries,
                recovered=ek.recovered,
                backlog=ek.unobserved,
                token=trial_token,
                was=codec.dumps(expected),
                status=codec.dumps(new_status) if new_status else "",
                score=score,
                request_ttl=REQUEST_TTL,
                trims=";".join(trims),
                holder=holder,
                record=record,
                fields=pairs,
            )
        )

    def apply_update(self, ek: ExperimentKeys, doc: dict, changes: dict) -> int:
        """Mongo ``$set`` of ``changes`` on a stored trial, if its status did not change
        meanwhile; 1 or 0."""
        new_status = changes.get("status")
        if "status" in changes and new_status is None:
            raise ValueError(
                "status None cannot be stored: give one of "
                f"{Trial.allowed_stati} (Legacy would store None and then "
                "never reserve nor count the trial)"
            )
        if new_status is not None:
            validate_status(new_status)
        new = query.apply_set(doc, changes)
        touched = {k: new[k] for k in {k.split(".")[0] for k in changes}}
        score = ""
        if "heartbeat" in changes and codec.epoch(changes["heartbeat"]) is not None:
            score = repr(codec.epoch(changes["heartbeat"]))  # lets tests age a reserved trial
        return max(0, self.patch(ek, doc["id"], doc["status"], touched, new_status, score))

    def delete(self, ek: ExperimentKeys, tokens: list[str] | None) -> int:
        """Delete these trials (None: every trial of the experiment); the count deleted."""
        if tokens is None:
            tokens = [t.decode() for t in self._client().zrange(ek.all, 0, -1)]
        deleted = 0
        for start in range(0, len(tokens), DELETE_BATCH):
            batch = tokens[start : start + DELETE_BATCH]
            deleted += int(
                self._scripts().delete_trials(
                    all=ek.all,
                    **{s: ek.status(s) for s in STATUSES},
                    rev=ek.rev,
                    changed=ek.changed,
                    trials=[ek.trial_prefix + t for t in batch],
                    tokens=batch,
                )
            )
        return deleted
