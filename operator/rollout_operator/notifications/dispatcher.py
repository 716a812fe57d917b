"""Delivery off the reconcile path: a bounded queue drained by one thread.

Why a thread: a receiver that hangs for its whole timeout, or fails and is retried with
backoff, must never delay the next reconcile (a rollback has to reach the data plane in about
a second). `submit` only enqueues; when the queue is full the notification is dropped with a
warning rather than blocking the operator. Each POST has a timeout, and failures that may be
transient (connection errors, timeouts, 429, 5xx) are retried a bounded number of times with
exponential backoff; other 4xx answers are not retried (the request itself is wrong).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import httpx

__all__ = ["Delivery", "Dispatcher"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Delivery:
    """The outcome of one notification: delivered or not, after how many attempts."""

    url: str
    ok: bool
    attempts: int
    error: str | None = None


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


class Dispatcher:
    """POSTs JSON payloads in the background.

    **Parameters:** `timeout` (seconds per attempt), `retries` (extra attempts after the
    first), `backoff` (seconds before the first retry, doubled each time), `max_queue`,
    `on_delivery` (called with each `Delivery`, e.g. for metrics or tests).
    """

    def __init__(
        self,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_queue: int = 1000,
        on_delivery: Callable[[Delivery], None] | None = None,
        user_agent: str = "policy-rollouts-operator",
    ) -> None:
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("notification timeout must be > 0, retries and backoff >= 0")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.on_delivery = on_delivery
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(max_queue)
        self._stopping = threading.Event()
        self._client = httpx.Client(timeout=timeout, headers={"User-Agent": user_agent})
        self._thread = threading.Thread(target=self._run, name="notifications", daemon=True)
        self._thread.start()

    def submit(self, url: str, payload: dict[str, Any]) -> bool:
        """Queue one POST; False (and a warning) if the queue is full or the dispatcher closed."""
        if self._stopping.is_set():
            return False
        try:
            self._queue.put_nowait((url, payload))
        except queue.Full:
            log.warning("notification queue full (%d): dropping a notification to %s", self._queue.maxsize, url)
            return False
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to `timeout` seconds), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._stopping.set()
        self._thread.join(1.0)
        self._client.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            url, payload = item
            delivery = self._deliver(url, payload)
            if self.on_delivery is not None:
                try:
                    self.on_delivery(delivery)
                except Exception:  # a broken callback must not stop deliveries
                    log.exception("notification callback failed")

    def _deliver(self, url: str, payload: dict[str, Any]) -> Delivery:
        delay = self.backoff
        error = ""
        for attempt in range(1, self.retries + 2):
            try:
                response = self._client.post(url, json=payload)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return Delivery(url, True, attempt)
                error = f"HTTP {response.status_code}"
                if not _retryable(response.status_code):
                    break
            if attempt <= self.retries and self._stopping.wait(delay):
                break  # closing: give up on the remaining retries
            delay *= 2
        log.warning("notification to %s failed after %d attempt(s): %s", url, attempt, error)
        return Delivery(url, False, attempt, error)
