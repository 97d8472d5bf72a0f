"""A free TCP port on loopback, for a process a test starts that binds the port itself
(an agent, ironic, PostgreSQL): the kernel picks it, nothing listens on it yet."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
