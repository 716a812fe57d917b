"""Record dicts (``DecisionLog.log_decision``/``log_reward``) to an Arrow table of the stream's schema.

Why a module of its own: dicts are the general, slow path (``pa.Table.from_pylist``, a Python
object per row); the numpy batches the server logs take another route (``_batches``). This is
where the dict path checks what Arrow does not (required fields present, actions well typed)
and fills the columns the writer derives itself (``schema_version``, ``action_index``). A
record that does not fit raises; ``_convert`` isolates and drops it.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from policy_server.decision_log._trajectory import COLUMNS as TRAJECTORY_COLUMNS
from policy_server.decision_log._trajectory import trajectory_columns
from policy_server.decision_log.schema import FLOAT_LIST, SCHEMA_VERSION

__all__ = ["records_to_table"]

# Columns the writer fills itself, not taken from the record dicts.
_DERIVED = {"schema_version", "action", "action_index"}


def _non_nullable(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if not f.nullable]


def _split_action(action: Any) -> tuple[Any, int | None]:
    """A discrete action (an integer) is kept as its index and as a one-element float list."""
    kind = type(action)
    if kind is int:  # the common cases first: ABC isinstance checks cost microseconds
        return [float(action)], action
    if kind is list:
        return action, None  # pyarrow casts the items to float64 and rejects non-numbers
    if isinstance(action, bool | str | bytes | Mapping) or action is None:
        raise TypeError(f"action must be an int or a list of floats, got {action!r}")
    if isinstance(action, numbers.Integral):  # numpy integers
        return [float(action)], int(action)
    if isinstance(action, numbers.Real):  # a one-dimensional continuous action given as a scalar
        return [float(action)], None
    return list(action), None


def _action_columns(actions: list[Any]) -> tuple[pa.Array, pa.Array]:
    """``action`` and ``action_index`` columns; batches of one kind avoid a Python object per row."""
    n = len(actions)
    kinds = set(map(type, actions))
    if kinds == {int}:  # all discrete: the list column is built from the index array, no per-row lists
        index = pa.array(actions, pa.int64())
        offsets = pa.array(range(n + 1), pa.int32())
        return pa.ListArray.from_arrays(offsets, pc.cast(index, pa.float64())), index
    if kinds == {list}:  # all continuous; pyarrow rejects items that are not numbers
        return pa.array(actions, FLOAT_LIST), pa.nulls(n, pa.int64())
    split = [_split_action(a) for a in actions]
    return pa.array([s[0] for s in split], FLOAT_LIST), pa.array([s[1] for s in split], pa.int64())


def records_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build one table, raising on any record that does not fit the schema."""
    plain = pa.schema([f for f in schema if f.name not in _DERIVED])
    table = pa.Table.from_pylist(rows, schema=plain)
    required = [n for n in _non_nullable(plain) if n != "shield_reasons"]
    for name in required:
        if table.column(name).null_count:
            raise ValueError(f"missing or null required field {name!r}")
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "schema_version": pa.array([SCHEMA_VERSION] * len(rows), pa.int16())
    }
    if "action" in schema.names:
        columns["action"], columns["action_index"] = _action_columns([r["action"] for r in rows])
    if "shield_reasons" in schema.names:
        reasons = table.column("shield_reasons")
        if reasons.null_count:  # an absent list means "no reason", not "unknown"
            reasons = pc.if_else(pc.is_null(reasons), pa.scalar([], reasons.type), reasons)
        columns["shield_reasons"] = reasons
    if "episode_id" in schema.names and "context_json" in schema.names and not any(
        TRAJECTORY_COLUMNS[0] in r for r in rows
    ):  # given explicitly by the record, or derived from its context as the batch path does
        derived = trajectory_columns(table.column("context_json").combine_chunks())
        columns.update(zip(TRAJECTORY_COLUMNS, derived, strict=True))
    arrays = [columns[f.name] if f.name in columns else table.column(f.name) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
