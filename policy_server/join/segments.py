"""The segments of a decision log and the time ranges their Parquet footers promise, without reading rows.

Why a module of its own: bounded memory rests on reading, for each hour of decisions, only what can
hold it. Every writer (replica, worker, process) appends its own ``part-*.parquet`` files under
``decisions/`` and ``rewards/``; a footer's ``time`` min/max (and ``decision_time`` for reward rows)
says which hours a segment can touch, so planning costs one small read per segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from policy_server.decision_log import _storage

__all__ = ["HOUR", "Log", "Segment", "hours_between", "open_log"]

HOUR = 3600.0


@dataclass(frozen=True)
class Segment:
    """One Parquet file of a stream: its rows and the min/max of a time column (None: no statistics)."""

    path: str
    rows: int
    lo: float | None
    hi: float | None
    decision_lo: float | None = None  # reward segments: the range of decision_time, when every row has one
    decision_hi: float | None = None

    def hours(self) -> range:
        """The hour numbers its ``time`` range touches (none without statistics)."""
        return range(0) if self.lo is None or self.hi is None else hours_between(self.lo, self.hi)

    def overlaps(self, start: float, end: float) -> bool:
        """Whether it can hold a row with the column's value in ``[start, end)`` (always, without statistics)."""
        if self.lo is None or self.hi is None:
            return True
        return self.lo < end and self.hi >= start


@dataclass(frozen=True)
class Log:
    """A log's two streams as listed segments, and the filesystem to read them with."""

    filesystem: Any  # what pyarrow reads with: its own LocalFileSystem or the caller's fsspec filesystem
    decisions: list[Segment]  # by ``time``
    rewards: list[Segment]  # by ``time`` (the reward's arrival)


def column_range(meta: pq.FileMetaData, name: str) -> tuple[float | None, float | None, int]:
    """(min, max, nulls) of a float column over all row groups; (None, None, rows) when it is absent."""
    names = meta.schema.names
    if name not in names:
        return None, None, meta.num_rows
    index = names.index(name)
    lo, hi, nulls = math.inf, -math.inf, 0
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(index).statistics
        if stats is None or not stats.has_min_max:
            if stats is not None and stats.null_count == meta.row_group(g).num_rows:
                nulls += stats.null_count
                continue
            return None, None, nulls
        lo, hi = min(lo, float(stats.min)), max(hi, float(stats.max))
        nulls += stats.null_count or 0
    if lo > hi:
        return None, None, nulls
    return lo, hi, nulls


def _segment(fs: Any, path: str, column: str, attribution: bool = False) -> Segment:
    meta = pq.read_metadata(path, filesystem=fs)
    lo, hi, _ = column_range(meta, column)
    if not attribution:
        return Segment(path, meta.num_rows, lo, hi)
    d_lo, d_hi, nulls = column_range(meta, "decision_time")
    if nulls:  # schema-1 rows (or rows without attribution): any decision hour
        d_lo = d_hi = None
    return Segment(path, meta.num_rows, lo, hi, d_lo, d_hi)


def open_log(url: str, filesystem: fsspec.AbstractFileSystem | None = None) -> Log:
    """List both streams under ``url`` (any number of writers) and read each segment's footer."""
    from policy_server.decision_log.schema import DECISIONS_DIR, REWARDS_DIR

    fs, root = _storage.resolve(url, filesystem)
    # Arrow's own local filesystem is faster than fsspec's; a caller's filesystem is used as given.
    arrow_fs: Any = pafs.LocalFileSystem() if filesystem is None and "file" in _storage.protocols(fs) else fs
    # every writer: <url>/decisions, or one directory per variant and the router (<url>/<variant>/decisions)
    decisions = [_segment(arrow_fs, p, "time") for p in _storage.segments(fs, root, DECISIONS_DIR)]
    decisions = [s for s in decisions if s.rows]  # an empty segment has no statistics and nothing to join
    rewards = [_segment(arrow_fs, p, "time", True) for p in _storage.segments(fs, root, REWARDS_DIR)]
    return Log(arrow_fs, decisions, rewards)


def hours_between(lo: float, hi: float) -> range:
    """The hour numbers (Unix seconds // 3600) from ``lo`` to ``hi`` inclusive."""
    return range(int(lo // HOUR), int(hi // HOUR) + 1)
