"""Multi-server deployments for tests and benchmarks, on loopback: a Redis Cluster
(``ClusterDeployment``) and a Sentinel-monitored primary with replicas (``SentinelDeployment``).
"""

from __future__ import annotations

import os
from pathlib import Path

import redis

from orion_track_redis.errors import EmbeddedServerError

from .ports import free_port_pair
from .servers import RedisServer, wait_for


class ClusterDeployment:
    """A Redis Cluster of ``primaries`` primaries (and ``replicas`` replicas each) on loopback,
    built from Python (CLUSTER ADDSLOTS / MEET / REPLICATE): no redis-cli needed."""

    SLOTS = 16384

    def __init__(
        self,
        workdir: str | os.PathLike,
        primaries: int = 3,
        replicas: int = 0,
        binary: str | None = None,
        node_timeout_ms: int = 2000,
        appendonly=True,
    ):
        self.workdir = Path(workdir).absolute()
        self.nodes: list[RedisServer] = []
        for i in range(primaries * (1 + replicas)):
            node_dir = self.workdir / f"node-{i}"
            self.nodes.append(
                RedisServer(
                    node_dir,
                    port=free_port_pair(),
                    appendonly=appendonly,
                    binary=binary,
                    extra_args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        str(node_timeout_ms),
                    ],
                )
            )
        self.primaries = self.nodes[:primaries]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.primaries)
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 30.0) -> ClusterDeployment:
        for node in self.nodes:
            node.start()
        clients = [n.client() for n in self.nodes]
        try:
            ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients]
            count = len(self.primaries)
            for i, client in enumerate(clients[:count]):
                first, last = i * self.SLOTS // count, (i + 1) * self.SLOTS // count
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            total = len(self.nodes)
            wait_for(
                lambda: all(
                    b"cluster_known_nodes:%d" % total in c.execute_command("CLUSTER", "INFO")
                    for c in clients
                ),
                timeout,
                "every node to know the others",
            )
            for j, client in enumerate(clients[count:]):
                client.execute_command("CLUSTER", "REPLICATE", ids[j % count])
            wait_for(
                lambda: all(
                    b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in clients
                ),
                timeout,
                "cluster_state:ok on every node",
            )
            # every node must agree on the slot map before clients bootstrap from any of them
            wait_for(
                lambda: len({len(c.execute_command("CLUSTER", "SLOTS")) for c in clients}) == 1,
                timeout,
                "a consistent slot map",
            )
        finally:
            for client in clients:
                client.close()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ClusterDeployment:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class SentinelDeployment:
    """One primary, ``replicas`` replicas and ``sentinels`` sentinels on loopback, monitoring the
    primary as ``service``. Optional ``password`` on the data nodes (sentinels get it too)."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = "mymaster",
        binary: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ):
        self.workdir = Path(workdir).absolute()
        self.service = service
        self.primary = RedisServer(self.workdir / "primary", binary=binary, appendonly=True)
        replica_args = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replicas = [
            RedisServer(self.workdir / f"replica-{i}", binary=binary, extra_args=replica_args)
            for i in range(replicas)
        ]
        self.sentinels = []
        for i in range(sentinels):
            sdir = self.workdir / f"sentinel-{i}"
            sdir.mkdir(parents=True, exist_ok=True)
            conf = sdir / "sentinel.conf"
            conf.write_text(
                f"sentinel monitor {service} 127.0.0.1 {self.primary.port} "
                f"{max(1, sentinels // 2 + 1)}\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {service} 1\n"
            )
            self.sentinels.append(
                RedisServer(
                    sdir,
                    binary=binary,
                    appendonly=False,
                    config_file=conf,
                    extra_args=["--sentinel"],
                )
            )

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def master_address(self) -> tuple[str, int]:
        """The primary's address according to the first sentinel that answers."""
        for sentinel in self.sentinels:
            client = sentinel.client(socket_timeout=2)
            try:
                host, port = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                )
                return host.decode(), int(port)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise EmbeddedServerError("no sentinel answered")

    def _sentinel_view(self, sentinel: RedisServer) -> dict:
        client = sentinel.client(socket_timeout=2)
        try:
            master = client.execute_command("SENTINEL", "MASTER", self.service)
        finally:
            client.close()
        info = dict(zip(master[::2], master[1::2])) if isinstance(master, list) else master
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in info.items()
        }

    def _link_status(self, replica: RedisServer) -> str:
        client = replica.client(socket_timeout=2)
        try:
            return client.info("replication").get("master_link_status", "none")
        finally:
            client.close()

    def _ready(self) -> bool:
        # every sentinel sees the replicas and the other sentinels (needed for a failover)
        for sentinel in self.sentinels:
            view = self._sentinel_view(sentinel)
            if int(view.get("num-slaves", 0)) < len(self.replicas):
                return False
            if int(view.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
        return all(self._link_status(r) == "up" for r in self.replicas)

    def _state(self) -> str:
        """What each sentinel and replica sees, for the message of a start that timed out."""
        parts = []
        for i, sentinel in enumerate(self.sentinels):
            try:
                view = self._sentinel_view(sentinel)
                parts.append(
                    f"sentinel-{i}: {view.get('ip')}:{view.get('port')} "
                    f"flags={view.get('flags')} slaves={view.get('num-slaves')} "
                    f"other-sentinels={view.get('num-other-sentinels')}"
                )
            except (redis.RedisError, OSError) as exc:
                parts.append(f"sentinel-{i}: {exc}")
        for i, replica in enumerate(self.replicas):
            try:
                parts.append(f"replica-{i}: link {self._link_status(replica)}")
            except (redis.RedisError, OSError) as exc:
                parts.append(f"replica-{i}: {exc}")
        return "; ".join(parts)

    def start(self, timeout: float = 60.0) -> SentinelDeployment:
        # Sentinel learns replicas from the primary's INFO (every 10 s) and other sentinels
        # from hello messages (every 2 s): 60 s leaves room for a loaded 2-core machine.
        for server in [self.primary, *self.replicas, *self.sentinels]:
            server.start()
        wait_for(
            self._ready,
            timeout,
            "sentinels to discover the replicas and each other",
            interval=0.2,
            state=self._state,
        )
        return self

    def _all_agree(self, address: tuple[str, int]) -> bool:
        for sentinel in self.sentinels:
            client = sentinel.client(socket_timeout=2)
            try:
                host, port = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                )
                if (host.decode(), int(port)) != address:
                    return False
            finally:
                client.close()
        return True

    def _node(self, address: tuple[str, int]) -> RedisServer:
        return next(s for s in [self.primary, *self.replicas] if s.port == address[1])

    def promoted_from(self, old: tuple[str, int]) -> tuple[str, int] | None:
        """The new primary's address once every sentinel names one other than ``old`` and it
        runs as a primary; None until then."""
        new = self.master_address()
        if new == old or not self._all_agree(new):
            return None
        client = self._node(new).client(socket_timeout=2)
        try:
            return new if client.info("replication").get("role") == "master" else None
        finally:
            client.close()

    def wait_promoted(self, old: tuple[str, int], timeout: float = 30.0) -> tuple[str, int]:
        """``promoted_from(old)``, waited for (a failover, planned or not)."""
        return wait_for(
            lambda: self.promoted_from(old),
            timeout,
            "the failover to promote a replica",
            interval=0.1,
        )

    def failover(self, timeout: float = 30.0, pause_writes: bool = False) -> tuple[str, int]:
        """``SENTINEL FAILOVER``; returns the new primary's address once a replica is promoted
        and the sentinels agree on it.

        ``pause_writes``: a planned failover, as an operator does it for maintenance (and as
        redis' own FAILOVER command does): ``CLIENT PAUSE WRITE`` on the primary, wait until
        the replicas have every write, fail over, make the old primary a replica of the new one
        and unpause (its paused writers then get READONLY and retry on the new primary).
        Without it, the old primary keeps accepting writes until the sentinels demote it
        (seconds later) and those writes are lost: Redis replication is asynchronous."""
        old = self.master_address()
        old_client = self._node(old).client(socket_timeout=5)
        if pause_writes:
            old_client.execute_command("CLIENT", "PAUSE", int(timeout * 1000), "WRITE")
            offset = old_client.info("replication")["master_repl_offset"]

            def caught_up():
                for replica in self.replicas:
                    c = replica.client(socket_timeout=2)
                    try:
                        if c.info("replication").get("slave_repl_offset", -1) < offset:
                            return False
                    finally:
                        c.close()
                return True

            wait_for(caught_up, timeout, "the replicas to catch up before the failover")
        client = self.sentinels[0].client(socket_timeout=5)
        try:
            client.execute_command("SENTINEL", "FAILOVER", self.service)
        finally:
            client.close()

        try:
            new = self.wait_promoted(old, timeout)
            if pause_writes:
                # demote the old primary now (the sentinels would only do it seconds later):
                # its paused writers then get READONLY and retry on the new primary
                old_client.execute_command("REPLICAOF", new[0], new[1])
            return new
        finally:
            if pause_writes:
                old_client.execute_command("CLIENT", "UNPAUSE")
            old_client.close()

    def stop(self) -> None:
        for server in [*self.sentinels, *self.replicas, self.primary]:
            server.stop()

    def __enter__(self) -> SentinelDeployment:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
