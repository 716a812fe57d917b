"""Which request ids this server served recently, and which of them already got a reward.

/v1/reward accepts one reward per request id among the last ``window`` decisions this process
served: older or unknown ids answer 404, a second reward 409. Most clients let the server
generate the id, so generated ids are not stored at all: an id is ``<random process
prefix>-<sequence number in hex>`` and the sequence number alone says whether it is in the
window. Only ids that clients chose are kept (an LRU pruned to the window), and ids that were
rewarded (pruned to ``window`` entries). A server that generates every id thus holds no
per-decision state, where one dict entry per decision cost ~150 bytes (150 MB per million) and
an insertion on every request.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from enum import Enum

__all__ = ["RequestIds", "RewardCheck"]


class RewardCheck(Enum):
    ACCEPTED = "accepted"
    UNKNOWN = "unknown"
    DUPLICATE = "duplicate"


class RequestIds:
    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._prefix = os.urandom(8).hex() + "-"  # random per process: ids stay unique across replicas
        self._seq = 0  # decisions served so far
        self._chosen: OrderedDict[str, int] = OrderedDict()  # client-chosen id -> its sequence number
        self._rewarded: OrderedDict[str, int] = OrderedDict()  # rewarded id -> its sequence number

    @property
    def stored(self) -> int:
        """Ids held in memory (client-chosen and rewarded ones; generated ids take none)."""
        return len(self._chosen) + len(self._rewarded)

    def generate(self) -> str:
        """A fresh id for a request that came without one."""
        self._seq += 1
        return f"{self._prefix}{self._seq:x}"

    def claim(self, request_id: str) -> bool:
        """Register a client-chosen id; False if it is in use (ids with this server's prefix are reserved)."""
        if request_id.startswith(self._prefix) or self._sequence(request_id) is not None:
            return False
        self._seq += 1
        chosen = self._chosen
        chosen[request_id] = self._seq
        chosen.move_to_end(request_id)  # an expired id that a client reuses
        oldest = self._seq - self.window
        while next(iter(chosen.values())) <= oldest:
            chosen.popitem(last=False)
        return True

    def reward(self, request_id: str) -> RewardCheck:
        """Record a reward for ``request_id`` unless it is unknown or already rewarded."""
        seq = self._sequence(request_id)
        if seq is None:
            return RewardCheck.UNKNOWN
        if self._rewarded.get(request_id) == seq:
            return RewardCheck.DUPLICATE
        self._rewarded[request_id] = seq
        self._rewarded.move_to_end(request_id)
        if len(self._rewarded) > self.window:
            self._rewarded.popitem(last=False)
        return RewardCheck.ACCEPTED

    def _sequence(self, request_id: str) -> int | None:
        """The sequence number of an id served within the window, else None."""
        seq = self._chosen.get(request_id)
        if seq is None and request_id.startswith(self._prefix):
            tail = request_id[len(self._prefix) :]
            try:
                seq = int(tail, 16)
            except ValueError:
                return None
            if seq < 1 or f"{seq:x}" != tail:  # only the exact spelling generate() produced
                return None
        if seq is None or not self._seq - self.window < seq <= self._seq:
            return None
        return seq
