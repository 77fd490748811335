"""Retries without double effects: a TCP proxy drops the connection after a request reached
Redis but before its reply came back; redis-py retries; the data must show one effect."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid

import pytest
from orion.core.worker.trial import Trial

from helpers import Exp, create_experiment, make_trial
from orion_track_redis import Redis

pytestmark = pytest.mark.timeout(20)  # a retry, not a socket timeout, must end each call


class CuttingProxy:
    """Loopback proxy to a Redis; ``cut(n)`` drops the next n replies by closing the link."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._to_cut = 0
        self._lock = threading.Lock()
        self.cuts = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, replies: int = 1):
        with self._lock:
            self._to_cut = replies

    def _take_cut(self) -> bool:
        with self._lock:
            if self._to_cut > 0:
                self._to_cut -= 1
                self.cuts += 1
                return True
            return False

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source, sink, replies):
        try:
            while data := source.recv(65536):
                if replies and self._take_cut():
                    break  # the request was executed; its reply is lost
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:  # shutdown first: it sends FIN and wakes the other pump's blocked recv
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.fixture
def through_proxy(redis_server):
    proxy = CuttingProxy(redis_server.port)
    prefix = f"proxy-{uuid.uuid4().hex[:8]}"
    # a socket_timeout far above the test's time budget: only a real retry can make it pass
    storage = Redis(
        uri=f"redis://127.0.0.1:{proxy.port}?retries=3&retry_backoff=0.01&socket_timeout=60",
        prefix=prefix,
    )
    direct = Redis(uri=redis_server.url, prefix=prefix)  # to check the data behind the proxy
    exp_id = create_experiment(storage)
    storage.register_trial(make_trial(exp_id, x=0.0))  # scripts loaded, connection warm
    return proxy, storage, direct, exp_id


def test_reserve_retried_reserves_one_trial(through_proxy):
    proxy, storage, direct, exp_id = through_proxy
    storage.register_trial(make_trial(exp_id, x=1.0))
    proxy.cut()
    trial = storage.reserve_trial(Exp(exp_id))
    assert proxy.cuts == 1 and trial is not None
    reserved = direct.fetch_trials_by_status(Exp(exp_id), "reserved")
    assert [t.id for t in reserved] == [trial.id], "the retry got the same trial, not a second"


def test_register_retried_is_not_a_duplicate(through_proxy):
    proxy, storage, direct, exp_id = through_proxy
    proxy.cut()
    trial = storage.register_trial(make_trial(exp_id, x=2.0))  # no DuplicateKeyError
    assert proxy.cuts == 1
    assert [t.id for t in direct.fetch_trials(uid=exp_id)].count(trial.id) == 1


def test_status_change_retried_does_not_fail_its_own_cas(through_proxy):
    proxy, storage, direct, exp_id = through_proxy
    trial = storage.reserve_trial(Exp(exp_id))
    proxy.cut()
    storage.set_trial_status(trial, "interrupted", was="reserved")  # no FailedUpdate
    assert proxy.cuts == 1
    assert direct.get_trial(trial).status == "interrupted"
    assert direct.fetch_pending_trials(Exp(exp_id))[0].id == trial.id


def test_heartbeat_and_push_retried(through_proxy):
    proxy, storage, direct, exp_id = through_proxy
    trial = storage.reserve_trial(Exp(exp_id))
    proxy.cut()
    assert storage.update_heartbeat(trial) == 1
    trial.results = [Trial.Result(name="loss", type="objective", value=1.5)]
    proxy.cut()
    assert storage.push_trial_results(trial) == 1
    assert proxy.cuts == 2
    assert direct.get_trial(trial).objective.value == 1.5


def test_lock_acquire_and_release_retried(through_proxy, caplog):
    proxy, storage, direct, exp_id = through_proxy
    caplog.set_level(logging.WARNING)
    proxy.cut()
    start = time.monotonic()
    with storage.acquire_algorithm_lock(uid=exp_id, timeout=10) as locked:
        assert time.monotonic() - start < 5, "the retry got its own hold back, no TTL wait"
        locked.set_state({"n": 1})
        proxy.cut()
    assert proxy.cuts == 2
    info = direct.get_algorithm_lock_info(uid=exp_id)
    assert info.state == {"n": 1} and not info.locked
    assert "expired" not in caplog.text, "a retried release is not a lost lock"
