"""orion-redis: the operator's command (fleet status, locks, lost trials, purge, migration).

Exit codes: 0 ok, 1 a problem was found (lost trials, a stale lock, a failed verification),
2 usage or configuration error. Every read command takes ``--json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from orion_track_redis import __version__

# This module imports neither Oríon nor the storage: importing Oríon reads its global
# configuration files, and a file Oríon refuses must get a clear answer (_import_orion).
OK, PROBLEM, USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orion-redis", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"orion-redis {__version__}")
    parser.add_argument(
        "--uri",
        help="Redis URI (default: Oríon config, ORION_DB_ADDRESS, "
        "ORION_REDIS_URI, then the embedded server)",
    )
    parser.add_argument("--prefix", help="key prefix (default: the URI's, else orion)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_, json_=True):
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)  # the name of a commands.cmd_* function
        if json_:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    def target(p):
        p.add_argument("name", help="experiment name")
        p.add_argument("--version", type=int, help="experiment version (default: the latest)")

    add("info", "info", "server, persistence, eviction policy, schema, counts")
    p = add("status", "status", "trials by status, lost trials and lock of each experiment")
    p.add_argument("name", nargs="?", help="only this experiment (default: all)")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS")
    p.add_argument("--check", action="store_true", help="exit 1 on lost trials or stale locks")
    p = add("lock", "lock", "show or release an experiment's algorithm lock")
    p.add_argument("action", choices=["show", "release"])
    target(p)
    p = add(
        "flush",
        "flush",
        "observe the completed trials waiting in an experiment's backlog (batched observation)",
        json_=False,
    )
    target(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=60,
        help="seconds to wait for the algorithm lock (default 60)",
    )
    p = add("lost", "lost", "list lost trials; --requeue makes them interrupted")
    target(p)
    p.add_argument(
        "--requeue",
        action="store_true",
        help="set the lost trials to interrupted, so any worker can take them again",
    )
    p = add("holders", "holders", "who holds each reserved trial; trials recovered from the dead")
    target(p)
    p = add("purge", "purge", "delete an experiment, its trials and its lock", json_=False)
    target(p)
    p.add_argument("--yes", action="store_true", help="do not ask")
    p = add("copy", "copy", "copy experiments between storages", json_=False)
    p.add_argument(
        "--from", dest="source", required=True, help="redis URI, pickleddb:PATH or mongodb://..."
    )
    p.add_argument("--to", dest="target", required=True)
    p.add_argument("--experiment", help="only this experiment name")
    p = add("export", "export", "write experiments and trials to a JSON-lines file", json_=False)
    p.add_argument("file")
    p.add_argument("--experiment")
    p = add("import", "import", "read a file written by export", json_=False)
    p.add_argument("file")
    p = add(
        "stop-embedded",
        "stop_embedded",
        "stop this host's embedded redis-server (the "
        "implicit default; its data is kept and it restarts on next use)",
        json_=False,
    )
    p.add_argument(
        "--data-dir",
        help="its data directory (default: $ORION_REDIS_EMBEDDED_DIR, "
        "else Oríon's user data directory)",
    )
    p = add(
        "serve",
        "serve",
        "run a password-protected redis-server in the foreground (a Slurm job's server) and "
        "write its connection file once it answers",
        json_=False,
    )
    p.add_argument("--dir", required=True, help="data dir, on the filesystem the nodes share")
    p.add_argument("--bind", help="address to listen on (default: this node's, from its name)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default 0: a free one)")
    p.add_argument("--tls", action="store_true", help="TLS only, with a CA made in DIR/tls")
    p.add_argument("--connection-file", help="where to write the URI (default DIR/connection.uri)")
    p = add(
        "metrics",
        "metrics",
        "Prometheus metrics of every experiment (trials by status, "
        "lost trials, lock, hold durations, completions), read from the indexes",
        json_=False,
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:9464",
        metavar="HOST:PORT",
        help="address of the /metrics endpoint (default 127.0.0.1:9464; port 0: any)",
    )
    p.add_argument("--once", action="store_true", help="print one scrape and exit")
    add(
        "upgrade",
        "upgrade",
        "upgrade the stored data to this version's schema (stop the "
        "workers of the older version first)",
    )
    return parser


class _OrionConfigError(Exception):
    pass


def _config_files() -> list[str]:
    """Oríon's global configuration files that exist (the paths orion.core reads at import)."""
    from appdirs import AppDirs

    dirs = AppDirs("orion.core")
    candidates = [
        os.path.join(d, "orion_config.yaml") for d in (dirs.site_config_dir, dirs.user_config_dir)
    ]
    return [path for path in candidates if os.path.exists(path)]


def _import_orion(uri_given: bool) -> None:
    """Import Oríon, whose import reads its global configuration files. A file it refuses (a
    ``uri:`` key under ``storage``, an unknown option) makes every ``orion`` command fail with
    a traceback; here it is one clear message, and with ``--uri`` (this command needs nothing
    else of that file) the command goes on without the global files."""
    try:
        import orion.core  # noqa: F401

        return
    except Exception as exc:  # orion.core.io.config.ConfigurationError, not importable here
        if type(exc).__name__ != "ConfigurationError":
            raise
        problem = (
            f"Oríon refuses its global configuration ({', '.join(_config_files())}): "
            f"{exc} `orion hunt` and every `orion` command fail the same way until it "
            "is fixed (the Redis URI goes in storage.database.host, not storage.uri; "
            "see the README)."
        )
    if not uri_given:
        raise _OrionConfigError(problem + " Or give orion-redis --uri to go on without it.")
    print(
        f"orion-redis: warning: {problem} Going on with --uri, without those files.",
        file=sys.stderr,
    )
    saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "XDG_CONFIG_DIRS")}
    with tempfile.TemporaryDirectory() as empty:
        os.environ["XDG_CONFIG_HOME"] = os.environ["XDG_CONFIG_DIRS"] = empty
        try:
            import orion.core  # noqa: F401,F811 - Oríon's config paths follow these variables
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _import_orion(uri_given=bool(args.uri))
    except _OrionConfigError as exc:
        print(f"orion-redis: {exc}", file=sys.stderr)
        return USAGE
    from orion_track_redis.errors import RedisStorageError
    from orion_track_redis.ops import commands

    try:
        return getattr(commands, f"cmd_{args.func}")(args)
    except BrokenPipeError:  # `orion-redis info | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except (RedisStorageError, LookupError, OSError, ValueError) as exc:
        print(f"orion-redis: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return PROBLEM


if __name__ == "__main__":
    sys.exit(main())
