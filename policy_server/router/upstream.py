"""A keep-alive HTTP/1.1 client pool for one upstream policy server.

Why not httpx: the router's budget is well under a millisecond per request, and httpx's
per-request machinery (request/response models, transports, anyio) costs a few hundred
microseconds on this machine. This pool does what forwarding to a policy server needs and no
more: one ``asyncio.Protocol`` per connection parsed by httptools (the C parser the server uses),
one request in flight per connection, idle connections reused LIFO, a per-request deadline.
The hot path is callback-based (:meth:`Upstream.send`): no task, future or coroutine per request;
:meth:`Upstream.request` wraps it in a future for the cold paths.

Outcomes passed to the callback ``cb(status, body, error)``: ``error`` is None on an answer,
``UpstreamTimeout`` when the deadline passed (the connection is dropped, its late answer is never
read), ``UpstreamError`` when the server could not be reached, reset the connection or answered
garbage. A request on a reused idle connection that the server closed before answering anything
is retried once on a fresh connection, the classic keep-alive race.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

from policy_server.errors import PolicyServerError

__all__ = ["Callback", "Upstream", "UpstreamError", "UpstreamTimeout"]

Callback = Callable[[int, bytes, "Exception | None"], None]


class UpstreamError(PolicyServerError):
    """The upstream could not be reached or answered garbage."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the deadline."""


class _Conn(asyncio.Protocol):
    __slots__ = (
        "body",
        "cb",
        "closed",
        "data",
        "deadline",
        "got_bytes",
        "keep_alive",
        "parser",
        "pool",
        "reused",
        "timer",
        "transport",
    )

    def __init__(self, pool: Upstream) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.cb: Callback | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.body: list[bytes] = []
        self.closed = False
        self.keep_alive = True
        self.got_bytes = False
        self.reused = False
        self.data = b""
        self.deadline = 0.0

    # ---- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        cb = self.cb
        if cb is None:
            return
        self._finish()
        if self.reused and not self.got_bytes:  # closed while idle: the server never saw the request
            self.pool._start(self.data, self.deadline, cb, fresh=True)
            return
        cb(0, b"", UpstreamError(f"{self.pool.url}: connection lost ({exc or 'closed by the server'})"))

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"{self.pool.url}: malformed response ({exc})"))

    # ---- httptools
    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        cb = self.cb
        if cb is None:
            return
        self._finish()
        self.keep_alive = self.parser.should_keep_alive()
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.pool._release(self)
        cb(self.parser.get_status_code(), body, None)

    # ---- ours
    def _finish(self) -> None:
        self.cb = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        self.timer = None
        cb = self.cb
        if cb is not None:
            self.cb = None
            self.close()
            cb(0, b"", UpstreamTimeout(f"{self.pool.url} did not answer in time"))

    def _fail(self, exc: Exception) -> None:
        cb = self.cb
        self._finish()
        self.close()
        if cb is not None:
            cb(0, b"", exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class Upstream:
    """Requests to one policy server (``http://host:port``) over pooled keep-alive connections."""

    def __init__(self, url: str, *, max_idle: int = 256, connect_timeout_s: float = 1.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream URL must be http://HOST[:PORT], got {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self._host_header = (parts.netloc or self.host).encode()
        self._idle: list[_Conn] = []
        self.max_idle = max_idle
        self.connect_timeout_s = connect_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, method: bytes, path: bytes, body: bytes, timeout_s: float, cb: Callback) -> None:
        """Send one request; ``cb(status, body, error)`` is called exactly once, later, on the loop."""
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        data = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            method,
            path,
            self._host_header,
            len(body),
            body,
        )
        self._start(data, loop.time() + timeout_s, cb, fresh=False)

    def _start(self, data: bytes, deadline: float, cb: Callback, *, fresh: bool) -> None:
        conn = None if fresh else self._take_idle()
        if conn is None:
            task = self._loop.create_task(self._connect_then_write(data, deadline, cb))  # type: ignore[union-attr]
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._write(conn, data, deadline, cb, reused=True)

    def _write(self, conn: _Conn, data: bytes, deadline: float, cb: Callback, *, reused: bool) -> None:
        conn.cb, conn.data, conn.deadline, conn.reused, conn.got_bytes = cb, data, deadline, reused, False
        conn.timer = self._loop.call_at(deadline, conn.expire)  # type: ignore[union-attr]
        conn.transport.write(data)  # type: ignore[union-attr]

    async def _connect_then_write(self, data: bytes, deadline: float, cb: Callback) -> None:
        loop = self._loop
        assert loop is not None
        try:
            async with asyncio.timeout(min(self.connect_timeout_s, max(deadline - loop.time(), 0.0))):
                _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except TimeoutError:
            cb(0, b"", UpstreamTimeout(f"connect to {self.url} timed out"))
            return
        except OSError as exc:
            cb(0, b"", UpstreamError(f"cannot connect to {self.url}: {exc.strerror or exc}"))
            return
        if conn.closed:
            cb(0, b"", UpstreamError(f"{self.url} closed the connection at once"))
            return
        self._write(conn, data, deadline, cb, reused=False)

    def _take_idle(self) -> _Conn | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def _release(self, conn: _Conn) -> None:
        if conn.keep_alive and not conn.closed and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    async def request(self, method: bytes, path: bytes, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """The awaitable form of :meth:`send`: (status, body), or raises UpstreamError/UpstreamTimeout."""
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def done(status: int, resp: bytes, err: Exception | None) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result((status, resp))

        self.send(method, path, body, timeout_s, done)
        return await fut

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
