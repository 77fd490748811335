"""Prometheus metrics of a fleet (``orion-redis metrics``), read from the indexes only.

Every scrape walks the experiment index (``{P}:exps``) and, per experiment, reads the same
round trip as ``orion-redis status`` (:func:`admin.experiment_status` with ``details``): the
status sorted sets' sizes, the lost-trial range, the lock record and holder, the live waiters'
leases, the latest completion and the hold durations the workers record at each release
(``{P:E}:holds``, a list capped at :data:`keys.HOLDS_KEEP`). No KEYS or SCAN, and no talking
to the workers. Series (labels ``prefix``, ``experiment``, ``version``), all gauges unless
said otherwise:

- ``orion_redis_trials{status}``: trials by status;
- ``orion_redis_lost_trials``: reserved trials without heartbeat for 5 x worker.heartbeat, or
  whose reservation lease ended (store/lease.py);
- ``orion_redis_recovered_trials_total`` (counter): trials recovered from dead holders;
- ``orion_redis_unobserved_trials``: the batched-observation backlog;
- ``orion_redis_state_bytes{part}``: the algorithm state's snapshot and its log of deltas
  (``part`` = snapshot | log; the log stays under the snapshot's size, lock.COMPACT_RATIO);
- ``orion_redis_lock_held`` (0/1), ``orion_redis_lock_stale`` (0/1: a holder key without TTL),
  ``orion_redis_lock_holder_age_seconds`` (0 when free), ``orion_redis_lock_waiters``;
- ``orion_redis_lock_acquisitions_total`` (counter: the lock's fence);
- ``orion_redis_lock_hold_seconds{quantile}`` (0.5, 0.9, 0.99, 1 = max) and
  ``orion_redis_lock_holds_recorded``: over the last recorded holds;
- ``orion_redis_completions_per_minute`` (completions in the last 60 s of server time),
  ``orion_redis_last_completion_age_seconds`` (absent before the first completion);
- without experiment labels: ``orion_redis_up`` (0 at once when Redis cannot be read: a
  scrape never retries), ``orion_redis_experiments``,
  ``orion_redis_lock_ttl_seconds`` (the exporter's ``lock_ttl``: give it the fleet's),
  ``orion_redis_scrape_duration_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time

from orion_track_redis.errors import RedisStorageError
from orion_track_redis.keys import STATUSES
from orion_track_redis.ops import admin
from orion_track_redis.server.connection import fail_fast

log = logging.getLogger(__name__)

QUANTILES = (0.5, 0.9, 0.99, 1.0)
INSTALL_HINT = "pip install 'orion-track-redis[metrics]'"
LABELS = ("prefix", "experiment", "version")


def require_client():
    """prometheus_client, or ImportError saying how to install it."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(f"orion-redis metrics needs prometheus_client: {INSTALL_HINT}") from exc
    return prometheus_client


def quantile(sorted_values: list, q: float) -> float:
    """Nearest-rank quantile of a non-empty sorted list (q=1: the maximum)."""
    rank = max(1, -(-int(q * 1000) * len(sorted_values) // 1000))  # ceil(q * n), exact
    return sorted_values[min(rank, len(sorted_values)) - 1]


def snapshot(storage) -> list[dict]:
    """One :func:`admin.experiment_status` row (with details) per experiment."""
    docs = storage.fetch_experiments({}, {"name": 1, "version": 1})
    return [admin.experiment_status(storage, doc, details=True) for doc in docs]


class FleetCollector:
    """A prometheus_client collector: each ``collect()`` is one read of the storage."""

    def __init__(self, storage):
        self.storage = storage
        self.prefix = storage.backend.opts.prefix
        self._lock = threading.Lock()  # concurrent scrapes take turns on the storage

    def describe(self):
        return []  # no description at registration: that would read the storage

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        start = time.perf_counter()
        up = GaugeMetricFamily(
            "orion_redis_up", "1 if the last scrape read the storage", labels=["prefix"]
        )
        with self._lock, fail_fast(self.storage.backend.client):
            # no retries: Prometheus scrapes again anyway, and a scrape that waited out the
            # retry budget of a worker (~10 s) would hit its scrape timeout instead of up=0
            try:
                rows = snapshot(self.storage)
            except RedisStorageError as exc:
                log.warning("metrics scrape failed: %s", exc)
                up.add_metric([self.prefix], 0)
                yield up
                return
        up.add_metric([self.prefix], 1)
        yield up

        def gauge(name, doc, extra=()):
            return GaugeMetricFamily(name, doc, labels=[*LABELS, *extra])

        trials = gauge("orion_redis_trials", "trials by status", ["status"])
        lost = gauge(
            "orion_redis_lost_trials",
            "reserved trials whose heartbeat is older than 5 x worker.heartbeat or whose "
            "reservation lease ended",
        )
        recovered = CounterMetricFamily(
            "orion_redis_recovered_trials",
            "trials recovered from dead holders (their lease ended)",
            labels=list(LABELS),
        )
        unobserved = gauge(
            "orion_redis_unobserved_trials",
            "completed/released trials waiting to be observed (batched)",
        )
        state = gauge(
            "orion_redis_state_bytes",
            "algorithm state stored: the snapshot and the log of deltas since it",
            ["part"],
        )
        held = gauge("orion_redis_lock_held", "1 while a worker holds the algorithm lock")
        stale = gauge(
            "orion_redis_lock_stale",
            "1 if the lock's holder key has no TTL (it would never free itself)",
        )
        age = gauge(
            "orion_redis_lock_holder_age_seconds",
            "seconds since the current holder took the lock (0 when free)",
        )
        waiters = gauge("orion_redis_lock_waiters", "workers waiting for the lock (live lease)")
        acquisitions = CounterMetricFamily(
            "orion_redis_lock_acquisitions",
            "algorithm-lock acquisitions (the lock's fence)",
            labels=list(LABELS),
        )
        hold = gauge(
            "orion_redis_lock_hold_seconds",
            "algorithm-lock hold durations over the recorded holds (quantile 1: max)",
            ["quantile"],
        )
        recorded = gauge(
            "orion_redis_lock_holds_recorded", "holds the quantiles are computed over (capped list)"
        )
        per_minute = gauge(
            "orion_redis_completions_per_minute", "trials completed in the last 60 s (server time)"
        )
        last = gauge(
            "orion_redis_last_completion_age_seconds", "seconds since the latest completion"
        )
        for row in rows:
            labels = [self.prefix, str(row["experiment"]), str(row["version"])]
            for status in STATUSES:
                trials.add_metric([*labels, status], row[status])
            lost.add_metric(labels, row["lost"])
            recovered.add_metric(labels, row["recovered"])
            unobserved.add_metric(labels, row["unobserved"])
            state.add_metric([*labels, "snapshot"], row["snapshot_bytes"])
            state.add_metric([*labels, "log"], row["log_bytes"])
            held.add_metric(labels, int(row["lock"] in ("held", "stale")))
            stale.add_metric(labels, int(row["lock"] == "stale"))
            age.add_metric(labels, row["holder_age_s"] or 0.0)
            waiters.add_metric(labels, row["waiters"])
            if row["fence"] != "":
                acquisitions.add_metric(labels, row["fence"])
            durations = sorted(row["hold_ms"])
            if durations:
                for q in QUANTILES:
                    hold.add_metric(
                        [*labels, f"{q:g}"], round(quantile(durations, q) / 1000, 7)
                    )  # 0.1 ms stored
            recorded.add_metric(labels, len(durations))
            per_minute.add_metric(labels, row["completed/min"])
            if row["last_completed_age_s"] is not None:
                last.add_metric(labels, row["last_completed_age_s"])
        yield from (
            trials,
            lost,
            recovered,
            unobserved,
            state,
            held,
            stale,
            age,
            waiters,
            acquisitions,
            hold,
            recorded,
            per_minute,
            last,
        )

        def fleet_gauge(name, doc, value):
            family = GaugeMetricFamily(name, doc, labels=["prefix"])
            family.add_metric([self.prefix], value)
            return family

        yield fleet_gauge("orion_redis_experiments", "experiments under this prefix", len(rows))
        yield fleet_gauge(
            "orion_redis_lock_ttl_seconds",
            "lock_ttl given to the exporter (alert threshold; use the fleet's)",
            self.storage.backend.opts.lock_ttl,
        )
        yield fleet_gauge(
            "orion_redis_scrape_duration_seconds",
            "time this scrape took to read the storage",
            time.perf_counter() - start,
        )


def registry(storage):
    """A registry holding only the fleet collector (no metrics of the exporter process)."""
    prometheus_client = require_client()
    reg = prometheus_client.CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(storage))
    return reg


def render(storage) -> str:
    """One scrape in Prometheus' text format."""
    prometheus_client = require_client()
    return prometheus_client.generate_latest(registry(storage)).decode()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(storage, listen: str, ready=None) -> None:
    """Serve ``/metrics`` on ``listen`` until interrupted. ``ready(host, port)`` is called
    once the socket listens (port 0: the one the system chose)."""
    prometheus_client = require_client()
    host, port = parse_listen(listen)
    server, thread = prometheus_client.start_http_server(
        port, addr=host, registry=registry(storage)
    )
    try:
        if ready is not None:
            ready(host, server.server_address[1])
        thread.join()
    finally:
        server.shutdown()
        server.server_close()
