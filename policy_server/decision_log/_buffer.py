"""The writer's in-memory buffer of one stream, and how it is cut into segments.

Why a module of its own: the buffer is the only state shared between the request path and the
writer thread, so its rules are kept in one small place: producers only append (a deque append
is atomic under the GIL, ~0.1 µs), the writer only pops, and a segment boundary may cut a
batch, whose rest goes back to the front so that the order is kept.
"""

from __future__ import annotations

import collections
from typing import Any

import pyarrow as pa

from policy_server.decision_log._batches import BatchSlice  # by name: checked once per buffered item

__all__ = ["Stream"]


class Stream:
    """One buffered event stream (decisions or rewards) and its directory.

    The buffer holds record dicts (one row each) and ``BatchSlice`` s (``rows`` each) in logging
    order. ``extra_rows`` adds the rows of buffered slices beyond one per item, so the row count
    is ``len(buffer) + extra_rows`` without walking the buffer. Producers add to it, the writer
    subtracts under its lock; CPython (3.11, with the GIL) does not switch threads inside
    ``obj.n += k`` on a plain attribute (no call between the load and the store; checked with
    four threads and a 1 µs switch interval). Were an update ever lost, only
    ``buffered`` and the wake-up time would be off, never the data: segments are cut by walking
    the items.
    """

    def __init__(self, name: str, schema: pa.Schema, path: str) -> None:
        self.name = name
        self.schema = schema
        self.path = path
        self.buffer: collections.deque[Any] = collections.deque()
        self.extra_rows = 0

    @property
    def rows(self) -> int:
        return len(self.buffer) + self.extra_rows

    def drain(self, segment_rows: int, *, partial: bool) -> list[list[Any]]:
        """Pop full segments (and the remainder if ``partial``); appends may race, pops never do.

        A batch that would overflow the segment is cut: its first rows end this segment and the
        rest goes back to the front of the buffer, so order is kept.
        """
        chunks = []
        buf = self.buffer
        while buf and (partial or self.rows >= segment_rows):
            chunk: list[Any] = []
            taken = 0
            while buf and taken < segment_rows:
                item = buf.popleft()
                if type(item) is BatchSlice:
                    self.extra_rows -= item.rows - 1
                    room = segment_rows - taken
                    if item.rows > room:
                        item, rest = item.split(room)
                        buf.appendleft(rest)
                        self.extra_rows += rest.rows - 1
                    taken += item.rows
                else:
                    taken += 1
                chunk.append(item)
            chunks.append(chunk)
        return chunks
