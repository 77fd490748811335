"""Load the Lua scripts of ``lua/`` by name and register them once per client.

Each script is invoked through redis-py's ``Script`` object (EVALSHA, falling back to EVAL and
reloading after NOSCRIPT: a restarted server, a failover or SCRIPT FLUSH). In a wheel the scripts
live in ``orion_track_redis/lua`` (hatch force-include); in a source checkout or an editable
install they are read from the top-level ``lua/`` folder.
"""
from __future__ import annotations

import functools
from pathlib import Path

NAMES = (
    "create_experiment",
    "delete_experiment",
    "register_trial",
    "reserve_trial",
    "update_trial",
    "delete_trials",
    "lost_trials",
    "fetch_docs",
    "fetch_changes",
    "lock_init",
    "lock_acquire",
    "lock_renew",
    "lock_release",
)


@functools.lru_cache(maxsize=None)
def lua_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "lua", here.parent / "lua"):
        if (candidate / "reserve_trial.lua").is_file():
            return candidate
    raise FileNotFoundError(
        f"Lua scripts not found next to {here}: reinstall orion-track-redis (the wheel carries "
        "them in orion_track_redis/lua)."
    )


@functools.lru_cache(maxsize=None)
def source(name: str) -> str:
    return (lua_dir() / f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The registered scripts of one client, as attributes: ``scripts.reserve_trial(keys, args)``."""

    def __init__(self, client):
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))
