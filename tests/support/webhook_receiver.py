"""A real HTTP webhook receiver on loopback that records what it gets and answers as told.

Usage::

    with WebhookReceiver() as hook:
        hook.respond(500, 500, 200)      # the next answers, in order (then 200)
        hook.delay = 2.0                 # seconds to wait before answering
        ...  # point the sender at hook.url
        body = hook.wait_for(1)[0]       # the first JSON body received
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest


class WebhookReceiver:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.delay = 0.0
        self._answers: list[int] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with receiver._lock:
                    receiver.attempts += 1
                    status = receiver._answers.pop(0) if receiver._answers else 200
                if receiver.delay:
                    receiver._released.wait(receiver.delay)
                if 200 <= status < 300:
                    with receiver._lock:
                        receiver.received.append({"body": json.loads(raw), "path": self.path,
                                                  "content_type": self.headers.get("Content-Type", ""),
                                                  "user_agent": self.headers.get("User-Agent", "")})
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up (timeout) and closed the connection
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    def respond(self, *statuses: int) -> None:
        with self._lock:
            self._answers = list(statuses)

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r["body"] for r in self.received]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} webhook call(s) within {timeout}s, got {self.bodies()}")
            time.sleep(0.02)
        return self.bodies()

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self._released.set()  # let delayed handlers finish
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


@pytest.fixture()
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver
