"""How far the decision log is behind what the server acknowledged: rows and age of the oldest.

Why a module of its own: the server exports both as gauges (an SRE alerts on a log that stops
moving), with or without a write-ahead log, and the bookkeeping must stay bounded while storage
is down for hours: one mark per stream per ``BUCKET_S``, not one per row.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["BUCKET_S", "Backlog"]

BUCKET_S = 0.1


class Backlog:
    """Rows logged per stream (counted on the event loop) against rows the writer accounted for.

    ``accounted`` returns, per stream, how many rows (in logging order) are written or rejected.
    """

    def __init__(self, accounted: Callable[[], dict[str, int]], clock: Callable[[], float] = time.monotonic) -> None:
        self._accounted = accounted
        self._clock = clock
        self.logged: dict[str, int] = {}
        self._marks: dict[str, deque[list[float]]] = {}

    def add(self, stream: str, rows: int) -> None:
        end = self.logged.get(stream, 0) + rows
        self.logged[stream] = end
        marks = self._marks.setdefault(stream, deque())
        now = self._clock()
        if marks and now - marks[-1][1] < BUCKET_S:
            marks[-1][0] = end
        else:
            marks.append([end, now])

    def rows(self) -> int:
        done = self._accounted()
        return sum(max(n - done.get(s, 0), 0) for s, n in self.logged.items())

    def oldest_age_s(self) -> float:
        """Seconds since the oldest row not yet accounted for was logged (0 when there is none)."""
        done = self._accounted()
        now = self._clock()
        oldest = now
        for stream, marks in self._marks.items():
            while marks and marks[0][0] <= done.get(stream, 0):
                marks.popleft()
            if marks:
                oldest = min(oldest, marks[0][1])
        return now - oldest
