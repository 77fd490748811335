"""The only place where Redis key names are built.

P is the prefix (default ``orion``); E is an experiment token, T a trial token (see
:func:`token`). Every key that one script touches carries the same Redis Cluster hash tag, so the
same scripts run on standalone, Sentinel and Cluster.

==============================  ========  ==================================================
key                             type      content
==============================  ========  ==================================================
``{P}:schema``                  string    schema version of the data under this prefix
``{P}:exp_seq``                 string    counter that generates experiment ids (1, 2, ...)
``{P}:exps``                    zset      E -> creation order (the list of experiments)
``{P}:exp_names``               hash      JSON [name, version] -> E (uniqueness index)
``{P}:exp:E``                   hash      experiment document, one JSON value per field
``{P}:benchmarks``              hash      JSON name -> JSON benchmark document
``{P:E}:rev``                   string    revision counter, bumped by every trial write
``{P:E}:all``                   zset      T -> registration order (all trials)
``{P:E}:changed``               zset      T -> rev of its last write (deleted: tombstone);
                                          trimmed to the newest CHANGE_LOG_KEEP entries
``{P:E}:floor``                 string    highest rev trimmed off ``changed``
``{P:E}:s:<status>``            zset      T -> server time of the last transition/heartbeat
``{P:E}:t:T``                   hash      trial document, one JSON value per field, list
                                          elements in fields of their own (codec.encode_trial)
``{P:E}:req:<request id>``      string    result of a write request, kept REQUEST_TTL seconds
                                          (a retried call returns it instead of re-applying)
``{P:E}:lock``                  hash      algorithm lock record: configuration, state (the
                                          snapshot), fence, ticket (last arrival ticket given
                                          to a waiter), epoch, version, snapver, logbytes
``{P:E}:lock:log``              list      deltas of the algorithm state since the snapshot,
                                          oldest first (state/delta.py, store/lock.py)
``{P:E}:lock:holder``           string    "<fence>:<owner>" of the holder, with a PX TTL
``{P:E}:lock:queue``            zset      waiting owner -> arrival ticket (FIFO hand-off)
``{P:E}:lock:leases``           zset      waiting owner -> end of its lease (server ms)
``{P:E}:lock:wake:<owner>``     list      token pushed to wake that waiter (its turn came);
                                          expires by itself
``{P:E}:unobserved``            list      trials completed/released but not yet observed by
                                          the algorithm (batched observation), oldest first
``{P:E}:leases``                zset      reserved T -> end of its reservation lease (server
                                          seconds), renewed by the holding worker (store/lease.py)
``{P:E}:holders``               hash      reserved T -> "<holder id> <JSON: host, pid, Slurm
                                          job and task, since>" of the worker holding it
``{P:E}:lease_clock``           hash      last: server time of the last renewal by any
                                          worker; resumed: end of the last gap without any
``{P:E}:recoveries``            list      JSON records of trials recovered from a dead
                                          holder, newest first (the last 100)
``{P:E}:recovered``             string    count of recovered trials (all time)
``{P:E}:holds``                 list      durations (ms) of the last HOLDS_KEEP algorithm-lock
                                          holds, newest first (``orion-redis metrics``)
==============================  ========  ==================================================
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from functools import cached_property

from orion_track_redis import codec

# Seconds a request id is remembered: redis-py retries a call whose reply was lost within
# seconds; the id makes the retry return the first result instead of applying it twice.
REQUEST_TTL = 120

# Entries the change log keeps: a reader more changes behind reloads everything anyway
# (storage.CHANGES_MAX), so older entries only cost memory.
CHANGE_LOG_KEEP = 1000

# Hold durations the lock record keeps for ``orion-redis metrics`` (its p50/p99): ~6 KB.
HOLDS_KEEP = 1000

STATUSES = ("new", "reserved", "suspended", "completed", "interrupted", "broken")
PENDING = ("new", "suspended", "interrupted")

# Characters that would break a hash tag, a key separator or readability in redis-cli.
_UNSAFE = set("{}:%") | {chr(c) for c in range(33)} | {chr(127)}
_UNSAFE_RE = re.compile("[" + re.escape("".join(sorted(_UNSAFE))) + "]")


class _RequestIds:
    """Unique request ids: a random per-process prefix and a counter (cheaper than uuid4 on
    every hot-path call). A forked child draws a new prefix so it never repeats its parent's."""

    def __init__(self):
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self):
        self._prefix = os.urandom(10).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


new_request_id = _RequestIds().next


def escape(text: str) -> str:
    """Percent-encode the characters that must not appear inside a key token."""
    if text.isalnum() and text.isascii():  # hot path: trial ids are hex digests
        return text
    return _UNSAFE_RE.sub(lambda m: f"%{ord(m.group()):02X}", text)


def token(value) -> str:
    """Key token of an id; JSON first so that 0 and "0" stay different experiments."""
    return escape(codec.dumps(value))


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a glob pattern (SCAN MATCH, ACL key patterns)."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def validate_prefix(prefix: str) -> str:
    from orion_track_redis.errors import ConfigurationError

    if not prefix or any(ch in "{}" or not ch.isprintable() or ch.isspace() for ch in prefix):
        raise ConfigurationError(
            f"prefix {prefix!r} is invalid: use a non-empty string of printable characters "
            "without braces or white space (e.g. prefix=orion or prefix=team-a/orion)."
        )
    return prefix


@dataclass(frozen=True)
class GlobalKeys:
    """Keys of the global slot ``{P}``."""

    prefix: str

    @property
    def tag(self) -> str:
        return "{" + self.prefix + "}"

    @property
    def schema(self) -> str:
        return f"{self.tag}:schema"

    @property
    def exp_seq(self) -> str:
        return f"{self.tag}:exp_seq"

    @property
    def exps(self) -> str:
        return f"{self.tag}:exps"

    @property
    def exp_names(self) -> str:
        return f"{self.tag}:exp_names"

    @property
    def benchmarks(self) -> str:
        return f"{self.tag}:benchmarks"

    def exp(self, exp_token: str) -> str:
        return f"{self.tag}:exp:{exp_token}"

    def experiment(self, exp_id) -> ExperimentKeys:
        return ExperimentKeys(self.prefix, token(exp_id))


@dataclass(frozen=True)
class ExperimentKeys:
    """Keys of one experiment's slot ``{P:E}``. The storage keeps one per experiment, so each
    key is built once (cached_property) rather than on every hot-path call."""

    prefix: str
    exp_token: str
    _statuses: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    @cached_property
    def tag(self) -> str:
        return "{" + f"{self.prefix}:{self.exp_token}" + "}"

    @cached_property
    def rev(self) -> str:
        return f"{self.tag}:rev"

    @cached_property
    def all(self) -> str:
        return f"{self.tag}:all"

    @cached_property
    def changed(self) -> str:
        return f"{self.tag}:changed"

    @cached_property
    def floor(self) -> str:
        return f"{self.tag}:floor"

    def status(self, status: str) -> str:
        key = self._statuses.get(status)
        if key is None:
            key = self._statuses[status] = f"{self.tag}:s:{status}"
        return key

    @cached_property
    def trial_prefix(self) -> str:
        return f"{self.tag}:t:"

    def trial(self, trial_id: str) -> str:
        return self.trial_prefix + escape(str(trial_id))

    def request(self, request_id: str) -> str:
        return f"{self.tag}:req:{request_id}"

    @cached_property
    def lock(self) -> str:
        return f"{self.tag}:lock"

    @cached_property
    def lock_holder(self) -> str:
        return f"{self.tag}:lock:holder"

    @cached_property
    def lock_queue(self) -> str:
        return f"{self.tag}:lock:queue"

    @cached_property
    def lock_leases(self) -> str:
        return f"{self.tag}:lock:leases"

    @cached_property
    def lock_wake_prefix(self) -> str:
        """Prefix of the waiters' wake keys: the scripts append the owner id of the waiter
        whose turn came (only known inside them)."""
        return f"{self.tag}:lock:wake:"

    def lock_wake(self, owner: str) -> str:
        return self.lock_wake_prefix + owner

    @cached_property
    def lock_log(self) -> str:
        return f"{self.tag}:lock:log"

    @cached_property
    def unobserved(self) -> str:
        return f"{self.tag}:unobserved"

    @cached_property
    def leases(self) -> str:
        return f"{self.tag}:leases"

    @cached_property
    def holders(self) -> str:
        return f"{self.tag}:holders"

    @cached_property
    def lease_clock(self) -> str:
        return f"{self.tag}:lease_clock"

    @cached_property
    def recoveries(self) -> str:
        return f"{self.tag}:recoveries"

    @cached_property
    def recovered(self) -> str:
        return f"{self.tag}:recovered"

    @cached_property
    def holds(self) -> str:
        return f"{self.tag}:holds"

    def unescape_trial(self, trial_token: str) -> str:
        """Trial id from the token stored in the indexes."""
        from urllib.parse import unquote

        return unquote(trial_token)
