"""A small HTTP/1.1 keep-alive server: one ``asyncio.Protocol`` per connection, parsed by httptools.

Why not aiohttp / an ASGI framework: the model costs ~20 µs per forward pass, the framework
costs more. Measured on this 2-core machine (docs/NOTES): a bare aiohttp app with the same
MLP tops out near 4,000 req/s at 8 clients; TorchServe near 1,100. Routing, middleware,
request objects and per-request tasks are the cost, so this module does only what the policy
API needs: parse with httptools (the C parser uvicorn uses), call the application's
``handle(conn, seq, method, path, body, t0)`` synchronously, and write responses in request
order (pipelining-safe) with precomputed status lines. No per-request task or future is
created; a request waiting for its micro-batch is just an entry in the batcher's list.

Limits: bodies over ``max_body`` bytes -> 413 (Content-Length checked before reading the
body), request line + headers over ``MAX_HEADER_BYTES`` -> 431, unparsable HTTP -> 400 (llhttp
refuses the request-smuggling shapes: Content-Length with Transfer-Encoding, duplicate lengths,
unknown transfer codings); in each case the connection is closed after the answer, because the
byte stream can no longer be trusted.

Timeouts (checked by the application's sweep, :meth:`HttpProtocol.check_timeouts`): headers not
complete ``header_timeout`` after a request began, or a body not complete ``body_timeout`` after
its headers -> 408 and close (a slowloris client holds a connection for a bounded time); a
keep-alive connection idle for ``idle_timeout`` is closed.

Exactly one response per request: a request asking for a protocol ``Upgrade`` (e.g. websocket)
is answered as plain HTTP/1.1 and the connection closed after it; the upgrade is not performed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import httptools
import orjson

__all__ = ["JSON", "MAX_HEADER_BYTES", "TEXT", "App", "HttpProtocol", "Timeouts", "response_bytes", "sweep"]

MAX_HEADER_BYTES = 64 * 1024
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    408: "Request Timeout",
    413: "Content Too Large",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_STATUS = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()}


def response_bytes(
    status: int, body: bytes, content_type: bytes = JSON, extra: bytes = b"", close: bool = False
) -> bytes:
    """Serialise one response (status line, headers, body)."""
    head = _STATUS.get(status) or f"HTTP/1.1 {status} Status\r\n".encode()
    conn = b"Connection: close\r\n" if close else b""
    return b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n%s" % (
        head,
        content_type,
        len(body),
        extra,
        conn,
        body,
    )


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-connection limits, in seconds (see the module docstring)."""

    header_s: float = 10.0
    body_s: float = 30.0
    idle_s: float = 120.0


def sweep(connections: Iterable[HttpProtocol], timeouts: Timeouts) -> None:
    """Close the connections past a timeout; the application calls this every fraction of a second."""
    now = time.perf_counter()
    for conn in list(connections):
        conn.check_timeouts(now, timeouts.header_s, timeouts.body_s, timeouts.idle_s)


class App(Protocol):
    connections: set[HttpProtocol]

    def handle(self, conn: HttpProtocol, seq: int, method: bytes, path: bytes, body: bytes, t0: float) -> None: ...

    def protocol_error(self, status: int) -> None: ...


class HttpProtocol(asyncio.Protocol):
    """One keep-alive connection. Responses go out in request order via :meth:`respond`."""

    __slots__ = (
        "_body",
        "_body_size",
        "_complete",
        "_continue",
        "_head_size",
        "_next_seq",
        "_next_write",
        "_out",
        "_phase",
        "_since",
        "_t0",
        "_url",
        "app",
        "closing",
        "max_body",
        "parser",
        "transport",
    )

    def __init__(self, app: App, max_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closing = False  # no more requests are read; close after the last response
        self._next_seq = 0
        self._next_write = 0
        self._out: dict[int, bytes] = {}
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_size = 0
        self._t0 = 0.0
        self._continue = False
        self._complete = False
        self._phase = 0  # 0: between requests, 1: reading headers, 2: reading the body
        self._since = time.perf_counter()

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.app.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._complete:  # already handed to the app, which answers it: no second response
                self.drain()
            else:
                self._fail(400, b"protocol upgrade is not supported; send plain HTTP/1.1 requests")
        except httptools.HttpParserError as exc:
            if not self.closing:
                self._fail(400, f"malformed HTTP request ({exc}); send a valid HTTP/1.1 request".encode())

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._body_size = 0
        self._head_size = 0
        self._continue = False
        self._complete = False
        self._t0 = self._since = time.perf_counter()
        self._phase = 1

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEADER_BYTES and not self.closing:
            self._fail(431, b"request line and headers exceed 64 KiB; shorten them")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.closing:
            return
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEADER_BYTES:
            self._fail(431, b"request line and headers exceed 64 KiB; shorten them")
        elif name.lower() == b"content-length" and value.strip().isdigit() and int(value) > self.max_body:
            self._too_large()
        elif name.lower() == b"expect" and value.strip().lower() == b"100-continue" and self.idle:
            # curl sends this for bodies over 1 KiB and would otherwise wait a second before sending the
            # body; only when no earlier response is pending, so the stream stays in order
            self._continue = True

    def on_headers_complete(self) -> None:
        self._phase = 2
        self._since = time.perf_counter()
        if self._continue and not self.closing and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._continue = False

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        self._body_size += len(body)
        if self._body_size > self.max_body:
            self._too_large()
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._phase = 0
        self._since = time.perf_counter()
        if self.closing:
            return
        self._complete = True
        seq = self._next_seq
        self._next_seq += 1
        if not self.parser.should_keep_alive():
            self.closing = True
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        url = self._url
        q = url.find(b"?")
        path = url if q < 0 else url[:q]
        self.app.handle(self, seq, self.parser.get_method(), path, body, self._t0)

    # ------------------------------------------------------------------ responses

    def respond(self, seq: int, status: int, body: bytes, content_type: bytes = JSON, extra: bytes = b"") -> None:
        """Send the response to request ``seq`` (buffered until earlier responses went out)."""
        transport = self.transport
        if transport is None:
            return
        last = self.closing and seq == self._next_seq - 1
        data = response_bytes(status, body, content_type, extra, close=last)
        if seq != self._next_write:
            self._out[seq] = data
            return
        transport.write(data)
        self._next_write += 1
        out = self._out
        while out and self._next_write in out:
            transport.write(out.pop(self._next_write))
            self._next_write += 1
        if self.closing and self._next_write == self._next_seq:
            transport.close()

    @property
    def idle(self) -> bool:
        return self._next_write == self._next_seq

    def drain(self) -> None:
        """Stop reading requests; close once every accepted request is answered."""
        self.closing = True
        if self.idle and self.transport is not None:
            self.transport.close()

    def check_timeouts(self, now: float, header_s: float, body_s: float, idle_s: float) -> None:
        """Close a connection stuck in its headers, its body or idle for too long (``now``: perf_counter)."""
        if self.transport is None:
            return
        waited = now - self._since
        phase = self._phase
        if phase == 0:
            if self.idle and waited > idle_s:
                self.transport.close()
        elif self.closing:
            return
        elif phase == 1 and waited > header_s:
            self._fail(408, f"request headers not complete within {header_s:g} s; send the whole request".encode())
        elif phase == 2 and waited > body_s:
            self._fail(408, f"request body not complete within {body_s:g} s; send the whole body".encode())

    def _too_large(self) -> None:
        self._fail(413, f"request body exceeds {self.max_body} bytes; send a smaller body".encode())

    def _fail(self, status: int, message: bytes) -> None:
        self.app.protocol_error(status)
        self.closing = True
        seq = self._next_seq
        self._next_seq += 1
        body = orjson.dumps({"error": message.decode("utf-8", "replace")})
        self.respond(seq, status, body)
