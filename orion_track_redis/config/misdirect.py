"""Configurations that would point a worker somewhere other than intended (issue 21).

A fleet whose workers silently run on their host's own embedded server, or on a PickledDB file
named after a Redis URI, never coordinates and finishes without a word. So a value that was
meant for this backend but cannot be used is a :class:`ConfigurationError` naming the value
(password redacted), where it came from and the fix; docs/configuration.md ("What is an
error") has the table. ``ORION_REDIS_REQUIRE_URI``: unset, these errors; ``1``, also no URI
at all is an error; ``0``, each of them is a WARNING instead (the value is then ignored).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys

from orion_track_redis.errors import ConfigurationError, install_cli_excepthook, redact

log = logging.getLogger(__name__)

ENV_REQUIRE_URI = "ORION_REDIS_REQUIRE_URI"
ENV_DB_ADDRESS = "ORION_DB_ADDRESS"
REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "fakeredis",
    "embedded",
    "redis+sentinel",
    "redis+cluster",
)
# the keys of Oríon's database section: any other one under storage.database is never read
DATABASE_KEYS = ("name", "type", "host", "port")
# only these keys of storage survive Oríon 0.2.7's `orion hunt --config` path
KEPT_STORAGE_KEYS = ("type", "database")
MONGO_PORT = 27017  # Oríon's default database.port: not a port the user gave
_URI_SHAPED = re.compile(r"^([a-z][a-z0-9+.-]*):/", re.I)
_warned: set[str] = set()


def policy() -> str:
    """``require`` (ORION_REDIS_REQUIRE_URI=1), ``warn`` (=0) or ``error`` (unset)."""
    value = os.environ.get(ENV_REQUIRE_URI, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return "require"
    return "warn" if value in ("0", "false", "no", "off") else "error"


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("orion-track-redis: %s", message)


def misdirected(message: str) -> None:
    """Refuse (the default), or with ORION_REDIS_REQUIRE_URI=0 warn once and go on."""
    if policy() == "warn":
        warn_once(f"{message} (going on: {ENV_REQUIRE_URI}=0)")
        return
    raise ConfigurationError(f"{message} ({ENV_REQUIRE_URI}=0 makes this a warning.)")


def scheme_of(text) -> str | None:
    """The scheme of anything URI-shaped (``x://``, and the one-slash typo ``x:/``)."""
    match = _URI_SHAPED.match(text) if isinstance(text, str) else None
    return match.group(1).lower() if match else None


def scheme_hint(text: str) -> str:
    """' Did you mean ...?' for a mistyped scheme or a missing slash; '' if nothing fits."""
    scheme = scheme_of(text)
    if scheme is None:
        return ""
    rest = text[len(scheme) + 1 :]
    tail = rest.lstrip("/")
    if scheme in REDIS_SCHEMES and not rest.startswith("//"):
        return f" '{scheme}:' takes two slashes: did you mean {redact(scheme + '://' + tail)!r}?"
    near = difflib.get_close_matches(scheme, REDIS_SCHEMES, n=1, cutoff=0.7)
    return f" Did you mean {redact(near[0] + '://' + tail)!r}?" if near else ""


# -- where a value came from ----------------------------------------------------------------
def config_file() -> str | None:
    """The ``--config`` file of an ``orion`` command, if any (Oríon reads nothing else of
    sys.argv before the user's command; a later ``-c`` of that command is not YAML of ours)."""
    argv = sys.argv if sys.argv and os.path.basename(sys.argv[0]) == "orion" else []
    for i, arg in enumerate(argv[1:], 1):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _storage_section(path: str | None) -> dict:
    if not path:
        return {}
    try:
        import yaml

        with open(path, encoding="utf-8") as handle:
            doc = yaml.safe_load(handle)
    except Exception:  # noqa: BLE001 - not ours to judge: Oríon reports a broken file itself
        return {}
    storage = doc.get("storage") if isinstance(doc, dict) else None
    return storage if isinstance(storage, dict) else {}


def host_source(host: str) -> str:
    """The setting ``database.host`` came from, named as the user would look for it."""
    path = config_file()
    database = _storage_section(path).get("database")
    if isinstance(database, dict) and database.get("host") == host:
        return f"storage.database.host in {path}"
    if os.environ.get(ENV_DB_ADDRESS) == host:
        return f"{ENV_DB_ADDRESS} (Oríon's storage.database.host)"
    return "storage.database.host (Oríon's configuration: a --config file or the global one)"


# -- the checks ------------------------------------------------------------------------------
def _host_problem(host: str, port) -> str:
    """Why a ``database.host`` without a Redis scheme is not a Redis URI, and the fix."""
    scheme = scheme_of(host)
    if scheme is not None:
        hint = scheme_hint(host) or f" Accepted schemes: {', '.join(REDIS_SCHEMES)}."
        return f"is not a Redis URI (scheme '{scheme}:').{hint}"
    if "/" in host:
        return (
            "is a file path (PickledDB's form), not a Redis URI: give storage.database.host as "
            "redis://host:port/0, or remove it for this host's embedded server."
        )
    address = host if ":" in host or port in (None, "", MONGO_PORT) else f"{host}:{port}"
    return (
        "is a host name, not a Redis URI (database host/port is MongoDB's form): give the whole "
        f'URI as the host, host: "redis://{address}/0" (port 6379 when none is given).'
    )


def check_database(database: dict, fallback: bool) -> None:
    """``database`` (Oríon's section) gave no Redis URI: refuse a host or key that meant one.
    ``fallback``: ORION_REDIS_URI gives the URI, so a host that is evidently another backend's
    (a path, a bare name) is ignored; a URI-shaped typo never is."""
    host = database.get("host")
    if isinstance(host, str) and host.strip():
        problem = _host_problem(host, database.get("port"))
        what = f"{host_source(host)} = {redact(host)!r} {problem}"
        if scheme_of(host) is not None or not fallback:
            misdirected(what)
        else:
            log.info("orion-track-redis: ignoring storage.database.host %s", what)
    for key in sorted(set(database) - set(DATABASE_KEYS)):
        message = (
            f"storage.database.{key} ({redact(database[key])!r}) is never read: the Redis URI "
            "goes in storage.database.host."
        )
        (warn_once if fallback else misdirected)(message)


def check_dropped(found: bool) -> None:
    """Keys of the ``--config`` file's storage section that Oríon 0.2.7 drops before the
    backend sees them (``uri:``, ``host:``, options): an error when that leaves no URI."""
    path = config_file()
    for key, value in sorted(_storage_section(path).items()):
        if key in KEPT_STORAGE_KEYS:
            continue
        message = (
            f"storage.{key} ({redact(value)!r}) in {path} is dropped by Oríon 0.2.7 before it "
            "reaches the backend (only storage.type and storage.database do): give the URI, "
            'options included, as storage.database.host: "redis://host:port/0?option=value".'
        )
        (warn_once if found else misdirected)(message)


def guard_legacy() -> None:
    """Refuse a Legacy database (PickledDB, MongoDB) whose host is a Redis URI:
    ``ORION_DB_ADDRESS=redis://...`` without ``ORION_STORAGE_TYPE=redis`` makes PickledDB write
    a file named after the URI in each worker's working directory. Oríon imports this package
    (its BaseStorageProtocol entry point) before it creates any storage, Legacy included; the
    check costs one string test per Legacy database and changes nothing else."""
    try:
        from orion.storage import legacy
    except ImportError:
        return
    original = legacy.setup_database
    if getattr(original, "_orion_track_redis", False):
        return

    def setup_database(config=None):
        import orion.core

        given = config if config is not None else orion.core.config.database.to_dict()
        host = given.get("host") if isinstance(given, dict) else None
        if scheme_of(host) in REDIS_SCHEMES:
            assert host is not None  # a scheme was found: host is a str
            install_cli_excepthook()  # one line in an `orion` command, not a traceback
            misdirected(
                f"Oríon's storage type is not redis, but {host_source(host)} is the Redis URI "
                f"{redact(host)!r}: Oríon's {given.get('type')} "
                "would write a file named after it in the working directory, shared with no "
                "other worker. Set ORION_STORAGE_TYPE=redis (or storage: {type: redis} in the "
                "Oríon configuration)."
            )
        return original(config)

    setup_database._orion_track_redis = True  # type: ignore[attr-defined]
    legacy.setup_database = setup_database
