"""Resolve where the storage connects to, into one frozen :class:`Options` object.

Sources, first match wins (docs/configuration.md, "Where the URI comes from"):

1. the ``uri`` argument (Python API: ``storage={"type": "redis", "uri": ...}``);
2. ``database["host"]`` when it holds a Redis URI (yaml ``storage: {type: redis, database:
   {host: "redis://..."}}``, the global Oríon config, or ``ORION_DB_ADDRESS``);
3. the environment variable ``ORION_REDIS_URI``;
4. the embedded default: a local redis-server under Oríon's user data directory.

Accepted forms::

    redis://[[user]:password@]host[:port][/db][?options]
    rediss://...                        (TLS)
    redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2]...]/service_name[/db][?options]
    redis+cluster://[[user]:password@]host1[:port1][,host2[:port2]...][?options]
    unix:///path/to/redis.sock[?db=N&options]
    fakeredis://[name][?options]        (in-process server, for tests and quick trials)
    embedded://[/data/dir][?options]    (the embedded default, explicitly)

Options (the query string, or keyword arguments of the storage config) are listed, typed and
validated in config/options.py; docs/configuration.md's option table says what each does. The
algorithm-state signing secret comes from the ``state_secret`` keyword or
``ORION_REDIS_STATE_SECRET``, never from the URI (URIs get logged). Sentinel and Cluster
host lists default to ports 26379 and 6379; the Cluster form takes no ``db`` (Cluster has
only db 0).
"""

from __future__ import annotations

import logging
import os
from urllib.parse import parse_qsl, urlsplit

from orion_track_redis.config import misdirect
from orion_track_redis.config.misdirect import ENV_REQUIRE_URI, REDIS_SCHEMES, scheme_hint
from orion_track_redis.config.options import (
    CLUSTER,
    SENTINEL,
    SENTINEL_OPTIONS,
    Options,
    split_options,
    validate_acks,
    validate_conn,
    validate_own,
)
from orion_track_redis.errors import ConfigurationError, redact

log = logging.getLogger(__name__)

ENV_URI = "ORION_REDIS_URI"
ENV_SECRET = "ORION_REDIS_STATE_SECRET"
# the password kept out of the URI: a file (container secrets' convention), or redis-cli's variable
ENV_PASSWORD_FILE = "ORION_REDIS_PASSWORD_FILE"
ENV_CLI_AUTH = "REDISCLI_AUTH"
SCHEMES = REDIS_SCHEMES
MULTI_HOST = (SENTINEL, CLUSTER)
DEFAULT_PORTS = {SENTINEL: 26379, CLUSTER: 6379}
ACCEPTED_FORMS = (
    "redis://[user:password@]host[:port][/db][?options], rediss://... (TLS), "
    "redis+sentinel://[user:password@]host1[:port1][,host2[:port2]...]/service_name[/db]"
    "[?options], "
    "redis+cluster://[user:password@]host1[:port1][,host2[:port2]...][?options], "
    "unix:///path/to/redis.sock[?db=N], fakeredis://[name], embedded://[/data/dir]"
)


def _scheme_of(text) -> str | None:
    if not isinstance(text, str) or "://" not in text:
        return None
    return text.split("://", 1)[0].lower()


def pick_uri(uri, database) -> tuple[str | None, str]:
    """Apply the resolution order; return (uri or None for the embedded default, source).
    A ``database`` value that meant a Redis URI but is none is refused (config/misdirect.py)."""
    if uri:
        return uri, "uri argument"
    database = database if isinstance(database, dict) else {}
    host = database.get("host")
    if _scheme_of(host) in SCHEMES:
        return host, "database.host"
    env_uri = os.environ.get(ENV_URI)
    misdirect.check_database(database, fallback=bool(env_uri))
    if env_uri:
        return env_uri, f"${ENV_URI}"
    return None, "embedded default"


_warned_embedded = False


def _implicit_embedded() -> None:
    """No URI anywhere: refuse when the fleet said so (or when the --config file holds one that
    Oríon dropped), else say loudly (once per process) that this host's own server is used, so
    other hosts do not share the experiment."""
    misdirect.check_dropped(found=False)
    if misdirect.policy() == "require":
        raise ConfigurationError(
            f"no Redis URI is configured and {ENV_REQUIRE_URI} forbids the embedded default: "
            "set storage.database.host to redis://... in the Oríon config (with storage type "
            f"redis), or {ENV_URI}=redis://... in the environment."
        )
    global _warned_embedded
    if not _warned_embedded:
        _warned_embedded = True
        log.warning(
            "orion-track-redis: no Redis URI configured: using the embedded redis-server of THIS "
            "HOST ONLY; workers on other hosts will not share these experiments. For a fleet, "
            "set storage.database.host (or %s) to redis://..., and %s=1 to make a missing URI "
            "an error.",
            ENV_URI,
            ENV_REQUIRE_URI,
        )


def _userinfo_broken(text: str) -> bool:
    """An "@" past the end of the authority: the password (or user) holds a character that ends
    it ("/", "?", "#"), so urlsplit cut the URI inside the password. An "@" in a query option
    of a well-formed URI is not one."""
    try:
        parts = urlsplit(text)
    except ValueError:  # an unparsable authority (a stray "["): any "@" after "://" counts
        return "@" in text.split("://", 1)[-1]
    if "@" in parts.netloc:
        return False
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
        in_query = not parts.hostname
    except ValueError:
        in_query = True  # the authority itself is broken: any "@" after it counts
    return "@" in parts.path + parts.fragment + (parts.query if in_query else "")


def _shown(text: str) -> str:
    """The URI for a message: redacted, and with the whole user info hidden when a character of
    the password broke it (redact() cannot tell where such a password ends)."""
    if _userinfo_broken(text):
        scheme, rest = text.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return redact(text)


def _encoding_hint(text: str) -> str:
    if not _userinfo_broken(text):
        return ""
    return (
        " The password seems to hold a character that must be percent-encoded in a URI "
        "(/ %2F, ? %3F, # %23, @ %40, : %3A, % %25): encode it with python3 -c 'import sys, "
        "urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=\"\"))' 'PASSWORD', or keep "
        f"it out of the URI (option password_file, or {ENV_PASSWORD_FILE})."
    )


def _external_password(own: dict, in_uri: bool) -> str | None:
    """The password when the URI has none: the ``password_file`` option, else the file named by
    ORION_REDIS_PASSWORD_FILE, else REDISCLI_AUTH. Pops ``password_file`` from ``own``."""
    path = own.pop("password_file", None) or os.environ.get(ENV_PASSWORD_FILE)
    if in_uri:
        return None  # the URI's own password wins
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                password = handle.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the Redis password file {path!r} ({exc.strerror}): check the path "
                f"and its permissions (option password_file, or {ENV_PASSWORD_FILE})."
            ) from None
        if not password:
            raise ConfigurationError(f"the Redis password file {path!r} is empty.")
        return password
    return os.environ.get(ENV_CLI_AUTH) or None


def _validate_path_db(path: str, conn: dict, chosen: str) -> None:
    """``/N`` selects database N: anything else there, or a second db option, is a mistake
    that redis-py would silently resolve to some database."""
    text = path[1:] if path.startswith("/") else path
    if not text:
        return
    if not text.isdigit():
        raise ConfigurationError(
            f"Redis URI {redact(chosen)!r}: the path must be a database number (/0, /1, ...), "
            f"not {'/' + text!r}. Accepted forms: {ACCEPTED_FORMS}."
        )
    if "db" in conn:
        raise ConfigurationError(
            f"Redis URI {redact(chosen)!r} gives the database twice (path /{text} and "
            f"db={conn['db']}): keep one of them."
        )


def resolve(uri=None, database=None, options: dict | None = None) -> Options:
    """Build the :class:`Options` of a storage from its constructor arguments."""
    options = dict(options or {})
    secret = options.pop("state_secret", None) or os.environ.get(ENV_SECRET) or None
    if isinstance(secret, str):
        secret = secret.encode()
    split_options((), options)  # a mistyped keyword (url=) first: before any other message
    chosen, source = pick_uri(uri, database)
    if chosen is None:
        _implicit_embedded()
        chosen = "embedded://"
    elif source != "uri argument":
        misdirect.check_dropped(found=True)
    if not isinstance(chosen, str):
        raise ConfigurationError(
            f"the Redis URI must be a string, got {type(chosen).__name__}. "
            f"Accepted forms: {ACCEPTED_FORMS}."
        )
    scheme = _scheme_of(chosen)
    if scheme in MULTI_HOST:
        return _resolve_multi_host(chosen, scheme, source, options, secret)
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"unsupported Redis URI {redact(chosen)!r} (from {source}).{scheme_hint(chosen)} "
            f"Accepted forms: {ACCEPTED_FORMS}."
        )
    try:
        parts = urlsplit(chosen)
        parts.port  # noqa: B018 - raises ValueError on a bad port
        problem = ""
    except ValueError as exc:
        problem = str(exc)
    if _userinfo_broken(chosen):
        problem = problem or "the password ends too early"
    if problem:
        raise ConfigurationError(
            f"malformed Redis URI {_shown(chosen)!r} (from {source}: {problem})."
            f"{_encoding_hint(chosen)} Accepted forms: {ACCEPTED_FORMS}."
        ) from None
    if scheme in ("redis", "rediss") and not parts.hostname:
        raise ConfigurationError(
            f"Redis URI {redact(chosen)!r} has no host. Accepted forms: {ACCEPTED_FORMS}."
        )
    if scheme == "unix" and not parts.path:
        raise ConfigurationError(
            f"Redis URI {redact(chosen)!r} has no socket path: use unix:///path/to/redis.sock."
        )
    own, conn = split_options(parse_qsl(parts.query, keep_blank_values=True), options)
    password = _external_password(own, parts.password is not None)
    if scheme in ("embedded", "fakeredis"):
        password = None  # servers of our own, without a password
    if scheme in ("redis", "rediss"):
        _validate_path_db(parts.path, conn, chosen)
    validate_own(own)
    validate_conn(conn)
    validate_acks(own, conn, scheme)
    for name in (*SENTINEL_OPTIONS, "ssl"):
        if name in conn:
            raise ConfigurationError(
                f"option {name} only applies to {SENTINEL}:// (sentinel_*) or to the "
                f"{SENTINEL}:// and {CLUSTER}:// forms (ssl); with {scheme}:// "
                + ("use rediss:// for TLS." if name == "ssl" else "remove it.")
            )
    if scheme not in ("rediss", "fakeredis"):
        plain = "redis" if scheme == "embedded" else scheme  # the embedded server speaks redis://
        _refuse_tls_options(conn, f"needs a TLS URI: use rediss:// instead of {plain}://.")
    # urlunsplit drops "//" when there is no host (embedded://, fakeredis://): build it ourselves
    base = f"{scheme}://{parts.netloc}{parts.path}"
    return Options(
        scheme=scheme,
        url=base,
        source=source,
        connection=tuple(sorted(conn.items())),
        state_secret=secret,
        password=password,
        **own,
    )


def _host_port(item: str, scheme: str, chosen: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` of a host list."""
    bad = ConfigurationError(
        f"malformed host {item!r} in Redis URI {redact(chosen)!r}: use host[:port] entries "
        f"separated by commas. Accepted forms: {ACCEPTED_FORMS}."
    )
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    else:
        host, _, port_text = item.partition(":")
    if not host or port_text is None:
        raise bad
    if not port_text:
        return host, DEFAULT_PORTS[scheme]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise bad
    return host, int(port_text)


def _resolve_multi_host(chosen: str, scheme: str, source: str, options: dict, secret) -> Options:
    """``redis+sentinel://`` and ``redis+cluster://``: urlsplit cannot parse a host list."""
    from urllib.parse import unquote

    rest = chosen.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    rest, _, fragment = rest.partition("#")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, pw_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(pw_text) if colon else None
    if not hostlist:
        raise ConfigurationError(
            f"Redis URI {redact(chosen)!r} has no host. Accepted forms: {ACCEPTED_FORMS}."
        )
    hosts = tuple(_host_port(item.strip(), scheme, chosen) for item in hostlist.split(","))
    own, conn = split_options(parse_qsl(query, keep_blank_values=True), options)
    external = _external_password(own, password is not None)
    password = password if password is not None else external
    validate_own(own)
    validate_conn(conn)
    validate_acks(own, conn, scheme)
    segments = [seg for seg in path.split("/")] if slash else []
    service = ""
    if scheme == SENTINEL:
        if not segments or not segments[0]:
            raise ConfigurationError(
                f"Redis URI {redact(chosen)!r} names no Sentinel service: use "
                f"{SENTINEL}://host1:26379,host2:26379/<service_name>[/db]. "
                f"Accepted forms: {ACCEPTED_FORMS}."
            )
        service = unquote(segments[0])
        if len(segments) > 2 or (len(segments) == 2 and segments[1] and not segments[1].isdigit()):
            raise ConfigurationError(
                f"Redis URI {redact(chosen)!r}: after the service name only a database number "
                f"may follow (/service_name/0). Accepted forms: {ACCEPTED_FORMS}."
            )
        if len(segments) == 2 and segments[1]:
            conn["db"] = int(segments[1])
    else:
        if any(segments):
            raise ConfigurationError(
                f"Redis URI {redact(chosen)!r} has a path, but Redis Cluster has no databases "
                f"nor services: use {CLUSTER}://host1:port1,host2:port2[?options]. "
                f"Accepted forms: {ACCEPTED_FORMS}."
            )
        if conn.get("db"):
            raise ConfigurationError("Redis Cluster has only database 0: remove the db option.")
        conn.pop("db", None)
        for name in SENTINEL_OPTIONS:
            if name in conn:
                raise ConfigurationError(
                    f"option {name} only applies to {SENTINEL}:// URIs, not {CLUSTER}://."
                )
    if not conn.get("ssl"):
        _refuse_tls_options(conn, f"needs TLS: add ssl=true to the {scheme}:// URI.")
    if fragment:
        raise ConfigurationError(f"Redis URI {redact(chosen)!r} has a #fragment: remove it.")
    return Options(
        scheme=scheme,
        url=f"{scheme}://{netloc}/{path}" if slash else f"{scheme}://{netloc}",
        source=source,
        connection=tuple(sorted(conn.items())),
        state_secret=secret,
        hosts=hosts,
        service=service,
        username=username,
        password=password,
        **own,
    )


def _refuse_tls_options(conn: dict, why: str) -> None:
    """The one check that TLS options (``ssl_*``) come with TLS: ``why`` says how."""
    for name in [k for k in conn if k.startswith("ssl_")]:
        raise ConfigurationError(f"option {name} {why}")
