"""The trajectory columns of decisions (``episode_id``, ``step``, ``terminal``), derived from ``context_json``.

Why derived, and here: the server's hot path then does nothing for them but validate the context
(validation.py, one ``isdisjoint`` call when the context has no trajectory keys), the write-ahead log
carries them inside the context it already stores, and the router's and the dict path's decisions get
them by the same rule. The writer thread finds the rows that have an episode key with one C call
(a substring match over the context strings) and parses only those contexts.
"""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["COLUMNS", "trajectory_columns"]

COLUMNS = ("episode_id", "step", "terminal")
_TYPES = (pa.string(), pa.int64(), pa.bool_())


def _nulls(n: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    return pa.nulls(n, _TYPES[0]), pa.nulls(n, _TYPES[1]), pa.nulls(n, _TYPES[2])


def trajectory_columns(contexts: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``episode_id`` (string), ``step`` (int64), ``terminal`` (bool) per row; null where the context has none.

    A context written by the server was validated; one from the dict path is read leniently: an
    integer episode id becomes its decimal string, a step that is not a non-negative integer or a
    terminal that is not a boolean is left null.
    """
    n = len(contexts)
    if n == 0 or contexts.null_count == n:
        return _nulls(n)
    hits = pc.fill_null(pc.match_substring(contexts, '"episode_id"'), False)
    rows = np.flatnonzero(np.asarray(hits))
    if rows.size == 0:
        return _nulls(n)
    episodes: list[str | None] = [None] * n
    steps: list[int | None] = [None] * n
    terminals: list[bool | None] = [None] * n
    for i, text in zip(rows.tolist(), contexts.take(pa.array(rows)).to_pylist(), strict=True):
        ctx = orjson.loads(text)
        if type(ctx) is not dict:
            continue
        episode, step, terminal = ctx.get("episode_id"), ctx.get("step"), ctx.get("terminal")
        if type(episode) is int:
            episode = str(episode)
        if type(episode) is not str:
            continue
        episodes[i] = episode
        steps[i] = step if type(step) is int and step >= 0 else None
        terminals[i] = terminal if type(terminal) is bool else None
    return pa.array(episodes, _TYPES[0]), pa.array(steps, _TYPES[1]), pa.array(terminals, _TYPES[2])
