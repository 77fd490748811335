"""A nemesis for real `orion hunt` fleets (issue 17): faults and the invariants checked after them.

Shared by ``tests/faults/test_nemesis.py`` (short CI scenarios) and
``benchmarks/studies/nemesis.py`` (a long randomised run). Pieces:

- ``FaultProxy``: a loopback TCP proxy in threads of the test process, between workers and
  redis-server: ``lossy()`` delays every segment it relays and turns a share of them into the
  pause a TCP retransmission costs or a cut connection; ``blackhole()`` relays nothing and lets
  nothing through (a partition: the worker's calls hang until its socket_timeout); ``heal()``.
- ``Netns``: a network namespace of the test's own, joined to the root namespace by a veth pair
  whose addresses are the test's (10.250.x.0/30); ``tc netem`` on the namespace's end. Workers
  run inside it through ``ip netns exec``. Removed (with its veth) even when the test fails.
- ``Fleet``: N `orion hunt` processes on one experiment, each with its own config (URI), an
  objective that records every run (trial id, worker, params, value, a run nonce it also
  reports as a statistic, so the stored result names the run that completed the trial).
- ``Watcher``: a thread sampling the experiment from the test process over a direct loopback
  connection: completions seen (the acknowledged ones), when each was first seen (throughput).
- ``snapshot()``/``violations()``: the invariants over the data, the runs and the workers, as a
  list of problems (empty: none), so a test can also show that a broken state is caught.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import redis

from helpers import hunt_config
from orion_track_redis import Redis, codec
from orion_track_redis.keys import STATUSES

ORION = str(Path(sys.executable).with_name("orion"))
SPACE = ("-x~uniform(-5, 5)", "-y~uniform(-5, 5)")

# No Oríon import (~3.5 s of CPU each on 2 cores); reports through $ORION_RESULTS_PATH like
# Oríon's report_objective. Sleeps NEMESIS_SLEEP (a per-worker override wins), records its run.
OBJECTIVE = """\
import json, os, sys, time, uuid
start = time.time()
args = dict(zip(sys.argv[1::2], map(float, sys.argv[2::2])))
nonce = uuid.uuid4().int % 10**9
runs = os.environ["NEMESIS_RUNS"]
worker = int(os.environ["NEMESIS_WORKER"])
mark = os.path.join(runs, "running-%d" % worker)
with open(mark, "w") as fh:
    fh.write(os.environ["ORION_TRIAL_ID"])
time.sleep(float(os.environ["NEMESIS_SLEEP"]))  # pretend to train
value = (args["-x"] - 2) ** 2 + (args["-y"] + 1) ** 2
with open(os.environ["ORION_RESULTS_PATH"], "w") as fh:
    json.dump([{"name": "objective", "type": "objective", "value": value},
               {"name": "run", "type": "statistic", "value": nonce}], fh)
record = {"trial": os.environ["ORION_TRIAL_ID"], "worker": worker, "nonce": nonce,
          "x": args["-x"], "y": args["-y"], "value": value, "start": start, "end": time.time()}
with open(os.path.join(runs, "runs-%d.jsonl" % worker), "a") as fh:
    fh.write(json.dumps(record) + "\\n")
os.unlink(mark)
"""


# ------------------------------------------------------------------------------------------------
# faults on the path to Redis
class _Link:
    """One proxied connection; ``held``: it swallowed data while blackholed."""

    def __init__(self, client, upstream):
        self.socks, self.held = (client, upstream), False


class FaultProxy:
    """Loopback TCP proxy to ``127.0.0.1:target_port`` whose link can be degraded or cut."""

    def __init__(self, target_port: int, seed: int = 0):
        self.target_port = target_port
        self.rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.mode = "clean"
        self.delay_s = self.jitter_s = self.p_retransmit = self.p_cut = 0.0
        self.stats = collections.Counter()
        self._links: set = set()
        self._links_lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    # -- the faults ----------------------------------------------------------------------------
    def lossy(self, delay_s=0.05, jitter_s=0.02, loss=0.05, p_cut=0.002):
        """Every relayed segment waits delay ± jitter; with probability ``loss`` it waits one
        more retransmission timeout (what TCP makes of a lost segment: 200 ms minimum RTO on
        Linux, doubling), and with ``p_cut`` the connection is reset (a loss TCP gave up on)."""
        self.delay_s, self.jitter_s, self.p_retransmit, self.p_cut = delay_s, jitter_s, loss, p_cut
        self.mode = "lossy"

    def blackhole(self):
        """Relay nothing, answer nothing: the worker is cut off (its calls time out)."""
        self.mode = "blackhole"

    def heal(self):
        """Back to a clean link; connections that were blackholed are closed (their peer gave
        up on them long ago, as after a real partition)."""
        was = self.mode
        self.mode = "clean"
        if was == "blackhole":
            with self._links_lock:
                stale = [link for link in self._links if link.held]
            for link in stale:
                self._close(link)

    def close(self):
        self._closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        with self._links_lock:
            links = list(self._links)
        for link in links:
            self._close(link)

    # -- relaying ------------------------------------------------------------------------------
    def _accept(self):
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # Redis is down: the worker sees a refused connection
                continue
            link = _Link(client, upstream)
            with self._links_lock:
                self._links.add(link)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, src, dst), daemon=True).start()

    def _wait(self) -> bool:
        """The pause for one segment; False: cut the connection."""
        with self._rng_lock:
            pause = max(0.0, self.rng.gauss(self.delay_s, self.jitter_s / 2))
            rto = 0.2
            while self.rng.random() < self.p_retransmit:  # each retransmission lost again doubles
                pause += rto
                rto *= 2
                self.stats["retransmitted"] += 1
            cut = self.rng.random() < self.p_cut
        time.sleep(pause)
        return not cut

    def _pump(self, link, src, dst):
        try:
            while data := src.recv(65536):
                if self.mode == "blackhole":
                    link.held = True
                    self.stats["held"] += 1
                    continue  # swallowed: the other side waits for its socket_timeout
                if self.mode == "lossy":
                    if not self._wait():
                        self.stats["cut"] += 1
                        break
                self.stats["relayed"] += 1
                dst.sendall(data)
        except OSError:
            pass
        self._close(link)

    def _close(self, link):
        with self._links_lock:
            self._links.discard(link)
        for sock in link.socks:
            try:  # shutdown first: it wakes the other pump's blocked recv
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class NetnsUnavailable(Exception):
    """``ip netns``/veth/``tc netem`` refused here; the message says which and why."""


def _ip(*args, ns=None, check=True):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(cmd)}` refused: {proc.stderr.strip() or proc.stdout}")
    return proc


class Netns:
    """A namespace of the test's own and a veth pair to the root namespace; nothing else is
    touched (no qdisc outside the namespace, no route, no firewall rule)."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.name, self.host_if, self.ns_if = f"nem-{tag}", f"nh{tag}", f"nn{tag}"
        rng = random.Random(tag)  # a /30 of 10.250.0.0/16: two runs at once do not collide
        net = f"10.250.{rng.randrange(256)}"
        base = rng.randrange(64) * 4
        self.host_ip, self.ns_ip = f"{net}.{base + 1}", f"{net}.{base + 2}"
        self.netem_on = False

    def __enter__(self) -> Netns:
        try:
            _ip("ip", "netns", "add", self.name)
            _ip("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("ip", "link", "set", self.ns_if, "netns", self.name)
            _ip("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("ip", "link", "set", self.host_if, "up")
            _ip("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, ns=self.name)
            _ip("ip", "link", "set", self.ns_if, "up", ns=self.name)
            _ip("ip", "link", "set", "lo", "up", ns=self.name)
        except (NetnsUnavailable, OSError) as exc:
            self.__exit__()
            raise NetnsUnavailable(str(exc)) from None
        return self

    def __exit__(self, *exc):
        # deleting the namespace destroys its veth end, and with it the peer in the root one
        _ip("ip", "netns", "del", self.name, check=False)
        if _ip("ip", "link", "show", self.host_if, check=False).returncode == 0:
            _ip("ip", "link", "del", self.host_if, check=False)

    def wrap(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def netem(self, delay_ms=50, jitter_ms=20, loss_pct=5):
        """Delay and loss on the namespace's side of the veth (the workers' requests)."""
        verb = "change" if self.netem_on else "add"
        _ip(
            "tc",
            "qdisc",
            verb,
            "dev",
            self.ns_if,
            "root",
            "netem",
            "delay",
            f"{delay_ms}ms",
            f"{jitter_ms}ms",
            "loss",
            f"{loss_pct}%",
            ns=self.name,
        )
        self.netem_on = True

    def slow(self, rate_kbit=64):
        """Where netem is refused: a token-bucket rate limit on the namespace's side (tbf), a
        slow link at the kernel level (queueing delay, no loss)."""
        verb = "change" if self.netem_on else "add"
        _ip(
            "tc",
            "qdisc",
            verb,
            "dev",
            self.ns_if,
            "root",
            "tbf",
            "rate",
            f"{rate_kbit}kbit",
            "burst",
            "4kb",
            "latency",
            "2s",
            ns=self.name,
        )
        self.netem_on = True

    def clear(self):
        if self.netem_on:
            _ip("tc", "qdisc", "del", "dev", self.ns_if, "root", ns=self.name, check=False)
            self.netem_on = False


def netns_refusal(fault: str = "netem") -> str | None:
    """Why the netns path with ``fault`` (netem or slow) cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        with Netns() as ns:
            getattr(ns, fault)()
            ns.clear()
    except NetnsUnavailable as exc:
        return str(exc)
    except FileNotFoundError as exc:
        return f"no `ip` command ({exc}): apt-get install iproute2"
    return None


# ------------------------------------------------------------------------------------------------
# the fleet
def worker_uri(port: int, prefix: str, host: str = "127.0.0.1", **options) -> str:
    """The workers' URI: short socket timeout and lock TTL, so faults longer than them fit in
    a CI run; retries stay at their defaults (6, 0.25 s back-off: ~16 s of back-off)."""
    opts = {"prefix": prefix, "socket_timeout": 2, "lock_ttl": 5, **options}
    return f"redis://{host}:{port}/0?" + "&".join(f"{k}={v}" for k, v in opts.items())


@dataclasses.dataclass
class Worker:
    index: int
    proc: subprocess.Popen
    log: Path
    killed: bool = False  # SIGKILLed by the nemesis: no exit line expected
    excused: bool = False  # killed or cut off: its trial may have been rerun elsewhere
    replaced: bool = False  # stopped on an error and a new worker took its slot


class Fleet:
    """``orion hunt`` workers on experiment ``name``; ``uris[i]`` is worker i's URI."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        max_trials: int,
        sleep_s: float = 1.0,
        heartbeat_s: int = 30,
        idle_timeout: int = 120,
    ):
        self.workdir, self.name, self.max_trials = workdir, name, max_trials
        self.sleep_s, self.heartbeat_s, self.idle_timeout = sleep_s, heartbeat_s, idle_timeout
        self.runs = workdir / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        (workdir / "trials").mkdir(exist_ok=True)
        self.objective = workdir / "objective.py"
        self.objective.write_text(OBJECTIVE)
        self.workers: list[Worker] = []

    def _config(self, index: int, uri: str) -> Path:
        return hunt_config(
            self.workdir / f"orion_config-{index}.yaml",
            uri,
            self.workdir / "trials",
            worker={"heartbeat": self.heartbeat_s, "idle_timeout": self.idle_timeout},
        )

    def launch(self, uri: str, index: int | None = None, wrap=None, sleep_s=None) -> Worker:
        """Start one worker (index: reuse a dead worker's slot, e.g. after a SIGKILL)."""
        index = len(self.workers) if index is None else index
        config = self._config(index, uri)
        cmd = [
            ORION,
            "hunt",
            "--config",
            str(config),
            "-n",
            self.name,
            "--exp-max-trials",
            str(self.max_trials),
            "--heartbeat",
            str(self.heartbeat_s),
            sys.executable,
            str(self.objective),
            *SPACE,
        ]
        # ORION_HEARTBEAT: fetch_lost_trials reads the *global* worker.heartbeat
        env = dict(
            os.environ,
            ORION_REDIS_URI="",
            ORION_HEARTBEAT=str(self.heartbeat_s),
            NEMESIS_RUNS=str(self.runs),
            NEMESIS_WORKER=str(index),
            NEMESIS_SLEEP=str(self.sleep_s if sleep_s is None else sleep_s),
        )
        for var in ("ORION_DB_ADDRESS", "ORION_STORAGE_TYPE"):
            env.pop(var, None)
        log = self.workdir / f"worker-{index}-{len(self.workers)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                wrap(cmd) if wrap else cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        worker = Worker(index, proc, log)
        self.workers.append(worker)
        return worker

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def kill(self, worker: Worker):
        """SIGKILL the worker and its running objective."""
        worker.killed = worker.excused = True
        try:
            os.killpg(worker.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.proc.wait()

    def running_trial(self, index: int) -> str | None:
        """The trial worker ``index``'s objective is running now, if any."""
        try:
            return (self.runs / f"running-{index}").read_text() or None
        except OSError:
            return None

    def wait(self, timeout: float, on_tick=None) -> bool:
        """Wait for every worker to exit; False if ``timeout`` passed (the rest are killed)."""
        deadline = time.monotonic() + timeout
        while True:
            if on_tick:
                on_tick()  # first: it may replace workers that all stopped at once
            if not self.alive():
                break
            if time.monotonic() > deadline:
                for w in self.alive():
                    self.kill(w)
                    w.killed = False  # not the nemesis: the fleet did not finish in time
                return False
            time.sleep(0.25)
        return True

    def stop(self):
        for w in self.alive():
            try:
                os.killpg(w.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.proc.wait()

    def relaunch_stopped(self, uri_of) -> list[str]:
        """Start a new worker in the slot of each one that stopped on an error (what a job
        scheduler does; ``uri_of(index)`` is the slot's URI); returns their last lines."""
        lines = []
        for worker in list(self.workers):
            if worker.proc.poll() not in (None, 0) and not worker.killed and not worker.replaced:
                # its reserved trial comes back through lost detection, and may be rerun
                worker.excused = worker.replaced = True
                lines.append(last_line(worker.log.read_text(errors="replace")))
                self.launch(uri_of(worker.index), index=worker.index)
        return lines

    def read_runs(self) -> list[dict]:
        """Every objective run, in the order they started (the checks read a trial's earlier
        runners as those before its last run: file order, by worker, is not time order)."""
        out = []
        for path in sorted(self.runs.glob("runs-*.jsonl")):
            out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return sorted(out, key=lambda run: run["start"])

    def outcomes(self) -> list[dict]:
        return [
            {
                "index": w.index,
                "exit": w.proc.returncode,
                "killed": w.killed,
                "excused": w.excused,
                "log": w.log.read_text(errors="replace"),
            }
            for w in self.workers
        ]


# ------------------------------------------------------------------------------------------------
# watching the experiment from the test process
class Watcher(threading.Thread):
    """Samples the experiment every ``period`` s over a direct connection: the completions it
    has seen (acknowledged: stored as completed) and when it first saw each one."""

    def __init__(self, uri: str, name: str, period: float = 0.3):
        super().__init__(daemon=True)
        self.storage = Redis(uri=uri)
        self.name, self.period = name, period
        self.exp_id = None
        self.first_seen: dict[str, float] = {}
        self.errors = 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            try:
                self.sample()
            except Exception:  # a stalled or full server: the next sample will tell
                self.errors += 1
            self._stop_event.wait(self.period)

    def sample(self):
        if self.exp_id is None:
            docs = self.storage.fetch_experiments({"name": self.name})
            if not docs:
                return
            self.exp_id = docs[0]["_id"]
        now = time.time()
        for trial in self.storage.fetch_trials(uid=self.exp_id):
            if trial.status == "completed":
                self.first_seen.setdefault(trial.id, now)

    def stop(self):
        self._stop_event.set()
        self.join(timeout=10)

    def completed(self) -> int:
        return len(self.first_seen)

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.1)

    def throughput(self, start: float, end: float) -> float:
        """Completions first seen per second in [start, end)."""
        return sum(start <= t < end for t in self.first_seen.values()) / (end - start)


def lock_recovery_s(
    client: redis.Redis, storage: Redis, exp_id, since: float, limit: float
) -> float | None:
    """Seconds after ``since`` (a fault cleared) until the algorithm lock was free or held by a
    new hold (the holder that was stuck in the fault is gone); None if not within ``limit``."""
    holder_key = storage.backend.experiment_keys(exp_id).lock_holder
    stuck = client.get(holder_key)
    while time.time() - since <= limit:
        now = client.get(holder_key)
        if now is None or now != stuck:
            return time.time() - since
        time.sleep(0.05)
    return None


# ------------------------------------------------------------------------------------------------
# the invariants
def snapshot(client: redis.Redis, storage: Redis, exp_id) -> dict:
    """The raw data of one experiment: every trial hash under its prefix, decoded or the error,
    and the members of every index."""
    ek = storage.backend.experiment_keys(exp_id)
    docs, undecodable = {}, {}
    for key in client.scan_iter(
        match=ek.trial_prefix.replace("{", "\\{").replace("}", "\\}") + "*", count=1000
    ):
        token = key.decode()[len(ek.trial_prefix) :]
        try:
            docs[token] = codec.decode_trial_fields(client.hgetall(key), key.decode())
        except Exception as exc:  # the point: report it, whatever it is
            undecodable[token] = f"{type(exc).__name__}: {exc}"
    indexes = {s: {m.decode() for m in client.zrange(ek.status(s), 0, -1)} for s in STATUSES}
    info = storage.get_algorithm_lock_info(uid=exp_id)
    return {
        "docs": docs,
        "undecodable": undecodable,
        "all": {m.decode() for m in client.zrange(ek.all, 0, -1)},
        "indexes": indexes,
        "lock_holder": client.get(ek.lock_holder),
        "observed": _completed_in(info.state if info else None),
        "backlog": storage.backlog_length(uid=exp_id),
    }


def _completed_in(state, found=None) -> set:
    """Ids of the completed trials an algorithm state holds (its registries, wherever they
    are in the wrappers' nesting)."""
    from orion.core.worker.trial import Trial

    found = set() if found is None else found
    if isinstance(state, Trial):
        if state.status == "completed":
            found.add(state.id)
    elif isinstance(state, dict):
        for value in state.values():
            _completed_in(value, found)
    elif isinstance(state, (list, tuple, set, frozenset)):
        for value in state:
            _completed_in(value, found)
    return found


def _stored_nonce(doc) -> float | None:
    for result in doc.get("results") or ():
        if result.get("name") == "run":
            return result.get("value")
    return None


def _objective(doc) -> float | None:
    for result in doc.get("results") or ():
        if result.get("type") == "objective":
            return result.get("value")
    return None


# "SomeError: what happened" (Oríon's and ours end a failed hunt with that line; ours as
# "orion: ConnectionFailed: ..." then a hint line on how to see the traceback)
CLEAR_ERROR = re.compile(
    r"^(?:orion: )?(?:[\w.]+\.)?[A-Z]\w*"
    r"(?:Error|Exception|Failed|Timeout|Workers|Experiment|Update|Interrupt)"
    r": (?P<msg>.{12,})$"
)


TRACEBACK_HINT = re.compile(r"^\(ORION_REDIS_TRACEBACK=1 ")


def last_line(log: str) -> str:
    """The error line a stopped worker ended with (our traceback hint after it skipped)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    if lines and TRACEBACK_HINT.match(lines[-1]):
        lines.pop()
    return lines[-1] if lines else ""


NOISE = ("Code changed between execution", "algorithms is deprecated", "profet", "_ERROR_MSG")


def notable_lines(log: str) -> list[str]:
    """What a worker told its user beyond Oríon's usual noise: warnings and errors, with ids
    and numbers blanked so that equal messages group."""
    out = []
    for line in log.splitlines():
        if ("WARNING" in line or "ERROR" in line or line.startswith("orion: ")) and not any(
            n in line for n in NOISE
        ):
            out.append(re.sub(r"[0-9a-f]{32}|\d+", "N", line.split("::")[-1])[:200])
    return out


def data_violations(snap: dict) -> list[str]:
    """No trial half written: every stored trial decodes, every index entry has its document
    and vice versa, each document in exactly the index of its status."""
    out = [f"trial {t}: undecodable ({e})" for t, e in snap["undecodable"].items()]
    tokens = set(snap["docs"]) | set(snap["undecodable"])
    out += [
        f"index 'all' names trial {t} which has no document" for t in sorted(snap["all"] - tokens)
    ]
    out += [
        f"trial {t} has a document but is not in index 'all'" for t in sorted(tokens - snap["all"])
    ]
    for status, members in snap["indexes"].items():
        out += [
            f"index {status!r} names trial {t} which has no document"
            for t in sorted(members - tokens)
        ]
    for token, doc in snap["docs"].items():
        where = [s for s, members in snap["indexes"].items() if token in members]
        if where != [doc.get("status")]:
            out.append(f"trial {token} is {doc.get('status')!r} but in status indexes {where}")
        if doc.get("status") == "completed" and (
            _objective(doc) is None or _stored_nonce(doc) is None
        ):
            out.append(f"trial {token} is completed without its results: {doc.get('results')}")
    return out


def violations(snap: dict, runs: list[dict], outcomes: list[dict], max_trials: int) -> list[str]:
    """Every invariant of issue 17 over the end state of one fleet (empty: all hold)."""
    out = data_violations(snap)
    docs = snap["docs"]
    completed = {t: d for t, d in docs.items() if d.get("status") == "completed"}
    if len(completed) < max_trials:
        out.append(f"{len(completed)} trials completed < max_trials {max_trials}")
    params = collections.Counter(
        tuple(sorted((p["name"], p["value"]) for p in d.get("params") or ()))
        for d in completed.values()
    )
    out += [f"parameters {p} completed {n} times" for p, n in params.items() if n > 1]
    excused = {o["index"] for o in outcomes if o["excused"] or o["exit"] not in (0, None)}
    by_trial = collections.defaultdict(list)
    for run in runs:
        by_trial[run["trial"]].append(run)
    for trial_id, doc in completed.items():
        mine = by_trial.get(trial_id, [])
        winner = [r for r in mine if r["nonce"] == _stored_nonce(doc)]
        if len(winner) != 1 or winner[0]["value"] != _objective(doc):
            out.append(
                f"trial {trial_id}: stored result {doc.get('results')} is no run of it "
                f"({len(mine)} runs)"
            )
    for trial_id, mine in by_trial.items():
        if trial_id not in docs:
            out.append(f"trial {trial_id} ran but is not stored")
        # a rerun is legitimate only after its earlier runner was killed, cut off or died
        if len(mine) > 1 and not {r["worker"] for r in mine[:-1]} <= excused:
            out.append(
                f"trial {trial_id} ran {len(mine)} times (workers {[r['worker'] for r in mine]})"
            )
    for o in outcomes:
        if o["killed"] or o["exit"] == 0:
            continue
        line = last_line(o["log"])
        if o["exit"] is None:
            out.append(f"worker {o['index']} still running")
        elif not CLEAR_ERROR.match(line) or "<redis." in line:
            out.append(
                f"worker {o['index']} exited {o['exit']} without one clear error line: "
                f"{line[:200]!r}"
            )
    if snap["lock_holder"] is not None:
        out.append(f"the algorithm lock is still held after the fleet: {snap['lock_holder']!r}")
    # every completion reaches the algorithm: workers flush the backlog when they finish
    out += [
        f"trial {t} completed but never observed by the algorithm (backlog {snap['backlog']})"
        for t in sorted(set(completed) - snap["observed"])
    ]
    return out


def acknowledged_lost(first_seen: dict, snap: dict) -> list[str]:
    """Completions the watcher saw stored that are no longer completed."""
    docs = snap["docs"]
    return [
        f"acknowledged completion of {t} lost (now "
        f"{docs[t].get('status') if t in docs else 'gone'})"
        for t in first_seen
        if docs.get(t, {}).get("status") != "completed"
    ]


# ------------------------------------------------------------------------------------------------
# the randomised nemesis (tests/faults/test_nemesis.py runs it short,
# benchmarks/studies/nemesis.py long)
FAULTS = ("stall", "lossy", "full", "kill", "partition")


def make_schedule(seed: int, duration_s: float, workers: int) -> list[dict]:
    """The faults of one run, fixed by ``seed`` (replay with NEMESIS_SEED): each at a time
    (s after the fleet is busy), for some seconds, on one worker where it applies."""
    rng = random.Random(seed)
    events, at = [], rng.uniform(1, 3)
    while at < duration_s:
        fault = rng.choice(FAULTS)
        seconds = {
            "stall": rng.choice((rng.uniform(0.5, 1.5), rng.uniform(3, 7))),
            "lossy": rng.uniform(4, 8),
            "full": rng.uniform(2, 5),
            "kill": rng.uniform(1, 3),
            "partition": rng.uniform(5, 20),
        }[fault]
        events.append(
            {
                "at": round(at, 1),
                "fault": fault,
                "seconds": round(seconds, 1),
                "worker": rng.randrange(workers),
            }
        )
        at += seconds + rng.uniform(1, 4)
    return events


def run_nemesis(
    workdir: Path,
    seed: int,
    duration_s: float = 45,
    workers: int = 4,
    max_trials: int = 90,
    sleep_s: float = 1.0,
    log=print,
) -> dict:
    """A fleet under ``make_schedule(seed)``, every fault cleared at the end; returns the
    schedule, what the fleet did and the invariant violations (empty: none)."""
    from orion_track_redis.testing import RedisServer

    schedule = make_schedule(seed, duration_s, workers)
    log(f"NEMESIS_SEED={seed}: {len(schedule)} faults over {duration_s:.0f}s")
    with RedisServer(workdir / "redis", appendfsync="always") as server:
        server.start()
        nemesis = _Nemesis(server, workdir, workers, max_trials, sleep_s, seed, log)
        try:
            return nemesis.run(schedule)
        finally:
            nemesis.close()


class _Nemesis:
    """The state of one randomised run (see ``run_nemesis``)."""

    def __init__(self, server, workdir, workers, max_trials, sleep_s, seed, log):
        self.server, self.max_trials, self.log = server, max_trials, log
        self.prefix = f"nem-{uuid.uuid4().hex[:6]}"
        self.direct_uri = worker_uri(server.port, self.prefix)
        self.client = server.client(socket_timeout=5)
        self.proxies = [FaultProxy(server.port, seed=seed * 100 + i) for i in range(workers)]
        self.fleet = Fleet(
            workdir / "fleet", "nemesis", max_trials, sleep_s=sleep_s, heartbeat_s=3
        )  # a killed or cut worker's trial is lost after 15 s
        self.watcher = Watcher(self.direct_uri, "nemesis")
        self.recoveries: list[tuple[str, float | None]] = []
        self.stopped_lines: list[str] = []

    def uri_of(self, index: int) -> str:
        return worker_uri(self.proxies[index].port, self.prefix)

    def done(self) -> bool:
        return self.watcher.completed() >= self.max_trials

    def run(self, schedule) -> dict:
        self.watcher.start()
        for i in range(len(self.proxies)):
            self.fleet.launch(self.uri_of(i))
        self.watcher.wait_for(lambda: self.watcher.completed() >= 3, 180, "3 completions")
        t0 = time.time()
        applied = []
        for event in schedule:
            time.sleep(max(0.0, t0 + event["at"] - time.time()))
            if self.done():
                break
            start = time.time()
            self.apply(event)
            cleared = time.time()
            self.recoveries.append(
                (
                    event["fault"],
                    lock_recovery_s(
                        self.client,
                        self.watcher.storage,
                        self.watcher.exp_id,
                        cleared,
                        LOCK_RECOVERY_LIMIT_S,
                    ),
                )
            )
            self.stopped_lines += self.fleet.relaunch_stopped(self.uri_of)
            applied.append(dict(event, started_s=round(start - t0, 1)))
            self.log(
                f"  {start - t0:6.1f}s {event['fault']:<9} {event['seconds']:4.1f}s "
                f"worker {event['worker']}: {self.watcher.completed()} completed"
            )
        faults_end = time.time()
        finished = self.fleet.wait(
            300, on_tick=lambda: self.stopped_lines.extend(self.fleet.relaunch_stopped(self.uri_of))
        )
        return self.verdict(applied, t0, faults_end, finished)

    def apply(self, event):
        fault, seconds, index = event["fault"], event["seconds"], event["worker"]
        if fault == "stall":
            os.kill(self.server.pid, signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                os.kill(self.server.pid, signal.SIGCONT)
        elif fault == "lossy":
            for proxy in self.proxies:
                proxy.lossy()
            time.sleep(seconds)
            for proxy in self.proxies:
                proxy.heal()
        elif fault == "full":
            self.client.config_set("maxmemory", 1)
            try:
                time.sleep(seconds)
            finally:
                self.client.config_set("maxmemory", 0)
        elif fault == "kill":
            victims = [w for w in self.fleet.alive() if w.index == index]
            for victim in victims:
                self.fleet.kill(victim)
            time.sleep(seconds)
            if victims:
                self.fleet.launch(self.uri_of(index), index=index)
        elif fault == "partition":
            for worker in self.fleet.alive():
                if worker.index == index:
                    worker.excused = True  # its trial may be declared lost and rerun
            self.proxies[index].blackhole()
            time.sleep(seconds)
            self.proxies[index].heal()

    def verdict(self, applied, t0, faults_end, finished) -> dict:
        self.watcher.stop()
        self.watcher.sample()
        exp_id = self.watcher.exp_id
        snap = snapshot(self.client, self.watcher.storage, exp_id)
        problems = violations(snap, self.fleet.read_runs(), self.fleet.outcomes(), self.max_trials)
        problems += acknowledged_lost(self.watcher.first_seen, snap)
        problems += [
            f"lock not free or held anew within {LOCK_RECOVERY_LIMIT_S}s after a {fault}"
            for fault, s in self.recoveries
            if s is None
        ]
        if not finished:
            problems.append("the fleet did not finish in time")
        outcomes = self.fleet.outcomes()
        return {
            "schedule": applied,
            "problems": problems,
            "completed": sum(d.get("status") == "completed" for d in snap["docs"].values()),
            "faulted_per_s": self.watcher.throughput(t0, faults_end),
            "workers_started": len(outcomes),
            "killed": sum(o["killed"] for o in outcomes),
            "stopped_with_error": [
                o["index"] for o in outcomes if o["exit"] not in (0, None) and not o["killed"]
            ],
            "stopped_lines": sorted({_shape(line) for line in self.stopped_lines}),
            "reruns": sum(
                n - 1
                for n in collections.Counter(r["trial"] for r in self.fleet.read_runs()).values()
                if n > 1
            ),
            "lock_recovery_max_s": max(
                (s for _, s in self.recoveries if s is not None), default=None
            ),
        }

    def close(self):
        if self.server.running:
            os.kill(self.server.pid, signal.SIGCONT)
        self.fleet.stop()
        self.watcher.stop()
        for proxy in self.proxies:
            proxy.close()


LOCK_RECOVERY_LIMIT_S = 5  # the workers' lock_ttl (worker_uri)


def _shape(line: str) -> str:
    """An error line without its ids, ports and numbers (to group them)."""
    return re.sub(r"[0-9a-f]{32}|\d+", "N", line)[:160]
