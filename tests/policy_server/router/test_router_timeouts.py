"""The router faces the same clients as the policy server: slow or idle connections are closed, an
Upgrade request gets one answer, and its shutdown always ends."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator

import pytest
import uvloop

from policy_server.protocol import Timeouts
from policy_server.router.app import Router, RouterConfig
from policy_server.router.table import RoutingTable


@pytest.fixture
def router() -> Iterator[tuple[Router, int]]:
    """A Router on its own loop in a thread; its upstream is never contacted by these tests."""
    config = RouterConfig(table=RoutingTable(stable="http://127.0.0.1:9"), timeouts=Timeouts(0.3, 0.3, 0.6))
    started = threading.Event()
    box: dict[str, object] = {}

    def run() -> None:
        async def main() -> None:
            r = Router(config)
            box["router"], box["port"], box["loop"] = r, await r.start(), asyncio.get_running_loop()
            started.set()
            await r.wait_stopped()

        uvloop.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    r = box["router"]
    yield r, box["port"]
    asyncio.run_coroutine_threadsafe(r.shutdown(), box["loop"]).result(30)
    thread.join(10)
    assert r._stopped.is_set()


def _read_all(s: socket.socket) -> bytes:
    return b"".join(iter(lambda: s.recv(65536), b""))


@pytest.mark.parametrize(
    "prefix",
    [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"POST /v1/act HTTP/1.1\r\nContent-Length: 50\r\n\r\n{"],
)
def test_half_sent_requests_are_closed(router, prefix: bytes) -> None:
    _, port = router
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(prefix)
        reply = _read_all(s)  # returns once the router closes the connection, before the 20 s timeout
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply


def test_an_upgrade_request_gets_one_response(router) -> None:
    _, port = router
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        reply = _read_all(s)
    assert len(re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z]", reply)) == 1 and reply.startswith(b"HTTP/1.1 200"), reply
