"""Redis deployments for tests and benchmarks, on loopback: the ones orion-track-redis' own
suite starts, public so that users can start the same in theirs (as ``orion.testing`` and
``optuna.testing`` do). The runtime never imports this package.

- ``RedisServer(workdir)``: one ``redis-server`` child on a free loopback port (or a unix
  socket), AOF on by default; ``.url``, ``.client()``, ``.stop()``, ``.kill()``, ``.restart()``.
- ``TLSFiles.generate(dir)``: a throw-away CA and certificates (``RedisServer(..., tls=...)``).
- ``ClusterDeployment(dir, primaries=3)``, ``SentinelDeployment(dir)``: a Redis Cluster; a
  Sentinel-monitored primary with replicas (``.failover()``).
"""

from __future__ import annotations

from .deployments import ClusterDeployment, SentinelDeployment
from .ports import free_port, free_port_pair
from .servers import RedisServer, redis_server_candidates, short_socket_dir
from .tls import TLSFiles, tls_capable

__all__ = [
    "ClusterDeployment",
    "RedisServer",
    "SentinelDeployment",
    "TLSFiles",
    "free_port",
    "free_port_pair",
    "redis_server_candidates",
    "short_socket_dir",
    "tls_capable",
]
