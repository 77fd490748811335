"""``Redis``: Oríon's storage protocol on Redis.

Contract (Oríon 0.2.7, see docs/architecture.md): behaves like Oríon's Legacy storage where
Oríon's docs are silent; raises Oríon's own exceptions (``DuplicateKeyError``, ``FailedUpdate``,
``LockAcquisitionTimeout``, ``MissingArguments``); returns real ``Trial`` objects sorted by
``submit_time``. Every state change of a trial is one Lua script call (see ``lua/``); reads are
pipelined. The storage pickles (Oríon cloudpickles it for every trial) and reconnects lazily.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os

from orion.core.io.database import DuplicateKeyError
from orion.core.worker.trial import Trial, validate_status
from orion.storage.base import (
    BaseStorageProtocol,
    FailedUpdate,
    get_trial_uid_and_exp,
    get_uid,
)

from . import accel, codec, lease, migrations, misdirect, query, runner
from .cache import TrialReader, count_by_status, indexed
from .connection import RedisDB, fail_fast, make_client, refuse_plain_server_for_tls
from .develop import DevelopProtocol
from .errors import install_cli_excepthook, translate_errors
from .experiments import ExperimentStore
from .gcpause import no_gc
from .keys import PENDING, STATUSES, ExperimentKeys, GlobalKeys, escape
from .lock import LockClient
from .options import Options
from .scripts import Scripts, name_denial
from .serverchecks import check_server, server_info
from .trials import clone as clone_trial
from .trials import to_doc, with_status
from .uri import resolve
from .writes import TrialWriter

log = logging.getLogger(__name__)
misdirect.guard_legacy()  # Oríon imports this module before it creates any storage (issue 21)


class Redis(DevelopProtocol, BaseStorageProtocol):
    """Oríon storage backed by Redis. Configuration: docs/configuration.md.

    Parameters
    ----------
    uri: str, optional
        Redis URI (``redis://``, ``rediss://``, ``unix://``, ``fakeredis://``, ``embedded://``).
    database: dict, optional
        Oríon's ``database`` section; its ``host`` is used when it holds a Redis URI.
    setup: bool
        Check the schema version (and write it on a fresh database). ``orion db upgrade``
        passes False.
    **options
        ``prefix``, ``lock_ttl``, ``state_secret`` and connection options (see ``uri.py``).
    """

    def __init__(self, uri=None, database=None, setup=True, **options):
        install_cli_excepthook()  # before anything here can raise
        self._opts: Options = resolve(uri, database, options)
        log.info(
            "orion-track-redis: using %s (from %s, prefix %s)",
            self._opts.redacted,
            self._opts.source,
            self._opts.prefix,
        )
        self._start(self._opts)
        if setup:
            self.set_up()

    # -- connection, pickling ----------------------------------------------------------------
    def __getstate__(self):
        return {"opts": self._opts}

    def __setstate__(self, state):
        self._start(state["opts"])

    def _start(self, opts: Options) -> None:
        """Everything but the connection, which is made on first use (and again after fork)."""
        self._opts = opts
        self._client = None
        self._pid: int | None = None
        self._keys = GlobalKeys(opts.prefix)
        self._eks: dict = {}
        self._experiments = ExperimentStore(lambda: self.client, lambda: self.scripts, self._keys)
        self._writes = TrialWriter(lambda: self.client, lambda: self.scripts)
        self._reads = TrialReader(
            lambda: self.client, lambda: self.scripts, fake=opts.scheme == "fakeredis"
        )
        self._db = RedisDB(opts)
        self.accelerated_holds = accel.enabled_for(opts)
        runner.install()  # Runner.run on this backend: clean stop on SIGTERM, the Dask fix
        self.batched_observation = accel.batching_for(opts, self.accelerated_holds)

    @property
    def stop_options(self) -> Options:
        """What runner.py reads: trap_signals and stop_grace (and that the storage is ours)."""
        return self._opts

    @property
    def client(self):
        # a forked child must not share its parent's sockets
        if self._client is None or self._pid != os.getpid():
            self._client = make_client(self._opts)
            self._scripts = Scripts(
                self._client,
                self._opts.replica_acks,
                self._opts.replica_ack_timeout,
                self._opts.redacted,
            )
            self._lock = LockClient(
                self._client, self._scripts, self._opts.lock_ttl, self._opts.state_secret
            )
            self._pid = os.getpid()
        return self._client

    @property
    def scripts(self) -> Scripts:
        self.client  # noqa: B018 - connects lazily
        return self._scripts

    @property
    def lock(self) -> LockClient:
        self.client  # noqa: B018
        return self._lock

    def _guard(self):
        return translate_errors(self._opts.redacted, name_denial)

    def set_up(self) -> None:
        """Check the server once, without retries (a wrong host or password fails at once):
        TLS spoken where asked, version, eviction and persistence, schema version (written on
        a fresh database). ``Redis(setup=True)`` runs it; a caller that must look at the
        resolved options first constructs with ``setup=False``, then calls it."""
        if self._opts.scheme == "rediss":
            refuse_plain_server_for_tls(self._opts)
        with self._guard(), fail_fast(self.client):
            self._setup()

    def _setup(self):
        if self._opts.scheme != "fakeredis":  # fakeredis has no INFO
            info = server_info(self.client)
            if info is not None:
                check_server(info, self._opts.redacted)
        stored = migrations.stored_version(self.client, self._keys)
        if stored is None:
            self.client.setnx(self._keys.schema, migrations.SCHEMA_VERSION)
        elif stored > migrations.SCHEMA_VERSION:
            raise migrations.newer_schema_error(self._opts.prefix, stored)
        elif stored < migrations.SCHEMA_VERSION:
            raise migrations.older_schema_error(self._opts.prefix, stored, self._opts.redacted)

    def _ek(self, exp_id) -> ExperimentKeys:
        try:  # memoised: every hot-path call needs the keys of its experiment
            return self._eks[exp_id]
        except KeyError:
            keys = self._eks[exp_id] = self._keys.experiment(exp_id)
            return keys
        except TypeError:  # an unhashable id
            return self._keys.experiment(exp_id)

    # -- benchmarks and experiments (experiments.py) -------------------------------------------
    def create_benchmark(self, config):
        """Insert a benchmark, unique on its name."""
        with self._guard():
            self._experiments.create_benchmark(config)
        return 1

    def fetch_benchmark(self, query_, selection=None):
        with self._guard():
            return self._experiments.fetch_benchmarks(query_, selection)

    def create_experiment(self, config, algo_locked=0, algo_state=None, algo_heartbeat=None):
        """Insert an experiment (unique name+version and _id) and initialise its lock."""
        with self._guard():
            self._experiments.create(config)
            self._init_lock(
                self._ek(config["_id"]),
                config.get("algorithm", {}),
                state=algo_state,
                locked=bool(algo_locked),
                heartbeat=algo_heartbeat,
            )
        return 1

    def fetch_experiments(self, query_, selection=None):
        """Experiments matching a Mongo-style query, in creation order."""
        with self._guard():
            return self._experiments.fetch(query_, selection)

    def update_experiment(self, experiment=None, uid=None, where=None, **kwargs):
        """Top-level set of fields (nested dicts replaced whole); returns the count updated."""
        uid = get_uid(experiment, uid)
        with self._guard():
            return self._experiments.update(uid, where, kwargs)

    def delete_experiment(self, experiment=None, uid=None):
        """Delete the experiment document (not its trials nor its lock, like Legacy)."""
        uid = get_uid(experiment, uid)
        with self._guard():
            return self._experiments.delete(uid)

    # -- trials: writes (writes.py) -----------------------------------------------------------
    def register_trial(self, trial):
        """Insert a new trial; ``DuplicateKeyError`` if (experiment, id) exists."""
        trial_id = trial.id  # hashes the params: once per call
        doc = to_doc(trial, trial_id)
        doc.setdefault("_id", trial_id)  # a truthy, unique _id, kept as id_override
        validate_status(doc["status"])
        with self._guard():
            rc = self._writes.register(self._ek(doc["experiment"]), doc, escape(trial_id))
        if rc == -1:
            raise DuplicateKeyError(
                f"Duplicate key error: index=experiment_1_id_1 value=({doc['experiment']!r}, "
                f"{trial_id!r})"
            )
        trial.id_override = doc["_id"]
        return trial

    def reserve_trial(self, experiment):
        """Reserve one pending trial (new, suspended or interrupted) or return None."""
        ek = self._ek(get_uid(experiment))
        with self._guard():
            reply = self._writes.reserve(ek, self._opts.lease, lease.HOLDER.record())
        if len(reply) < 3:
            return None
        self._keeper().hold(ek, reply[0].decode())  # renewed; released on SIGTERM
        it = iter(reply[1:])
        return self._reads.trial(dict(zip(it, it)), ek.trial_prefix + reply[0].decode())

    def _keeper(self) -> lease.LeaseKeeper:
        return lease.keeper(self._opts)

    def _patch_held(
        self, ek, trial_id, was, fields, new_status=None, score="", observed=None
    ) -> tuple:
        """writes.patch of a trial; one this worker reserved must still be held by it (refused
        once its lease ran out and another worker took it). Inside the client's observe or
        release of a batching storage, the trial ``observed()`` returns is recorded for the
        algorithm in the same script (accel.recording). (rc, the holder id checked)."""
        keeper, token = self._keeper(), escape(trial_id)
        holder = keeper.holder_check(ek, token) if was == "reserved" else ""
        recorded = accel.recording(self) if observed is not None and was == "reserved" else None
        with self._guard():
            record = b"" if recorded is None else self.lock.encode_entry(observed())
            rc = self._writes.patch(ek, trial_id, was, fields, new_status, score, holder, record)
        if rc == 1 and recorded is not None:
            recorded.add(trial_id)
        if rc == 1 and holder and (new_status or was) != "reserved":
            keeper.gave_up(ek, token)
        return rc, holder

    def set_trial_status(self, trial, status, heartbeat=None, was=None):
        """Compare-and-set the status (``was`` defaults to ``trial.status``). An explicit
        heartbeat datetime is stored and scored as given (as ``register_trial`` does: a caller
        may age a trial); anything else means now, on the server's clock."""
        score = "now"
        if isinstance(heartbeat, datetime.datetime):
            score = repr(codec.epoch(heartbeat))
        else:
            heartbeat = codec.utcnow()  # Oríon sometimes passes an int here
        was = was or trial.status
        validate_status(status)
        validate_status(was)
        fields = ["status", codec.dumps(status), "heartbeat", codec.dumps(heartbeat)], ()
        rc, _ = self._patch_held(
            self._ek(trial.experiment),
            trial.id,
            was,
            fields,
            status,
            score,
            lambda: with_status(trial, status),
        )
        if rc != 1:
            raise FailedUpdate(
                f"trial {trial.id} is not {was!r} in storage"
                if rc == 0
                else f"trial {trial.id} does not exist in storage"
            )
        trial.status = status

    def update_heartbeat(self, trial):
        """Refresh the heartbeat of a reserved trial; 0 (stop the pacemaker) otherwise, also
        when another worker holds it now."""
        fields = ["heartbeat", codec.dumps(codec.utcnow())], ()
        rc, _ = self._patch_held(
            self._ek(trial.experiment), trial.id, "reserved", fields, None, "now"
        )
        return max(0, rc)

    def push_trial_results(self, trial):
        """Write the whole trial, only while it is reserved (by this worker, if it reserved
        it); ``FailedUpdate`` otherwise."""
        trial_id = trial.id  # hashes the params: once per call
        doc = to_doc(trial, trial_id)
        ek = self._ek(trial.experiment)
        rc, holder = self._patch_held(
            ek, trial_id, "reserved", doc, doc.get("status"), "", lambda: trial
        )
        if rc != 1:
            taken = " by this worker (if its lease ran out, another worker took it)"
            raise FailedUpdate(
                f"trial {trial_id} is not reserved in storage{taken if holder else ''}"
            )
        return rc

    def update_trial(self, trial=None, uid=None, experiment_uid=None, where=None, **kwargs):
        """Set fields of one trial if it matches ``where``; returns 1 or 0."""
        trial_uid, experiment_uid = get_trial_uid_and_exp(trial, uid, experiment_uid)
        ek = self._ek(experiment_uid)
        # like Legacy, the trial's own id and experiment replace those of ``where``
        where = {k: v for k, v in (where or {}).items() if k not in ("id", "experiment")}
        with self._guard():
            docs = self._reads.read(ek, [escape(trial_uid)])
            if not docs or not query.matches(docs[0], where):
                return 0
            return self._writes.apply_update(ek, docs[0], kwargs)

    def update_trials(self, experiment=None, uid=None, where=None, **kwargs):
        """Set fields of every trial matching ``where``; returns the count updated."""
        ek = self._ek(get_uid(experiment, uid))
        with self._guard():
            return sum(
                self._writes.apply_update(ek, doc, kwargs)
                for doc in self._reads.matching(ek, where)
            )

    def delete_trials(self, experiment=None, uid=None, where=None):
        """Delete the trials matching ``where``; returns the count deleted."""
        ek = self._ek(get_uid(experiment, uid))
        with self._guard():
            tokens = [escape(d["id"]) for d in self._reads.matching(ek, where)] if where else None
            return self._writes.delete(ek, tokens)

    # -- trials: reads (cache.py) -----------------------------------------------------------
    def fetch_trials(self, experiment=None, uid=None, where=None):
        """All trials of an experiment matching ``where``, sorted by submit_time."""
        uid = get_uid(experiment, uid)
        ek = self._ek(uid)
        # like Legacy, the experiment of ``where`` is replaced by ``uid``
        where = {k: v for k, v in (where or {}).items() if k != "experiment"}
        with self._guard():
            if indexed(where):
                return self._reads.build(self._reads.matching(ek, where))
            cache = self._reads.all(ek)
        with no_gc():
            if not where:
                return [clone_trial(trial) for trial in cache.ordered()]
            return [
                clone_trial(trial)
                for trial, doc in cache.ordered_pairs()
                if query.matches(doc, where)
            ]

    def get_trial(self, trial=None, uid=None, experiment_uid=None):
        trial_uid, experiment_uid = get_trial_uid_and_exp(trial, uid, experiment_uid)
        if not isinstance(trial_uid, str):  # trial ids are strings: Legacy finds nothing
            return None
        with self._guard():
            docs = self._reads.read(self._ek(experiment_uid), [escape(trial_uid)])
        return self._reads.build(docs)[0] if docs else None

    def retrieve_result(self, trial, *args, **kwargs):
        """Results already sit on the trial object (as with Legacy)."""
        return trial

    def fetch_lost_trials(self, experiment):
        """Reserved trials without a heartbeat for 5 x worker.heartbeat or whose reservation
        lease ended (lease.py), on the server clock."""
        ek = self._ek(get_uid(experiment))
        with self._guard():
            tokens = lease.lost_tokens(self.scripts, ek)
            docs = self._reads.read(ek, [t.decode() for t in tokens])
        return self._reads.build([d for d in docs if d.get("status") == "reserved"])

    def _by_statuses(self, experiment, statuses) -> list[Trial]:
        ek = self._ek(get_uid(experiment))
        with self._guard():
            return self._reads.build(self._reads.matching(ek, {"status": {"$in": list(statuses)}}))

    def fetch_pending_trials(self, experiment):
        return self._by_statuses(experiment, PENDING)

    def fetch_noncompleted_trials(self, experiment):
        return self._by_statuses(experiment, [s for s in STATUSES if s != "completed"])

    def fetch_trials_by_status(self, experiment, status):
        return self._by_statuses(experiment, [status])

    def count_by_status(self, experiment, statuses) -> list[int]:
        """How many trials are in each of ``statuses`` (one round trip; stepreads.py)."""
        with self._guard():
            return count_by_status(self.client, self._ek(get_uid(experiment)), statuses)

    def count_completed_trials(self, experiment):
        return self.count_by_status(experiment, ["completed"])[0]

    def count_broken_trials(self, experiment):
        return self.count_by_status(experiment, ["broken"])[0]

    # -- algorithm lock -----------------------------------------------------------------------
    def initialize_algorithm_lock(self, experiment_id, algorithm_config):
        """Create the lock record if absent; returns 1 if created, 0 if it existed."""
        with self._guard():
            return self.lock.initialize(self._ek(experiment_id), algorithm_config)

    def release_algorithm_lock(self, experiment=None, uid=None, new_state=None):
        """Release the lock whoever holds it (``orion db release``); 1 if there is a lock."""
        uid = get_uid(experiment, uid)
        with self._guard():
            return self.lock.force_release(self._ek(uid), new_state)

    def get_algorithm_lock_info(self, experiment=None, uid=None):
        uid = get_uid(experiment, uid)
        with self._guard():
            return self._lock_info(self._ek(uid))

    def delete_algorithm_lock(self, experiment=None, uid=None):
        uid = get_uid(experiment, uid)
        with self._guard():
            return self.lock.delete(self._ek(uid))

    @contextlib.contextmanager
    def acquire_algorithm_lock(self, experiment=None, uid=None, timeout=60, retry_interval=1):
        """Hold the algorithm lock (TTL ``lock_ttl``, renewed while held), Oríon's signature.
        The held state also carries the trials waiting to be observed (``lock.Held``)."""
        uid = get_uid(experiment, uid)
        with (
            self._guard(),
            self.lock.hold(self._ek(uid), timeout, retry_interval) as locked,
        ):
            yield locked

    # -- batched observation ------------------------------------------------------------------
    def observe_later(self, experiment, trial) -> int:
        """Record ``trial`` for the next hold to observe; returns the backlog's length."""
        with self._guard():
            return self.lock.observe_later(self._ek(get_uid(experiment)), trial)

    def backlog_length(self, experiment=None, uid=None) -> int:
        """Trials completed or released but not yet observed by the algorithm."""
        with self._guard():
            return self.lock.backlog_length(self._ek(get_uid(experiment, uid)))
