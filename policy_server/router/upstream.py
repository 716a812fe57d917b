"""A keep-alive HTTP/1.1 client pool for one upstream policy server.

Why not httpx: the router's budget is well under a millisecond per request, and httpx's
per-request machinery (request/response models, transports, anyio) costs a few hundred
microseconds on this machine. This pool does what forwarding to a policy server needs and no
more: one ``asyncio.Protocol`` per connection parsed by httptools (the C parser the server uses),
one request in flight per connection, idle connections reused LIFO, a per-request deadline.

Errors raised by :meth:`Upstream.request`: ``UpstreamTimeout`` (the deadline passed; the
connection is dropped, its late answer is never read), ``UpstreamError`` (connect refused,
reset, malformed response). A request on a reused idle connection that the server had already
closed is retried once on a fresh connection, the classic keep-alive race.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httptools

__all__ = ["Upstream", "UpstreamError", "UpstreamTimeout"]


class UpstreamError(Exception):
    """The upstream could not be reached or answered garbage."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the deadline."""


class _Conn(asyncio.Protocol):
    __slots__ = ("body", "closed", "keep_alive", "parser", "transport", "waiter")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.closed = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(UpstreamError(f"connection lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(UpstreamError(f"malformed response: {exc}"))

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        w = self.waiter
        if w is not None and not w.done():
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            w.set_result((self.parser.get_status_code(), body))

    def fail(self, exc: Exception) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)
        self.close()

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
        self.open = 0

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(_Conn, self.host, self.port)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"connect to {self.url} timed out after {self.connect_timeout_s}s") from exc
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.url}: {exc.strerror or exc}") from exc
        self.open += 1
        return conn

    def _take_idle(self) -> _Conn | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self.open -= 1
        return None

    async def request(self, method: bytes, path: bytes, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """Send one request; (status, body) of the answer. Raises UpstreamError / UpstreamTimeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        data = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            method,
            path,
            self._host_header,
            len(body),
            body,
        )
        conn = self._take_idle()
        reused = conn is not None
        for attempt in (0, 1):
            if conn is None:
                conn = await self._connect()
            try:
                return await self._exchange(loop, conn, data, deadline)
            except UpstreamTimeout:
                raise
            except UpstreamError:
                # A reused connection the server closed while idle: retry once on a new one.
                if not (reused and attempt == 0):
                    raise
                conn, reused = None, False
        raise AssertionError("unreachable")

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, conn: _Conn, data: bytes, deadline: float
    ) -> tuple[int, bytes]:
        fut: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        conn.waiter = fut
        transport = conn.transport
        if transport is None or conn.closed:
            self.open -= 1
            raise UpstreamError(f"connection to {self.url} closed before the request was sent")
        transport.write(data)
        timer = loop.call_at(deadline, _expire, fut, self.url)
        try:
            result = await fut
        except BaseException:
            conn.waiter = None
            conn.close()
            self.open -= 1
            raise
        finally:
            timer.cancel()
        conn.waiter = None
        if conn.keep_alive and not conn.closed and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()
            self.open -= 1
        return result

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self.open = 0


def _expire(fut: asyncio.Future[tuple[int, bytes]], url: str) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout(f"{url} did not answer in time"))
