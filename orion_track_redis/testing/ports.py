"""Free loopback ports for test servers."""

from __future__ import annotations

import random
import socket

from orion_track_redis.errors import EmbeddedServerError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks from the ephemeral
    range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_pair(offset: int = 10000) -> int:
    """A loopback port P such that P and P + offset are both free (cluster bus: P + 10000)."""
    for _ in range(200):
        port = random.randint(12000, 65535 - offset)
        socks = []
        try:
            for candidate in (port, port + offset):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise EmbeddedServerError("no free pair of loopback ports found for a cluster node")
