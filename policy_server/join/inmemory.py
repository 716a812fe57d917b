"""The join of a log that fits in memory: one block, every decision owned.

Why a module of its own: `policy-server ope` and `train` read logs of thousands to a few million
decisions and want arrays, not a dataset on disk; they get the same rules as the streaming join
without its planning. Importing duckdb happens here, on use, not when the CLIs build their parsers.
"""

from __future__ import annotations

import fsspec
import pyarrow as pa

from policy_server.join import block, duck
from policy_server.join.summary import Summary
from policy_server.join.window import JoinOptions

__all__ = ["join_log", "join_tables"]


def join_tables(decisions: pa.Table, rewards: pa.Table, options: JoinOptions) -> tuple[pa.Table, Summary]:
    """Decisions (decision schema) joined with reward rows (reward schema): the joined table and the counts."""
    with duck.connect() as con:
        return block.join_block(con, decisions, rewards, options)


def join_log(
    url: str, options: JoinOptions, *, filesystem: fsspec.AbstractFileSystem | None = None
) -> tuple[pa.Table, Summary]:
    """Every decision and reward segment under ``url`` (all writers) read into memory and joined."""
    from policy_server.decision_log import reader

    decisions = reader.read_decisions(url, filesystem=filesystem)
    rewards = reader.read_rewards(url, filesystem=filesystem)
    return join_tables(decisions, rewards, options)
