"""Joining one block of decisions (an hour, or a whole small log) with the reward rows that may belong to it.

Why a module of its own: the streaming join and the in-memory dataset step run exactly the same
rules, block by block, so the rules live here once, as DuckDB SQL over Arrow tables. Only keys and
reward values go into DuckDB; the decisions' list columns stay in Arrow and are taken by row number
at the end, so every column type passes through untouched.

The rules (docs/decision-log.md, "Joining rewards"): reward rows join decisions by ``request_id``;
a row repeating an earlier ``(request_id, event_id)`` is a duplicate (the earliest ``time``, then log
order, is kept); a distinct event counts when ``time - decision time <= window``, later ones are late;
the reward function combines the counted events, and each cost by name; rows logged after ``as_of``
are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from policy_server.decision_log.schema import REWARD_SCHEMA
from policy_server.join import summary as summary_mod
from policy_server.join.window import JoinOptions

__all__ = ["JOINED_COLUMNS", "Block", "join_block", "served_decisions"]

JOINED_COLUMNS = (
    pa.field("reward", pa.float64(), nullable=False),
    pa.field("costs", REWARD_SCHEMA.field("costs").type),
    pa.field("reward_events", pa.int64(), nullable=False),
    pa.field("defaulted", pa.bool_(), nullable=False),
    pa.field("first_reward_time", pa.float64()),
)
_REWARD_COLUMNS = ["request_id", "time", "reward", "costs", "event_id", "decision_time", "variant"]


@dataclass(frozen=True)
class Block:
    """Which decisions of the tables this block owns: ``time`` in ``[start, end)``; all of them when None.

    Decisions outside the range are context only (a decision a second before the hour still claims its
    rewards, so they are not orphans); reward rows count as orphans here only when their ``decision_time``
    falls in the range (rows without one are left to the caller).
    """

    start: float | None = None
    end: float | None = None

    def owns(self, column: str) -> str:
        if self.start is None or self.end is None:
            return "TRUE"
        return f"({column} >= {self.start!r} AND {column} < {self.end!r})"


def served_decisions(decisions: pa.Table) -> pa.Table:
    """One row per served decision, in log order.

    The router logs each decision it forwards (``served_by`` stable | candidate | fallback, with its
    ``assignment_probability``) and the server that answered logs it too; the router's row is kept
    (it says who really served: a candidate that answered after its latency budget logged a decision
    the fallback replaced). Shadow rows (``served_by = "shadow"``) were never served and are dropped.
    """
    if "served_by" not in decisions.column_names or decisions.num_rows == 0:
        return decisions
    served_by = decisions["served_by"]
    if served_by.null_count == decisions.num_rows:
        return decisions  # no router rows: nothing to reconcile (the common single-writer log)
    keep = pc.invert(pc.fill_null(pc.equal(served_by, "shadow"), False))
    table = decisions.filter(keep)
    ranked = pa.table(
        {
            "request_id": table["request_id"],
            "__server_copy": pc.is_null(table["served_by"]),  # False (router) sorts first
            "__i": pa.array(np.arange(table.num_rows, dtype=np.int64)),
        }
    ).sort_by([("request_id", "ascending"), ("__server_copy", "ascending"), ("__i", "ascending")])
    first = ranked.group_by("request_id", use_threads=False).aggregate([("__i", "first")])
    if first.num_rows == table.num_rows:
        return table
    return table.take(np.sort(first["__i_first"].to_numpy()))


def _sql_number(value: float | None) -> str:
    return "NULL" if value is None else repr(float(value))


def join_block(
    con: duckdb.DuckDBPyConnection,
    decisions: pa.Table,
    rewards: pa.Table,
    options: JoinOptions,
    block: Block = Block(),
) -> tuple[pa.Table, summary_mod.Summary]:
    """The owned, non-pending decisions with their joined reward columns, and what was counted.

    Rows keep the decisions' order. ``decisions`` has the decision schema (at least ``request_id``,
    ``time``, ``variant``), ``rewards`` the reward schema.
    """
    decisions = served_decisions(decisions)
    keys = pa.table(
        {
            "request_id": decisions["request_id"],
            "d_time": decisions["time"],
            "variant": decisions["variant"],
            "__d": pa.array(np.arange(decisions.num_rows, dtype=np.int64)),
        }
    )
    rows = rewards.select(_REWARD_COLUMNS).rename_columns([*_REWARD_COLUMNS[:-1], "r_variant"])
    rows = rows.append_column("__r", pa.array(np.arange(rewards.num_rows, dtype=np.int64)))
    con.register("jd", keys)
    con.register("jr", rows)
    try:
        return _run(con, decisions, options, block)
    finally:
        con.unregister("jd")
        con.unregister("jr")
        con.execute("DROP TABLE IF EXISTS jm; DROP TABLE IF EXISTS jdd")


def _run(
    con: duckdb.DuckDBPyConnection, decisions: pa.Table, options: JoinOptions, block: Block
) -> tuple[pa.Table, summary_mod.Summary]:
    as_of = repr(float(options.as_of))
    # A decision row replayed from the write-ahead log after a crash may be logged twice: count it once.
    con.execute("CREATE OR REPLACE TEMP TABLE jdd AS SELECT * FROM jd "
                "QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY __d) = 1")
    late = "FALSE" if options.window is None else f"(r.time - d.d_time > {options.window!r})"
    # Every reward row of an owned decision, ranked within its (request_id, event_id): rank 1 is the event.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE jm AS
        SELECT d.__d, d.variant, r.time, r.reward, r.costs, r.__r, {late} AS late,
               row_number() OVER (PARTITION BY r.request_id, r.event_id ORDER BY r.time, r.__r) AS k
        FROM jr r JOIN jdd d ON r.request_id = d.request_id
        WHERE r.time <= {as_of} AND {block.owns("d.d_time")}
        """
    )
    fn = options.reward_function
    order = "time, __r"
    pending = f"d.d_time > {as_of}"
    if options.window is not None:
        pending += f" OR d.d_time + {options.window!r} > {as_of}"
    default = _sql_number(options.default_reward)
    status = f"""CASE WHEN {pending} THEN 'pending' WHEN a.n IS NOT NULL THEN 'rewarded'
                      WHEN {default} IS NOT NULL THEN 'defaulted' ELSE 'excluded' END"""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE jo AS
        WITH ev AS (SELECT * FROM jm WHERE k = 1 AND NOT late),
        a AS (SELECT __d, count(*) AS n, min(time) AS first_time, {fn.sql("reward", order)} AS reward
              FROM ev GROUP BY __d),
        c AS (SELECT __d, map_from_entries(list(struct_pack(key := name, value := v) ORDER BY name)) AS costs
              FROM (SELECT __d, name, {fn.sql("v", order)} AS v
                    FROM (SELECT __d, time, __r, e.key AS name, e.value AS v
                          FROM (SELECT __d, time, __r, unnest(map_entries(costs)) AS e FROM ev WHERE costs IS NOT NULL))
                    WHERE v IS NOT NULL GROUP BY __d, name)
              GROUP BY __d)
        SELECT d.__d, d.variant, {status} AS status, coalesce(a.reward, {default}) AS reward, c.costs,
               coalesce(a.n, 0) AS reward_events, a.n IS NULL AS defaulted, a.first_time AS first_reward_time
        FROM jdd d LEFT JOIN a ON a.__d = d.__d LEFT JOIN c ON c.__d = d.__d
        WHERE {block.owns("d.d_time")}
        """
    )
    result = summary_mod.Summary()
    counts: dict[str, summary_mod.Counts] = {}
    for variant, state, n in con.sql("SELECT variant, status, count(*) FROM jo GROUP BY ALL").fetchall():
        c = counts.setdefault(variant, summary_mod.Counts())
        setattr(c, state, getattr(c, state) + n)
        c.decisions += n
    query = "SELECT variant, count(*) FILTER (k > 1), count(*) FILTER (k = 1 AND late) FROM jm GROUP BY ALL"
    for variant, duplicates, n_late in con.sql(query).fetchall():
        c = counts.setdefault(variant, summary_mod.Counts())
        c.duplicates += duplicates
        c.late += n_late
    orphan_rows = f"""
        SELECT coalesce(r.r_variant, 'unknown'), count(*) FROM jr r ANTI JOIN jd d ON r.request_id = d.request_id
        WHERE r.time <= {as_of} AND {"TRUE" if block.start is None else block.owns("r.decision_time")} GROUP BY ALL"""
    for variant, n in con.sql(orphan_rows).fetchall():
        counts.setdefault(variant, summary_mod.Counts()).orphans += n
    for variant, c in counts.items():
        result.add(variant, c)
    joined = con.sql(
        "SELECT __d, reward, costs, reward_events, defaulted, first_reward_time FROM jo "
        "WHERE status IN ('rewarded', 'defaulted') ORDER BY __d"
    ).to_arrow_table()
    con.execute("DROP TABLE IF EXISTS jo")
    out = decisions.take(joined["__d"])
    for f in JOINED_COLUMNS:
        out = out.append_column(f, joined[f.name].cast(f.type))
    return out, result
