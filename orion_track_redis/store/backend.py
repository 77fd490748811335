"""``Backend``: the storage's core, one object that the Oríon adapter (storage.py) and the
operator's tools (ops/) both use through its public attributes.

It owns the resolved options, the key builder, the client (made on first use and again after a
fork: a child must not share its parent's sockets), the Lua scripts registered on it, the lock
client, the trial reads and writes and the experiment documents, and the one error boundary
(:meth:`guard`). It knows nothing of Oríon's protocol: return codes stay codes here.
"""

from __future__ import annotations

import os

from orion_track_redis.config.options import Options
from orion_track_redis.errors import translate_errors
from orion_track_redis.keys import ExperimentKeys, GlobalKeys
from orion_track_redis.server.checks import check_server, server_info
from orion_track_redis.server.connection import (
    fail_fast,
    make_client,
    refuse_plain_server_for_tls,
)
from orion_track_redis.store import lease, migrations
from orion_track_redis.store.experiments import ExperimentStore
from orion_track_redis.store.lock import LockClient
from orion_track_redis.store.reads import TrialReader, count_by_status
from orion_track_redis.store.scripts import Scripts, name_denial
from orion_track_redis.store.writes import TrialWriter


class Backend:
    """Options -> everything a storage process needs to talk to its Redis. Pickles as its
    options (the client is made again where it is unpickled)."""

    def __init__(self, opts: Options):
        self._start(opts)

    def _start(self, opts: Options) -> None:
        self.opts = opts
        self.keys = GlobalKeys(opts.prefix)
        self._eks: dict = {}
        self._client = None
        self._pid: int | None = None
        self.experiments = ExperimentStore(lambda: self.client, lambda: self.scripts, self.keys)
        self.writes = TrialWriter(lambda: self.client, lambda: self.scripts)
        self.reads = TrialReader(
            lambda: self.client, lambda: self.scripts, fake=opts.scheme == "fakeredis"
        )

    def __getstate__(self):
        return {"opts": self.opts}

    def __setstate__(self, state):
        self._start(state["opts"])

    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():
            self._connect()
        return self._client

    def _connect(self) -> None:
        opts = self.opts
        self._client = make_client(opts)
        self._scripts = Scripts(
            self._client, opts.replica_acks, opts.replica_ack_timeout, opts.redacted
        )
        self._lock = LockClient(self._client, self._scripts, opts.lock_ttl, opts.state_secret)
        self._pid = os.getpid()

    @property
    def scripts(self) -> Scripts:
        self.client  # noqa: B018 - connects lazily
        return self._scripts

    @property
    def lock(self) -> LockClient:
        self.client  # noqa: B018 - connects lazily
        return self._lock

    def guard(self) -> translate_errors:
        """The error boundary: redis-py errors become ours, naming the (redacted) endpoint."""
        return translate_errors(self.opts.redacted, name_denial)

    def experiment_keys(self, exp_id) -> ExperimentKeys:
        try:  # memoised: every hot-path call needs the keys of its experiment
            return self._eks[exp_id]
        except KeyError:
            keys = self._eks[exp_id] = self.keys.experiment(exp_id)
            return keys
        except TypeError:  # an unhashable id
            return self.keys.experiment(exp_id)

    def keeper(self) -> lease.LeaseKeeper:
        """This process's keeper of reservation leases for these options."""
        return lease.keeper(self.opts)

    def count_by_status(self, ek: ExperimentKeys, statuses) -> list[int]:
        return count_by_status(self.client, ek, statuses)

    def set_up(self) -> None:
        """Check the server once, without retries (a wrong host or password fails at once):
        TLS spoken where asked, version, eviction and persistence, schema version (written on
        a fresh database)."""
        if self.opts.scheme == "rediss":
            refuse_plain_server_for_tls(self.opts)
        with self.guard(), fail_fast(self.client):
            if self.opts.scheme != "fakeredis":  # fakeredis has no INFO
                info = server_info(self.client)
                if info is not None:
                    check_server(info, self.opts.redacted)
            self._check_schema()

    def _check_schema(self) -> None:
        stored = migrations.stored_version(self.client, self.keys)
        if stored is None:
            self.client.setnx(self.keys.schema, migrations.SCHEMA_VERSION)
        elif stored > migrations.SCHEMA_VERSION:
            raise migrations.newer_schema_error(self.opts.prefix, stored)
        elif stored < migrations.SCHEMA_VERSION:
            raise migrations.older_schema_error(self.opts.prefix, stored, self.opts.redacted)
