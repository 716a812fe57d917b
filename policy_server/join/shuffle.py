"""Reward rows regrouped by the hour of their decision, on local disk: one pass over every reward segment.

Why a module of its own: rewards arrive minutes to days after their decision, so a reward segment
(written at arrival) mixes decisions of many hours, and its footer's ``decision_time`` range spans
all of them. Reading such segments once per hour would read the reward stream once per hour of
delay. Instead each reward segment is read once, and its rows are written to ``spill/<hour>/``
by the hour of the ``decision_time`` their signed id carries; each hour of the join then reads its
own bucket only. Rows within ``EDGE`` seconds of an hour boundary go to both neighbours (the id
carries milliseconds, the log the exact time). Rows without ``decision_time`` (schema 1) go to
``spill/unattributed/``, and every hour reads them (they are the legacy case, and small).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from policy_server.decision_log.schema import REWARD_SCHEMA
from policy_server.join.segments import HOUR, Log, Segment, hours_between

__all__ = ["EDGE", "REWARD_COLUMNS", "Buckets", "shuffle_rewards"]

EDGE = 1.0
REWARD_COLUMNS = ["request_id", "time", "reward", "costs", "event_id", "decision_time", "variant"]
_SCHEMA = pa.schema([REWARD_SCHEMA.field(n) for n in REWARD_COLUMNS])


@dataclass
class Buckets:
    """Where the spilled reward rows are: files per decision hour, and the unattributed ones by time range."""

    root: str
    hours: dict[int, list[str]] = field(default_factory=dict)
    unattributed: list[Segment] = field(default_factory=list)
    rows: int = 0

    def read(self, hour: int) -> pa.Table:
        """The reward rows that may belong to decisions of ``hour`` (its bucket plus unattributed rows)."""
        start = hour * HOUR
        paths = list(self.hours.get(hour, []))
        paths += [s.path for s in self.unattributed if s.hi is None or s.hi >= start - 300.0]
        if not paths:
            return _SCHEMA.empty_table()
        return ds.dataset(paths, schema=_SCHEMA, format="parquet").to_table()


def _write(buckets: Buckets, key: str, table: pa.Table) -> str:
    directory = os.path.join(buckets.root, key)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"s{len(os.listdir(directory)):06d}.parquet")
    pq.write_table(table, path, compression="lz4")
    return path


def shuffle_rewards(
    log: Log, spill: str, wanted: Callable[[int], bool], progress: Callable[[int, int], None] | None = None
) -> Buckets:
    """Read each reward segment once; keep the rows of hours ``wanted`` says this shard joins.

    A segment whose footer's ``decision_time`` range (every row attributed) holds no such hour is skipped.
    """
    buckets = Buckets(spill)
    for i, segment in enumerate(log.rewards):
        if not _may_hold(segment, wanted):  # its footer says no row can belong to an hour of this shard
            continue
        table = ds.dataset([segment.path], schema=REWARD_SCHEMA, format="parquet", filesystem=log.filesystem)
        rows = table.to_table(columns=REWARD_COLUMNS)
        buckets.rows += rows.num_rows
        dt = rows["decision_time"]
        attributed = pc.is_valid(dt)
        loose = rows.filter(pc.invert(attributed))
        if loose.num_rows:
            t = loose["time"]
            path = _write(buckets, "unattributed", loose)
            buckets.unattributed.append(Segment(path, loose.num_rows, pc.min(t).as_py(), pc.max(t).as_py()))
        rows = rows.filter(attributed)
        if rows.num_rows:
            _bucket(buckets, rows, wanted)
        if progress is not None:
            progress(i + 1, len(log.rewards))
    return buckets


def _may_hold(segment: Segment, wanted: Callable[[int], bool]) -> bool:
    if segment.decision_lo is None or segment.decision_hi is None:
        return True
    return any(wanted(h) for h in hours_between(segment.decision_lo - EDGE, segment.decision_hi + EDGE))


def _bucket(buckets: Buckets, rows: pa.Table, wanted: Callable[[int], bool]) -> None:
    dt = rows["decision_time"].to_numpy()
    home = np.floor(dt / HOUR).astype(np.int64)
    offset = dt - home * HOUR
    # Each row goes to its hour; rows within EDGE of a boundary also to the neighbour across it.
    keys = [home, np.where(offset < EDGE, home - 1, home), np.where(offset > HOUR - EDGE, home + 1, home)]
    index = [np.arange(len(dt))] + [np.nonzero(k != home)[0] for k in keys[1:]]
    all_keys = np.concatenate([home] + [k[i] for k, i in zip(keys[1:], index[1:], strict=True)])
    all_rows = np.concatenate(index)
    order = np.argsort(all_keys, kind="stable")
    all_keys, all_rows = all_keys[order], all_rows[order]
    starts = np.flatnonzero(np.r_[True, all_keys[1:] != all_keys[:-1]])
    ends = np.r_[starts[1:], len(all_keys)]
    for s, e in zip(starts, ends, strict=True):
        hour = int(all_keys[s])
        if wanted(hour):
            path = _write(buckets, str(hour), rows.take(pa.array(all_rows[s:e])))
            buckets.hours.setdefault(hour, []).append(path)
