"""Script calls by name (store/scripts.py ``Call``): the names of a script's ``-- KEYS =`` and
``-- ARGV =`` header lines are its parameters, in order; here they are checked against the
numbered ``KEYS[i]``/``ARGV[i]`` that the header describes, and a call with a missing or an
unknown name fails before anything reaches Redis."""

from __future__ import annotations

import re

import fakeredis
import pytest

from orion_track_redis.store import scripts as scripts_module
from orion_track_redis.store.scripts import NAMES, Call, Scripts, Signature, lua_dir, signature

# `KEYS[3]`, `KEYS[2..7]`, `KEYS[10..]`, `KEYS[1..n]` where a description starts: at the start
# of a comment line or after "; "
_NUMBERED = re.compile(r"(?:^-- |; )(KEYS|ARGV)\[(\d+)(\.\.(\d*|n))?\]", re.M)


def header(name: str) -> str:
    lines = []
    for line in (lua_dir() / f"{name}.lua").read_text(encoding="utf-8").splitlines():
        if not line.startswith("--") or line.startswith("-- @include"):
            break
        lines.append(line)
    return "\n".join(lines)


def described(text: str, kind: str) -> tuple[list[int], bool]:
    """The positions the header describes for KEYS or ARGV, and whether the last is variadic
    (``[i..]``); ``-- ARGV none`` describes none."""
    positions, variadic = [], False
    for found_kind, first, rng, last in _NUMBERED.findall(text):
        if found_kind != kind:
            continue
        if rng and last and last != "n":
            positions.extend(range(int(first), int(last) + 1))
        else:
            positions.append(int(first))
            variadic = variadic or bool(rng)
    return positions, variadic


def mismatches(name: str, text: str, sig: Signature) -> list[str]:
    problems = []
    for kind, names in (("KEYS", sig.keys), ("ARGV", sig.argv)):
        positions, variadic = described(text, kind)
        if positions != list(range(1, len(names) + 1)):
            problems.append(f"{name}: {kind} described {positions}, named {list(names)}")
        if variadic != bool(names and names[-1].startswith("*")):
            problems.append(f"{name}: {kind} variadic in the text {variadic}, named {names}")
        if any(n.startswith("*") for n in names[:-1]):
            problems.append(f"{name}: only the last {kind} name may be a list")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_each_scripts_named_parameters_match_its_numbered_header(name):
    assert mismatches(name, header(name), signature(name)) == []


def test_the_header_check_finds_a_swap_a_gap_and_a_list_in_the_middle():
    text = header("reserve_trial")
    sig = signature("reserve_trial")
    assert mismatches("r", text, sig) == []
    fewer = Signature(sig.keys[:-1], sig.argv)  # a KEYS name forgotten
    assert mismatches("r", text, fewer)
    gap = text.replace("KEYS[6] rev counter", "rev counter")  # a position not described
    assert mismatches("r", gap, sig)
    middle = Signature(sig.keys, ("*trial_prefix", *sig.argv[1:]))
    assert any("only the last" in p for p in mismatches("r", text, middle))


def test_a_call_sends_keys_and_args_in_header_order():
    sent = []

    class Script:
        def __call__(self, keys, args, client):
            sent.append((keys, args, client))
            return 1

    call = Call("lease_renew", Script())
    call(
        tokens=["t1", "t2"],
        lease=30,
        holder="h",
        reserved="R",
        lease_clock="C",
        holders="H",
        leases="L",
    )
    assert sent == [(["L", "H", "C", "R"], ["h", 30, "t1", "t2"], None)]


def test_a_missing_or_unknown_name_fails_before_redis():
    scripts = Scripts(fakeredis.FakeRedis())
    with pytest.raises(TypeError, match="needs the parameter ttl_ms"):
        scripts.lock_renew(holder="k", holder_token="t")
    with pytest.raises(TypeError, match="has no parameter ttl"):
        scripts.lock_renew(holder="k", holder_token="t", ttl_ms=1, ttl=2)


def test_every_script_has_a_signature():
    assert {name: bool(signature(name).keys) for name in NAMES} == dict.fromkeys(NAMES, True)
    assert scripts_module.READ_ONLY  # the read-only scripts are among NAMES
    assert set(scripts_module.READ_ONLY) <= set(NAMES)


@pytest.mark.parametrize("name", [n for n in NAMES if "request" in signature(n).keys])
def test_every_request_id_is_replayed_by_the_one_include(name):
    """A script that takes a request id answers a retry through lua/include/replay.lua, not
    through a copy of its own."""
    text = (lua_dir() / f"{name}.lua").read_text(encoding="utf-8")
    position = signature(name).keys.index("request") + 1
    assert "-- @include replay.lua" in text
    assert re.search(rf"\breplayed(_write_first)?\(KEYS\[{position}\]", text)
    assert f"KEYS[{position}], tonumber(ARGV" not in text.split("-- @include replay.lua")[1]


def returned_codes(name: str) -> set[int]:
    """The integer codes the header's "Returns" part names (``1 created | -1 duplicate``)."""
    text = header(name)
    returns = text[text.index("Returns") :] if "Returns" in text else ""
    return {int(n) for n in re.findall(r"(?:Returns:|\|)\s*(?:--\s*)?(-?\d+)\b", returns)}


def test_every_refusal_is_a_code_its_script_returns():
    from orion_track_redis.store.codes import REFUSALS

    unknown = [(s, c) for s, c in REFUSALS if c not in returned_codes(s)]
    assert unknown == []
    assert returned_codes("update_trial") == {1, 0, -1}  # the parse reads continued lines
    assert 7 not in returned_codes("register_trial")  # ... and would see a code it lacks


def test_a_refusal_becomes_orions_exception_with_the_calls_facts():
    from orion.core.io.database import DuplicateKeyError
    from orion.storage.base import FailedUpdate

    from orion_track_redis.store import codes

    assert codes.check("register_trial", 5, experiment="e", id="t") == 5  # a revision: no error
    with pytest.raises(DuplicateKeyError, match=r"value=\('e', 't'\)"):
        codes.check("register_trial", -1, experiment="e", id="t")
    with pytest.raises(FailedUpdate, match="trial t is not 'reserved' in storage$"):
        codes.check("update_trial", 0, id="t", status="'reserved'", why="")
    assert codes.refusal("update_trial", 1, id="t") is None
