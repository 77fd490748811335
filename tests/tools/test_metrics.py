"""`orion-redis metrics`: Prometheus' text format read from the indexes, checked against the
storage; scraped over HTTP during a live `orion hunt` (issue 16, part 3)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from helpers import Exp, create_experiment, hunt_config, make_trial
from orion_track_redis import Redis
from orion_track_redis.keys import STATUSES
from orion_track_redis.ops.cli import main
from orion_track_redis.store import lock as lock_module

prometheus_parser = pytest.importorskip("prometheus_client.parser")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BIN = Path(sys.executable).parent


@pytest.fixture
def uri(redis_server):
    return f"{redis_server.url}/0?prefix=metrics-{uuid.uuid4().hex[:8]}"


def parse(text: str) -> dict:
    """{(name, frozenset(labels without prefix)): value} of one scrape."""
    samples = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "prefix"}
            samples[sample.name, frozenset(labels.items())] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[name, frozenset((k, str(v)) for k, v in labels.items())]


def scrape_once(capsys, uri) -> dict:
    assert main(["--uri", uri, "metrics", "--once"]) == 0
    return parse(capsys.readouterr().out)


def test_once_matches_the_storage_lock_held_waiter_and_lost(capsys, uri, heartbeat, redis_server):
    import datetime

    heartbeat(1)
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="watched")
    statuses = ["new", "new", "completed", "broken", "interrupted", "suspended"]
    for i, status in enumerate(statuses):
        storage.register_trial(make_trial(exp_id, x=float(i), status=status))
    old = datetime.datetime.utcnow() - datetime.timedelta(seconds=60)
    storage.register_trial(make_trial(exp_id, x=9.0, status="reserved", heartbeat=old))
    client = redis_server.client()
    commands_before = client.info("commandstats")

    holding = storage.acquire_algorithm_lock(uid=exp_id, timeout=5)
    holding.__enter__()

    def wait_then_hold():
        with Redis(uri=uri).acquire_algorithm_lock(uid=exp_id, timeout=30, retry_interval=0.2):
            pass

    waiter = threading.Thread(target=wait_then_hold, daemon=True)
    try:
        waiter.start()
        time.sleep(1.2)  # the holder ages; the waiter has joined the queue
        samples = scrape_once(capsys, uri)
    finally:
        holding.__exit__(None, None, None)
    waiter.join(timeout=30)
    assert not waiter.is_alive()

    labels = {"experiment": "watched", "version": 1}
    for status in STATUSES:
        expected = statuses.count(status) + (status == "reserved")
        assert value(samples, "orion_redis_trials", status=status, **labels) == expected
    assert value(samples, "orion_redis_lost_trials", **labels) == 1
    assert value(samples, "orion_redis_lock_held", **labels) == 1
    assert value(samples, "orion_redis_lock_stale", **labels) == 0
    assert 1.0 <= value(samples, "orion_redis_lock_holder_age_seconds", **labels) < 30
    assert value(samples, "orion_redis_lock_waiters", **labels) == 1
    assert value(samples, "orion_redis_lock_acquisitions_total", **labels) == 1
    assert value(samples, "orion_redis_lock_holds_recorded", **labels) == 0
    assert (
        "orion_redis_lock_hold_seconds",
        frozenset({**{k: str(v) for k, v in labels.items()}, "quantile": "0.5"}.items()),
    ) not in samples
    assert value(samples, "orion_redis_completions_per_minute", **labels) == 1
    assert value(samples, "orion_redis_experiments") == 1
    assert value(samples, "orion_redis_up") == 1
    assert value(samples, "orion_redis_lock_ttl_seconds") == 30

    # both holds are recorded: the holder's (>= 1.2 s) and the waiter's (short)
    samples = scrape_once(capsys, uri)
    assert value(samples, "orion_redis_lock_acquisitions_total", **labels) == 2
    assert value(samples, "orion_redis_lock_holds_recorded", **labels) == 2
    assert value(samples, "orion_redis_lock_held", **labels) == 0
    assert value(samples, "orion_redis_lock_waiters", **labels) == 0
    assert value(samples, "orion_redis_lock_holder_age_seconds", **labels) == 0
    assert 1.2 <= value(samples, "orion_redis_lock_hold_seconds", quantile="1", **labels) < 30
    assert value(samples, "orion_redis_lock_hold_seconds", quantile="0.5", **labels) < 1.2

    # a forced release (orion db release) records nothing; the holder whose lock was taken
    # away records its hold when it ends (the holds an operator looks for)
    holding = storage.acquire_algorithm_lock(uid=exp_id, timeout=5)
    holding.__enter__()
    assert storage.release_algorithm_lock(uid=exp_id) == 1
    samples = scrape_once(capsys, uri)
    assert value(samples, "orion_redis_lock_held", **labels) == 0
    assert value(samples, "orion_redis_lock_holds_recorded", **labels) == 2
    holding.__exit__(None, None, None)
    samples = scrape_once(capsys, uri)
    assert value(samples, "orion_redis_lock_holds_recorded", **labels) == 3

    commands = client.info("commandstats")
    for command in ("cmdstat_keys", "cmdstat_scan"):  # the indexes only
        assert commands.get(command) == commands_before.get(command), command
    client.close()


def test_hold_durations_are_capped_newest_first(uri, monkeypatch):
    monkeypatch.setattr(lock_module, "HOLDS_KEEP", 4)
    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="holds")
    for pause in (0.0, 0.0, 0.0, 0.0, 0.0, 0.15):
        with storage.acquire_algorithm_lock(uid=exp_id, timeout=5):
            time.sleep(pause)
    held = [
        float(v)
        for v in storage.client.lrange(storage.backend.experiment_keys(exp_id).holds, 0, -1)
    ]
    assert len(held) == 4
    assert held[0] >= 150 and all(v < 150 for v in held[1:]), held
    assert storage.delete_algorithm_lock(uid=exp_id) == 1
    assert not storage.client.exists(storage.backend.experiment_keys(exp_id).holds)


def test_quantiles_are_nearest_rank():
    from orion_track_redis.ops.metrics import quantile

    values = [float(v) for v in range(1, 101)]
    assert [quantile(values, q) for q in (0.5, 0.9, 0.99, 1.0)] == [50, 90, 99, 100]
    assert quantile([7.0], 0.5) == 7.0 and quantile([1.0, 2.0], 0.99) == 2.0


def test_without_prometheus_client_says_what_to_install(uri, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    assert main(["--uri", uri, "metrics", "--once"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'orion-track-redis[metrics]'" in err


def test_bad_listen_address_is_a_usage_error(uri, capsys):
    assert main(["--uri", uri, "metrics", "--listen", "nowhere"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_redis_down_is_up_0_at_once(tmp_path):
    """A scrape does not wait out the workers' retry budget (~10 s, past Prometheus' scrape
    timeout): Redis unreachable is orion_redis_up 0 at once, with no experiment series."""
    from orion_track_redis.ops import metrics
    from orion_track_redis.testing import RedisServer

    with RedisServer(tmp_path) as server:
        server.start()
        storage = Redis(uri=f"{server.url}/0?prefix=down")
        create_experiment(storage, name="gone")
        assert value(parse(metrics.render(storage)), "orion_redis_up") == 1
        server.stop()
        start = time.monotonic()
        samples = parse(metrics.render(storage))
        elapsed = time.monotonic() - start
    assert value(samples, "orion_redis_up") == 0 and elapsed < 3, elapsed
    assert not any(name == "orion_redis_trials" for name, _ in samples)


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_grafana_dashboard_and_alert_rules_use_only_exported_series(capsys, uri):
    """Every orion_redis_* name in docs/grafana-dashboard.json and docs/prometheus-alerts.yml
    is a series the exporter emits (a renamed series breaks this test, not a dashboard)."""
    import json

    import yaml

    storage = Redis(uri=uri)
    exp_id = create_experiment(storage, name="all-series")
    storage.register_trial(make_trial(exp_id, status="completed"))
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=5):
        pass
    exported = {name for name, _ in scrape_once(capsys, uri)}
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {name for e in exprs for name in re.findall(r"orion_redis_\w+", e)}
    assert len(used) >= 12 and used <= exported, used - exported
    assert len(dashboard["panels"]) >= 10


def test_alert_rules_fire_as_documented():
    """promtool checks docs/prometheus-alerts.yml and runs its unit tests (lost trials for
    10 min, a hold above lock_ttl, no completion while work is left)."""
    import shutil

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not installed (.ci/run unpacks it from Debian's prometheus "
            "package); the alert rules were not checked"
        )
    for args in (
        ["check", "rules", "prometheus-alerts.yml"],
        ["test", "rules", "prometheus-alerts.test.yml"],
    ):
        proc = subprocess.run(
            [promtool, *args], cwd=DOCS, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _hunt_config(tmp_path, uri) -> Path:
    return hunt_config(tmp_path / "orion_config.yaml", uri, tmp_path / "trials")


def _start_exporter(uri):
    proc = subprocess.Popen(
        [str(BIN / "orion-redis"), "--uri", uri, "metrics", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
    if not match:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"exporter did not start: {line}{out}{err}")
    return proc, f"http://127.0.0.1:{match[1]}/metrics"


def _scrape(url) -> tuple[dict, str]:
    with urllib.request.urlopen(url, timeout=30) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return parse(text), text


@pytest.mark.slow
def test_scraped_over_http_during_a_live_hunt(redis_server, tmp_path):
    """3 `orion hunt` workers, 20 trials; the endpoint is scraped all along. Each scrape's
    trial counts lie between two storage reads around it, acquisitions never decrease, the
    hold quantiles are ordered; after the hunt every number equals the storage's."""
    prefix = f"metrics-hunt-{uuid.uuid4().hex[:8]}"
    uri = f"{redis_server.url}/0?prefix={prefix}"
    name = "watched-hunt"
    cmd = [
        str(BIN / "orion"),
        "hunt",
        "--config",
        str(_hunt_config(tmp_path, uri)),
        "-n",
        name,
        "--max-trials",
        "20",
        sys.executable,
        str(EXAMPLES / "objective.py"),
        "-x~uniform(-5, 5)",
        "-y~uniform(-5, 5)",
    ]
    env = dict(os.environ, ORION_REDIS_URI="")
    storage = Redis(uri=uri)
    exporter, url = _start_exporter(uri)
    workers = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
        )
        for _ in range(3)
    ]
    labels = {"experiment": name, "version": 1}
    scrapes, live, durations = 0, 0, []
    acquisitions = []
    try:
        deadline = time.monotonic() + 300
        while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            docs = storage.fetch_experiments({"name": name})
            if docs:
                exp_id = docs[0]["_id"]
                before = {
                    s: len(storage.fetch_trials_by_status(Exp(exp_id), s)) for s in ("completed",)
                }
                total_before = len(storage.fetch_trials(uid=exp_id))
                samples, _ = _scrape(url)
                total_after = len(storage.fetch_trials(uid=exp_id))
                after = len(storage.fetch_trials_by_status(Exp(exp_id), "completed"))
                scrapes += 1
                total = sum(
                    value(samples, "orion_redis_trials", status=s, **labels) for s in STATUSES
                )
                assert total_before <= total <= total_after
                completed = value(samples, "orion_redis_trials", status="completed", **labels)
                assert before["completed"] <= completed <= after
                live += any(w.poll() is None for w in workers)
                acquisitions.append(value(samples, "orion_redis_lock_acquisitions_total", **labels))
                durations.append(value(samples, "orion_redis_scrape_duration_seconds"))
                if value(samples, "orion_redis_lock_holds_recorded", **labels):
                    qs = [
                        value(samples, "orion_redis_lock_hold_seconds", quantile=q, **labels)
                        for q in ("0.5", "0.9", "0.99", "1")
                    ]
                    assert 0 < qs[0] <= qs[1] <= qs[2] <= qs[3] < 30, qs
            time.sleep(0.3)
        outputs = [w.communicate(timeout=120)[0] for w in workers]
        for worker, out in zip(workers, outputs):
            assert worker.returncode == 0, out[-3000:]

        (exp,) = storage.fetch_experiments({"name": name})
        ek = storage.backend.experiment_keys(exp["_id"])
        trials = storage.fetch_trials(uid=exp["_id"])
        samples, text = _scrape(url)
        for status in STATUSES:
            assert value(samples, "orion_redis_trials", status=status, **labels) == len(
                [t for t in trials if t.status == status]
            ), status
        assert value(samples, "orion_redis_trials", status="completed", **labels) >= 20
        assert value(samples, "orion_redis_lost_trials", **labels) == 0
        assert value(samples, "orion_redis_lock_held", **labels) == 0
        # every acquisition was released by its holder, who recorded its hold
        fence = int(storage.client.hget(ek.lock, "fence"))
        assert value(samples, "orion_redis_lock_acquisitions_total", **labels) == fence
        held_ms = sorted(float(v) for v in storage.client.lrange(ek.holds, 0, -1))
        assert len(held_ms) == fence > 0
        assert value(samples, "orion_redis_lock_holds_recorded", **labels) == fence
        p50 = value(samples, "orion_redis_lock_hold_seconds", quantile="0.5", **labels)
        p99 = value(samples, "orion_redis_lock_hold_seconds", quantile="0.99", **labels)
        assert p50 == pytest.approx(held_ms[math.ceil(0.5 * len(held_ms)) - 1] / 1000)
        assert p99 == pytest.approx(held_ms[math.ceil(0.99 * len(held_ms)) - 1] / 1000)
        assert value(
            samples, "orion_redis_lock_hold_seconds", quantile="1", **labels
        ) == pytest.approx(held_ms[-1] / 1000)
        assert 0 <= value(samples, "orion_redis_last_completion_age_seconds", **labels) < 120
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            if worker.stdout is not None and not worker.stdout.closed:
                worker.communicate()
        exporter.terminate()
        exporter.communicate(timeout=30)  # also closes its pipes
    assert scrapes >= 5 and live >= 3, (scrapes, live)
    assert acquisitions == sorted(acquisitions) and acquisitions[-1] > 0
    print(
        f"\n{scrapes} scrapes during the hunt, read time median "
        f"{sorted(durations)[len(durations) // 2] * 1000:.1f} ms, max "
        f"{max(durations) * 1000:.1f} ms; {fence} holds: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms"
    )


def test_state_bytes_show_the_snapshot_and_the_log(capsys, uri, monkeypatch):
    """orion_redis_state_bytes: the log grows by a delta per hold and is emptied by the
    compaction that rewrites the snapshot (lock.COMPACT_RATIO)."""
    from orion.client import build_experiment

    from orion_track_redis.store import lock

    client = build_experiment(
        "stateful",
        space={"x": "uniform(0, 1)"},
        algorithm={"random": {"seed": 1}},
        storage={"type": "redis", "uri": uri},
    )
    labels = {"experiment": "stateful", "version": 1}
    sizes = []
    for _ in range(3):
        client.observe(client.suggest(), 1.0)
        samples = scrape_once(capsys, uri)
        sizes.append(
            (
                value(samples, "orion_redis_state_bytes", part="snapshot", **labels),
                value(samples, "orion_redis_state_bytes", part="log", **labels),
            )
        )
    assert sizes[0][0] > 0 and 0 < sizes[1][1] < sizes[2][1], sizes  # deltas appended
    assert sizes[1][0] == sizes[2][0]  # the snapshot unchanged meanwhile
    monkeypatch.setattr(lock, "COMPACT_MIN", 0)
    monkeypatch.setattr(lock, "COMPACT_RATIO", 0.01)  # the next release compacts
    client.observe(client.suggest(), 1.0)
    samples = scrape_once(capsys, uri)
    assert value(samples, "orion_redis_state_bytes", part="log", **labels) == 0
    assert value(samples, "orion_redis_state_bytes", part="snapshot", **labels) > sizes[2][0]
    client.close()
