"""Loopback ports for the processes our tooling starts (the control plane, local mode, tests)."""

from __future__ import annotations

import socket
import threading

__all__ = ["free_port"]

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it), never one handed out before.

    Ports are picked before their servers bind, and servers share a port on purpose (`serve
    --reuse-port`), so a port the kernel offers twice would silently split one variant's traffic
    between two servers: each port goes to one owner for the life of this process.
    """
    with _handed_out_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
