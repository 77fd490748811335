"""Load the Lua scripts of ``lua/`` by name and register them once per client.

Each script is invoked through redis-py's ``Script`` object (EVALSHA, falling back to EVAL and
reloading after NOSCRIPT: a restarted server, a failover or SCRIPT FLUSH). In a wheel the scripts
live in ``orion_track_redis/lua`` (hatch force-include); in a source checkout or an editable
install they are read from the top-level ``lua/`` folder. A script line ``-- @include F`` is
replaced by the text of ``lua/include/F`` (code shared by scripts: Redis 6.2 has no functions).

Scripts are called with named parameters (:class:`Call`): the names, in KEYS and ARGV order, are
the header's ``-- KEYS = ...`` and ``-- ARGV = ...`` lines (``*name``: a list, last), so the
order lives in one place, the script; tests/unit/test_script_calls.py checks those lines against
the numbered ``KEYS[i]``/``ARGV[i]`` of the header.

With ``replica_acks`` > 0 every write script is followed by ``WAIT replica_acks timeout`` in the
same round trip (see :class:`_Acked`): a write acknowledged to the caller is then on that many
replicas too, and survives an unplanned failover to one of them.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, RedisError

from orion_track_redis.errors import ConnectionFailed

NAMES = (
    "create_experiment",
    "delete_experiment",
    "register_trial",
    "reserve_trial",
    "update_trial",
    "delete_trials",
    "lost_trials",
    "lease_renew",
    "fetch_docs",
    "fetch_changes",
    "lock_init",
    "lock_acquire",
    "lock_renew",
    "lock_release",
    "lock_leave",
    "observe_later",
)
READ_ONLY = ("fetch_docs", "fetch_changes", "lost_trials")  # never followed by WAIT


@functools.cache
def lua_dir() -> Path:
    package = Path(__file__).resolve().parent.parent  # orion_track_redis/
    # the wheel carries them in orion_track_redis/lua; a checkout has them beside the package
    for candidate in (package / "lua", package.parent / "lua"):
        if (candidate / "reserve_trial.lua").is_file():
            return candidate
    raise FileNotFoundError(
        f"Lua scripts not found next to {package}: reinstall orion-track-redis (the wheel carries "
        "them in orion_track_redis/lua)."
    )


_INCLUDE = re.compile(r"^-- @include (\S+)$", re.M)


@functools.cache
def source(name: str) -> str:
    """The text sent to Redis: ``lua/<name>.lua`` with its includes pasted in."""
    return "".join(text for _, _, text in _parts(name))


@functools.cache
def _parts(name: str) -> tuple:
    """(file, first line in that file, text) of each stretch of ``source(name)``."""
    text = (lua_dir() / f"{name}.lua").read_text(encoding="utf-8")
    parts, pos, line = [], 0, 1
    for match in _INCLUDE.finditer(text):
        head = text[pos : match.start()]
        parts.append((f"{name}.lua", line, head))
        included = (lua_dir() / "include" / match[1]).read_text(encoding="utf-8")
        parts.append(
            (f"include/{match[1]}", 1, included if included.endswith("\n") else included + "\n")
        )
        line += head.count("\n") + 1
        pos = match.end() + 1  # the include line and its newline
    parts.append((f"{name}.lua", line, text[pos:]))
    return tuple(parts)


def origin(name: str, line: int) -> tuple[str, int]:
    """Line ``line`` of ``source(name)`` as (file under lua/, line in that file)."""
    start = 1
    for path, first, text in _parts(name):
        count = text.count("\n")
        if line < start + count:
            return path, first + line - start
        start += count
    return f"{name}.lua", line


def name_denial(msg: str) -> str:
    """What an ACL denial inside a script hit, for errors.translate_errors: 'the ZADD
    command' from "Error running script (call to f_<sha1>): @user_script:15: ...". The script
    is found by its SHA1 and the command read on that line of its source."""
    # Redis words it "call to f_<sha1> ... @user_script:N" or "script: <sha1>, on @user_script:N"
    match = re.search(r"(?:f_|script: )([0-9a-f]{40}).*?@user_script:(\d+)", msg)
    if not match:
        return "a command or key"
    for name in NAMES:
        text = source(name)
        if hashlib.sha1(text.encode()).hexdigest() == match[1]:
            lines = text.splitlines()
            line = lines[int(match[2]) - 1] if int(match[2]) <= len(lines) else ""
            commands = re.findall(r"redis\.call\('(\w+)'", line)
            path, number = origin(name, int(match[2]))  # the line in its file
            if "access" in msg:
                return f"a key of script {path} (line {number})"
            if commands:
                return f"the {'/'.join(commands)} command (script {path}, line {number})"
            return f"a command of script {path} (line {number})"
    return "a command or key"


_SIGNATURE = re.compile(r"^-- (KEYS|ARGV) =(.*)$", re.M)


@dataclass(frozen=True)
class Signature:
    """A script's parameter names, in KEYS and in ARGV order (``*name``: a list, last)."""

    keys: tuple[str, ...]
    argv: tuple[str, ...]


@functools.cache
def signature(name: str) -> Signature:
    """The ``-- KEYS =`` and ``-- ARGV =`` lines of ``lua/<name>.lua``."""
    lines = dict(_SIGNATURE.findall((lua_dir() / f"{name}.lua").read_text(encoding="utf-8")))
    if set(lines) != {"KEYS", "ARGV"}:
        raise ValueError(f"lua/{name}.lua has no '-- KEYS =' or no '-- ARGV =' line")
    return Signature(tuple(lines["KEYS"].split()), tuple(lines["ARGV"].split()))


class Call:
    """One script, called with its parameters by name: ``scripts.lock_renew(holder=...,
    holder_token=..., ttl_ms=...)`` (``client=``: queue it on a pipeline). A missing or unknown
    name raises TypeError before anything is sent."""

    __slots__ = ("name", "script", "keys", "argv")

    def __init__(self, name: str, script):
        sig = signature(name)
        self.name, self.script, self.keys, self.argv = name, script, sig.keys, sig.argv

    def __call__(self, client=None, **named):
        keys = self._take(self.keys, named)
        args = self._take(self.argv, named)
        if named:
            raise TypeError(f"lua/{self.name}.lua has no parameter {', '.join(sorted(named))}")
        return self.script(keys=keys, args=args, client=client)

    def _take(self, names: tuple[str, ...], named: dict) -> list:
        values: list = []
        for name in names:
            try:
                if name[0] == "*":
                    values.extend(named.pop(name[1:]))
                else:
                    values.append(named.pop(name))
            except KeyError:
                raise TypeError(f"lua/{self.name}.lua needs the parameter {name}") from None
        return values


class Scripts:
    """The registered scripts of one client, as :class:`Call` attributes:
    ``scripts.reserve_trial(new=..., ...)``; ``scripts.reserve_trial.script`` is the redis-py
    ``Script`` (its ``sha`` for streamed calls).

    ``replica_acks`` > 0 wraps the write scripts in :class:`_Acked`; 0 keeps redis-py's plain
    ``Script`` objects (one EVALSHA per call)."""

    if TYPE_CHECKING:  # one attribute per name of NAMES, set in __init__

        def __getattr__(self, name: str) -> Any: ...

    def __init__(
        self, client, replica_acks: int = 0, ack_timeout_ms: int = 1000, where: str = "Redis"
    ):
        for name in NAMES:
            script = client.register_script(source(name))
            if replica_acks and name not in READ_ONLY:
                script = _Acked(name, script, client, replica_acks, ack_timeout_ms, where)
            setattr(self, name, Call(name, script))


class _Acked:
    """A write script sent as ``EVALSHA`` + ``WAIT n timeout`` in one pipeline (one round trip);
    raises :class:`ConnectionFailed` when fewer than ``n`` replicas confirmed the write."""

    def __init__(self, name, script, client, acks: int, timeout_ms: int, where: str):
        self.name, self.script, self.client = name, script, client
        self.acks, self.timeout_ms, self.where = acks, timeout_ms, where

    def __call__(self, keys=(), args=(), client=None):
        if client is not None:  # queued in the caller's own pipeline: no WAIT of ours there
            return self.script(keys=keys, args=args, client=client)
        reply, acked = self._send(list(keys), list(args))
        if acked < self.acks:
            raise ConnectionFailed(
                f"Redis at {self.where}: the write ({self.name}) was applied on the primary but "
                f"not confirmed on {self.acks} replica(s) within replica_ack_timeout="
                f"{self.timeout_ms} ms (only {acked} confirmed); it is not undone, but a failover "
                "now could lose it. Check the replicas' health and lag (INFO replication on the "
                "primary: connected_slaves, offsets), or raise replica_ack_timeout (or lower "
                "replica_acks to the number of replicas that are up)."
            )
        return reply

    def _send(self, keys: list, args: list):
        """(script reply, replicas that confirmed). EVALSHA is queued as a raw command: a
        pipeline holding ``Script`` objects first runs SCRIPT EXISTS, one more round trip."""
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.acks, self.timeout_ms)
            reply, acked = pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError) and attempt == 1:
                # a restarted or newly promoted primary: load it, send again (EVALSHA failed,
                # so nothing was written)
                self.client.script_load(self.script.script)
                continue
            for item in (reply, acked):
                if isinstance(item, Exception):
                    raise item
            return reply, int(acked)


def run_streamed(client, script, key_lists: list, process, meanwhile=None) -> list | None:
    """``[process(i, reply) ...]`` for ``script`` called once per key list (the i-th reply
    answers ``key_lists[i]``): STREAM_WINDOW calls are kept in flight and each reply is
    processed as soon as it arrives, so Redis computes the next replies while this process
    works on the last one (on 2 cores, nearly the server's share of a large fetch is saved).
    A script the server does not know yet is loaded and the calls sent again. Returns None
    when streaming fails (a dropped connection...): the caller then takes its plain path,
    which has the retries. An exception of ``process`` propagates. ``meanwhile()`` runs once,
    after the first sends."""
    for attempt in (1, 2):
        try:
            return _stream_once(client, script, key_lists, process, meanwhile)
        except NoScriptError:
            if attempt == 2:
                return None
            client.script_load(script.script)  # nothing ran: EVALSHA failed
            meanwhile = None  # it ran
        except (RedisError, OSError):
            return None
    return None


# Calls in flight while streaming: enough to keep Redis busy, few enough that a send never
# waits for Redis to drain the socket. Sending all calls at once stalled a 100k-trial fetch:
# its 6 MB of keys fill the socket buffers, and this process sat in send() while Redis ran
# most of the calls (0.7 of its 2 s).
STREAM_WINDOW = 8


def _stream_once(client, script, key_lists: list, process, meanwhile) -> list:
    pool = client.connection_pool
    conn = pool.get_connection()
    complete = False

    def send(i):
        keys = key_lists[i]
        conn.send_packed_command(conn.pack_command("EVALSHA", script.sha, len(keys), *keys))

    try:
        count = len(key_lists)
        for i in range(min(STREAM_WINDOW, count)):
            send(i)
        if meanwhile is not None:
            meanwhile()
        results = []
        for i in range(count):
            reply = conn.read_response()
            if i + STREAM_WINDOW < count:
                send(i + STREAM_WINDOW)  # before processing: Redis stays STREAM_WINDOW ahead
            results.append(process(i, reply))
        complete = True
        return results
    finally:
        if not complete:  # replies may be left unread on the socket
            conn.disconnect()
        pool.release(conn)
