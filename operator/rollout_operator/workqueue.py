"""One timer heap and a bounded pool of workers for every PolicyRollout of the process.

Each rollout used to own a loop (a thread, later a coroutine) that slept until its next
deadline; at thousands of rollouts that is thousands of loops waking on their own, with
nothing to say which goes first when a thousand are due in the same second. Here a rollout
is a key: `schedule` sets when it is next due (the engine's `requeue_after`), `add` makes it
due now (a watch event, a human's annotation). A scheduler thread moves due keys into a
ready queue ordered by `Priority`, then by when they became due, and N workers take from
it, so a rollback is never queued behind routine work however many rollouts are due.

Guarantees, the client-go work queue's: a key is processed by at most one worker at a
time; a key made due while it is being processed runs once more afterwards; a key is queued
at most once (its earliest deadline and its most urgent priority win).
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    """Lower runs first."""

    ROLLBACK = 0  # lowers the candidate's traffic: an abort, a rollback under way
    ANALYSIS = 1  # guardrails due on live traffic: may become a rollback
    ROUTINE = 2  # everything else: new rollouts, step ends, readiness changes, resyncs


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a worker's `process` returns: when the key is next due (None: only when something changes)."""

    requeue_after: float | None
    priority: Priority = Priority.ROUTINE
    result: str = "ok"  # the reconcile's outcome, for metrics: ok, error, invalid, skipped


class Observer:
    """Hooks for the operator's metrics; the defaults do nothing."""

    def waited(self, priority: Priority, seconds: float) -> None: ...

    def finished(self, result: str, seconds: float) -> None: ...



@dataclasses.dataclass
class _Item:
    due: float
    priority: Priority


class WorkQueue:
    """`process(key) -> Outcome` runs on `workers` threads; `clock` is monotonic seconds (tests pass a fake)."""

    def __init__(self, process: Callable[[Hashable], Outcome], workers: int = 8,
                 observer: Observer | None = None, clock: Callable[[], float] = time.monotonic,
                 retry_after: float = 0.5, max_backoff: float = 30.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._process = process
        self._workers = workers
        self._observer = observer or Observer()
        self._clock = clock
        self._retry_after, self._max_backoff = retry_after, max_backoff
        self._cond = threading.Condition()
        self._timers: list[tuple[float, int, Hashable]] = []  # (due, seq, key); stale entries skipped
        self._deadline: dict[Hashable, tuple[float, Priority]] = {}  # the live timer of each key
        self._ready: list[tuple[int, float, int, Hashable]] = []  # (priority, due, seq, key)
        self._queued: dict[Hashable, _Item] = {}  # keys in _ready
        self._processing: set[Hashable] = set()
        self._again: dict[Hashable, _Item] = {}  # made due while processing
        self._failures: dict[Hashable, int] = {}
        self._seq = itertools.count()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # ---- producers

    def add(self, key: Hashable, priority: Priority = Priority.ROUTINE) -> None:
        """Due now."""
        with self._cond:
            self._make_ready(key, self._clock(), priority)
            self._cond.notify_all()

    def schedule(self, key: Hashable, delay: float, priority: Priority = Priority.ROUTINE) -> None:
        """Due in `delay` seconds, unless it is due sooner already."""
        with self._cond:
            due = self._clock() + max(delay, 0.0)
            current = self._deadline.get(key)
            if current is not None and current[0] <= due:
                return
            self._deadline[key] = (due, priority)
            heapq.heappush(self._timers, (due, next(self._seq), key))
            self._cond.notify_all()

    def forget(self, key: Hashable) -> None:
        """Drop the key's timer and queued run (a deleted rollout); a run in progress finishes."""
        with self._cond:
            self._deadline.pop(key, None)
            self._again.pop(key, None)
            self._failures.pop(key, None)
            if self._queued.pop(key, None) is not None:
                self._ready = [entry for entry in self._ready if entry[3] != key]
                heapq.heapify(self._ready)

    def _make_ready(self, key: Hashable, due: float, priority: Priority) -> None:
        self._deadline.pop(key, None)
        if key in self._processing:
            again = self._again.get(key)
            if again is None or priority < again.priority:
                self._again[key] = _Item(min(due, again.due) if again else due, priority)
            return
        queued = self._queued.get(key)
        if queued is not None:
            if priority >= queued.priority:
                return
            self._ready = [entry for entry in self._ready if entry[3] != key]
            heapq.heapify(self._ready)
            due = min(due, queued.due)
        self._queued[key] = _Item(due, priority)
        heapq.heappush(self._ready, (int(priority), due, next(self._seq), key))

    # ---- the scheduler and the workers

    def start(self) -> WorkQueue:
        threads = [threading.Thread(target=self._run_timers, name="workqueue-timers", daemon=True)]
        threads += [threading.Thread(target=self._run_worker, name=f"workqueue-worker-{i}", daemon=True)
                    for i in range(self._workers)]
        self._threads = threads
        for thread in threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(end - time.monotonic(), 0.0))

    def _run_timers(self) -> None:
        with self._cond:
            while not self._stopping:
                self._fire_due_timers()
                wait = self._timers[0][0] - self._clock() if self._timers else None
                self._cond.wait(timeout=None if wait is None else max(wait, 0.001))

    def _fire_due_timers(self) -> None:
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            due, _, key = heapq.heappop(self._timers)
            live = self._deadline.get(key)
            if live is None or live[0] != due:
                continue  # replaced by a sooner timer, or forgotten
            self._make_ready(key, due, live[1])
        self._cond.notify_all()

    def _run_worker(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                priority, due, _, key = heapq.heappop(self._ready)
                del self._queued[key]
                self._processing.add(key)
                started = self._clock()
            self._observer.waited(Priority(priority), max(started - due, 0.0))
            outcome = self._run(key)
            self._observer.finished(outcome.result, self._clock() - started)
            with self._cond:
                self._processing.discard(key)
                self._after(key, outcome)
                self._cond.notify_all()

    def _run(self, key: Hashable) -> Outcome:
        try:
            outcome = self._process(key)
        except Exception as exc:  # keep the worker; the key retries with backoff
            log.exception("reconcile of %s failed: %s", key, exc)
            with self._cond:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
            return Outcome(min(self._retry_after * 2 ** (failures - 1), self._max_backoff), Priority.ROUTINE, "error")
        with self._cond:
            if outcome.result != "error":
                self._failures.pop(key, None)
        return outcome

    def _after(self, key: Hashable, outcome: Outcome) -> None:
        again = self._again.pop(key, None)
        if again is not None:
            self._make_ready(key, again.due, again.priority)
            return
        if outcome.requeue_after is not None:
            due = self._clock() + max(outcome.requeue_after, 0.0)
            current = self._deadline.get(key)
            if current is None or due < current[0]:
                self._deadline[key] = (due, outcome.priority)
                heapq.heappush(self._timers, (due, next(self._seq), key))

    # ---- inspection (metrics at scrape time, tests)

    def snapshot(self) -> tuple[dict[Priority, int], int, int]:
        """Keys ready by priority, timers set, keys being processed."""
        with self._cond:
            ready: dict[Priority, int] = dict.fromkeys(Priority, 0)
            for item in self._queued.values():
                ready[item.priority] += 1
            return ready, len(self._deadline), len(self._processing)

    def pending(self, key: Hashable) -> float | None:
        """Seconds until the key's timer fires (None: no timer)."""
        with self._cond:
            live = self._deadline.get(key)
            return None if live is None else live[0] - self._clock()
