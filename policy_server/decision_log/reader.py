"""Reading a decision log back: each stream as one Arrow table, and decisions joined with their rewards.

Why a module of its own: offline evaluation, training, the demo and the tests read logs, and
none of them needs the writer's thread. Decisions and rewards are two append-only streams
(``decisions/`` and ``rewards/``) because rewards arrive later, from another endpoint, sometimes
never, sometimes twice; :func:`join_rewards` is the one place that decides how they meet (by
``request_id``, the first reward wins). Segments written under an older schema version read
with the current schema (added columns are null).
"""

from __future__ import annotations

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from policy_server.decision_log import _storage
from policy_server.decision_log.schema import DECISION_SCHEMA, DECISIONS_DIR, REWARD_SCHEMA, REWARDS_DIR

__all__ = ["join_rewards", "read_decisions", "read_rewards"]


def _read_stream(url: str, sub: str, schema: pa.Schema, filesystem: fsspec.AbstractFileSystem | None) -> pa.Table:
    fs, root = _storage.resolve(url, filesystem)
    paths = _storage.segments(fs, root, sub)  # every writer under url: <url>/decisions or <url>/<variant>/decisions
    if not paths:
        return schema.empty_table()
    # The explicit schema makes older segments readable after columns are added (missing -> null).
    # Arrow's own local filesystem is faster than the fsspec wrapper; other schemes go through fsspec.
    arrow_fs = pafs.LocalFileSystem() if "file" in _storage.protocols(fs) else fs
    dataset = ds.dataset(paths, schema=schema, format="parquet", filesystem=arrow_fs)
    return dataset.to_table()


def read_decisions(url: str, *, filesystem: fsspec.AbstractFileSystem | None = None) -> pa.Table:
    """All decisions under ``url`` in segment order; an empty table (with the schema) if none."""
    return _read_stream(url, DECISIONS_DIR, DECISION_SCHEMA, filesystem)


def read_rewards(url: str, *, filesystem: fsspec.AbstractFileSystem | None = None) -> pa.Table:
    """All rewards under ``url`` in segment order; an empty table (with the schema) if none."""
    return _read_stream(url, REWARDS_DIR, REWARD_SCHEMA, filesystem)


def _first_rewards(rewards: pa.Table) -> pa.Table:
    """One reward per request id: the earliest ``time``, ties broken by log order."""
    order = pa.array(range(rewards.num_rows), pa.int64())
    ranked = rewards.append_column("__order", order).sort_by([("time", "ascending"), ("__order", "ascending")])
    ranked = ranked.append_column("__pos", pa.array(range(ranked.num_rows), pa.int64()))
    firsts = ranked.group_by("request_id", use_threads=False).aggregate([("__pos", "min")])
    return ranked.take(firsts.column("__pos_min")).drop_columns(["__order", "__pos"])


def join_rewards(
    url_or_tables: str | tuple[pa.Table, pa.Table],
    *,
    how: str = "left",
    filesystem: fsspec.AbstractFileSystem | None = None,
) -> pa.Table:
    """Decisions with ``reward``, ``costs`` and ``reward_time`` joined by ``request_id``.

    ``url_or_tables`` is a log URL or a ``(decisions, rewards)`` pair of tables. ``how="left"``
    keeps every decision (reward null where none arrived), ``how="inner"`` only rewarded ones.
    A request id rewarded twice keeps its first reward (earliest ``time``, then log order);
    rewards for unknown request ids are ignored. Rows keep the decisions' order.
    """
    join_types = {"left": "left outer", "inner": "inner"}
    if how not in join_types:
        raise ValueError(f"how must be one of {sorted(join_types)}, got {how!r}")
    if isinstance(url_or_tables, str):
        decisions = read_decisions(url_or_tables, filesystem=filesystem)
        rewards = read_rewards(url_or_tables, filesystem=filesystem)
    else:
        decisions, rewards = url_or_tables
    rewards = _first_rewards(rewards)
    # Join only keys and row numbers, then take(): works for every column type (lists, maps).
    left = pa.table(
        {"request_id": decisions.column("request_id"), "__d": pa.array(range(decisions.num_rows), pa.int64())}
    )
    right = pa.table({"request_id": rewards.column("request_id"), "__r": pa.array(range(rewards.num_rows), pa.int64())})
    keys = left.join(right, "request_id", join_type=join_types[how], use_threads=False).sort_by("__d")
    out = decisions.take(keys.column("__d"))
    matched = rewards.take(keys.column("__r"))
    for name, source in (("reward", "reward"), ("costs", "costs"), ("reward_time", "time")):
        out = out.append_column(pa.field(name, REWARD_SCHEMA.field(source).type), matched.column(source))
    return out
