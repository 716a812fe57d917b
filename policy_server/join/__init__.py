"""The reward joiner: decisions and reward events from every writer of a log, joined into a training dataset.

Two entry points, one set of rules (``window``, ``block``):

* :func:`join_tables` / :func:`join_log`: in memory, for small logs (the dataset step of
  `policy-server ope` and `train`), returning the joined Arrow table and a :class:`Summary`.
* :func:`stream.join_to_dataset`: bounded memory, hour by hour, for logs larger than RAM
  (`policy-server join`), writing a Parquet dataset partitioned by decision hour and variant.
"""

from __future__ import annotations

from typing import Any

from policy_server.join.summary import Counts, Summary
from policy_server.join.window import JoinError, JoinOptions, RewardFunction, parse_as_of, parse_duration

__all__ = [
    "Counts",
    "JoinError",
    "JoinOptions",
    "RewardFunction",
    "Summary",
    "join_log",
    "join_tables",
    "parse_as_of",
    "parse_duration",
]


def __getattr__(name: str) -> Any:
    """``join_log`` and ``join_tables`` import duckdb on first use: CLIs build their parsers without it."""
    if name in ("join_log", "join_tables"):
        from policy_server.join import inmemory

        return getattr(inmemory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
