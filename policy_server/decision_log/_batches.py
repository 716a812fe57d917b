"""Micro-batches of decisions as numpy columns (``DecisionLog.log_decision_batch``) to an Arrow table.

Why a module of its own: this is the server's path, and its point is to build Arrow columns
without a Python object per row. ``log_decision_batch`` appends a :class:`DecisionBatch` whole
to the same buffer as the dicts (so the log keeps their order), and the writer thread turns
runs of batches into columns from concatenated numpy buffers and offsets. A list<float64>
column is a flat float64 buffer plus int32 row offsets, so concatenating the batches' arrays
(``np.concatenate``, a few C calls) and repeating each batch's row width gives the column.
What is left in Python is a few C-level ``map()`` passes per field over the *batches*, plus
the strings (ids, shield reasons). The work per batch still holds the GIL, so a producer of
many tiny batches should coalesce them first (``log_staging.DecisionStaging``, which the server
uses: one batch per 4,096 decisions). A batch that does not fit the schema raises here and is
rejected whole by ``_convert``.

Measured on the shared 2-core dev machine (noisy: min-median of 5-9 runs), 50,000 rows, obs dim 8,
4 discrete actions with probabilities, no shield reasons, conversion to one Arrow table::

    dict path (log_decision):        110-180 ms; longest GIL hold 70-120 ms (one from_pylist call)
    batches of 32 (1,563 batches):    15-23 ms; longest GIL hold ~2-3 ms
    batches of 4  (12,500 batches):   62-95 ms; longest GIL hold ~2-5 ms (mostly cache misses on
                                      12,500 scattered small arrays; see _concatenate)
    log_decision_batch: 0.45-0.8 µs per call (one deque append, whatever the batch size).

"Longest GIL hold": worst delay seen by another thread sleeping 0.5 ms in a loop, with the switch
interval at 0.2 ms so that only single C calls can hold it longer.
"""

from __future__ import annotations

import itertools
import numbers
import operator
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from policy_server.decision_log._trajectory import trajectory_columns
from policy_server.decision_log.schema import DECISION_SCHEMA, FLOAT_LIST, SCHEMA_VERSION, DecisionBatch

__all__ = ["BatchSlice", "slices_to_table"]


class BatchSlice:
    """Rows ``[start, stop)`` of a logged batch: how batches sit in the buffer.

    ``rows`` is fixed when the batch is logged, so the buffer's row count never depends on the
    caller's objects. A segment boundary may cut a batch in two slices (``whole`` is then False).
    """

    __slots__ = ("batch", "rows", "start", "stop", "whole")

    def __init__(self, batch: DecisionBatch, start: int, stop: int, whole: bool) -> None:
        self.batch = batch
        self.start = start
        self.stop = stop
        self.rows = stop - start
        self.whole = whole

    def split(self, rows: int) -> tuple[BatchSlice, BatchSlice]:
        """The first ``rows`` rows and the rest."""
        cut = self.start + rows
        return BatchSlice(self.batch, self.start, cut, False), BatchSlice(self.batch, cut, self.stop, False)


# Fields with one entry per row; the optional ones may be None for the whole batch.
_ROW_FIELDS = ("request_ids", "observations", "actions", "propensities", "shield_reasons", "latency_ms")
_OPTIONAL_ROW_FIELDS = ("probabilities", "context_json", "assignment_probability", "predicted_value", "proposed_action")
_NUMERIC_KINDS = frozenset("iuf")  # numpy dtype kinds: signed, unsigned, float (not bool, not object)
_MAX_OFFSET = int(np.iinfo(np.int32).max)
_REASONS_LIST = pa.list_(pa.string())
_NONE = type(None)


def _present(values: list[Any]) -> list[bool]:
    """Which batches gave an optional field (``is not None``; ``==`` would compare arrays elementwise)."""
    return list(map(operator.is_not, values, itertools.repeat(None)))


def _row_field(batches: list[DecisionBatch], rows: list[int], name: str) -> list[Any]:
    """One per-row field across the batches, after checking that batch i gives ``rows[i]`` entries.

    Called right before the field's column is built: the arrays are still in the CPU cache then
    (with batches of 4, touching 12,500 scattered arrays is what the conversion mostly costs).
    """
    values = given = list(map(operator.attrgetter(name), batches))
    expected = rows
    if name in _OPTIONAL_ROW_FIELDS:
        present = _present(values)
        if not all(present):
            given = list(itertools.compress(values, present))
            expected = list(itertools.compress(rows, present))
    try:
        lengths = list(map(len, given))
    except TypeError:
        raise TypeError(f"{name} must be an array or list with one entry per row") from None
    if lengths != expected:
        got, want = next((g, w) for g, w in zip(lengths, expected, strict=True) if g != w)
        raise ValueError(f"{name} has {got} rows, expected {want} (one per request id)")
    return values


def _sliced(part: BatchSlice) -> DecisionBatch:
    """The batch cut to the slice's rows; its lengths are checked first (a cut would hide a mismatch)."""
    batch = part.batch
    if type(batch) is not DecisionBatch:
        raise TypeError(f"log_decision_batch takes a DecisionBatch, got {type(batch).__name__}")
    cut = slice(part.start, part.stop)
    declared = [len(batch.request_ids)]
    fields = {name: _row_field([batch], declared, name)[0] for name in (*_ROW_FIELDS, *_OPTIONAL_ROW_FIELDS)}
    if type(batch.time) is np.ndarray:
        fields["time"] = _row_field([batch], declared, "time")[0]
    return replace(batch, **{name: value[cut] for name, value in fields.items() if value is not None})


_CONCATENATE_AT_ONCE = 1_000


def _concatenate(arrays: list[np.ndarray], axis: int | None = 0) -> np.ndarray:
    """``np.concatenate`` in calls of at most ``_CONCATENATE_AT_ONCE`` arrays.

    One call holds the GIL throughout, and small arrays scattered over the heap cost ~0.5-0.8 µs
    each to gather (cache misses): 12,500 batches of 4 held it for 6-10 ms per column. In calls
    of 1,000 it is released every ~1 ms; the extra copy of the pieces is a plain memcpy.
    """
    if len(arrays) <= _CONCATENATE_AT_ONCE:
        return np.concatenate(arrays, axis=axis)
    step = _CONCATENATE_AT_ONCE
    pieces = [np.concatenate(arrays[i : i + step], axis=axis) for i in range(0, len(arrays), step)]
    return np.concatenate(pieces, axis=axis)


def _require_arrays(values: list[Any], name: str) -> None:
    for kind in set(map(type, values)):
        if kind is not np.ndarray:
            raise TypeError(f"{name} must be numpy arrays, got {kind.__name__}")


def _as_float64(values: np.ndarray, name: str) -> np.ndarray:
    if values.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"{name} must hold numbers, got dtype {values.dtype}")
    return values.astype(np.float64, copy=False)


def _float_column(values: list[Any], rows: list[int], name: str, *, optional: bool = False) -> pa.Array:
    """One float64 per row from (B,) arrays; for an ``optional`` field, a batch that gave None has null rows."""
    mask = None
    if optional:
        present = _present(values)
        if not any(present):
            return pa.nulls(sum(rows), pa.float64())
        if not all(present):
            values = [v if v is not None else np.zeros(n) for v, n in zip(values, rows, strict=True)]
            mask = np.repeat(np.logical_not(present), rows)
    _require_arrays(values, name)
    flat = _concatenate(values)
    if flat.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional arrays (B,), one value per row")
    return pa.array(_as_float64(flat, name), mask=mask)


def _nan_as_null(column: pa.Array) -> pa.Array:
    """A non-finite prediction is no prediction: null, so readers' means skip it."""
    if column.null_count == len(column):
        return column
    return pc.if_else(pc.is_finite(column), column, pa.scalar(None, pa.float64()))


def _proposed_column(values: list[Any], rows: list[int]) -> pa.Array:
    """``proposed_action``: list<float64> per row from (B, D) arrays; a row of NaN (nothing proposed) is null."""
    n = sum(rows)
    present = _present(values)
    if not any(present):
        return pa.nulls(n, FLOAT_LIST)
    _require_arrays(list(itertools.compress(values, present)), "proposed_action")
    width = next(itertools.compress(values, present)).reshape(rows[present.index(True)], -1).shape[1]
    parts = [
        np.full((k, width), np.nan) if v is None else v.reshape(k, -1).astype(np.float64, copy=False)
        for v, k in zip(values, rows, strict=True)
    ]
    try:
        stacked = _concatenate(parts)
    except ValueError:
        raise ValueError("proposed_action must have the same width in every batch of a segment") from None
    offsets = pa.array((np.arange(n + 1, dtype=np.int64) * width).astype(np.int32))
    null = pa.array(np.isnan(stacked).all(axis=1))
    return pa.ListArray.from_arrays(offsets, pa.array(stacked.reshape(-1)), type=FLOAT_LIST, mask=null)


def _list_column(
    values: list[Any], rows: list[int], name: str, *, ndims: set[int] | None = None, optional: bool = False
) -> pa.Array:
    """One list<float64> per row from (B, ...) arrays, each row flattened.

    For an ``optional`` field, a batch that gave None has null rows.
    """
    n = sum(rows)
    mask = None
    if optional:
        present = _present(values)
        if not any(present):
            return pa.nulls(n, FLOAT_LIST)
        if not all(present):
            values = [v if v is not None else np.empty((k, 0)) for v, k in zip(values, rows, strict=True)]
            mask = pa.array(np.repeat(np.logical_not(present), rows))
    _require_arrays(values, name)
    try:
        stacked = _concatenate(values)  # every batch has the same row shape: the common case
    except ValueError:
        stacked = None
    if stacked is not None:
        if ndims is not None and stacked.ndim not in ndims:
            raise ValueError(f"{name} must have {' or '.join(map(str, sorted(ndims)))} dimensions")
        width = int(np.prod(stacked.shape[1:]))
        offsets = np.arange(n + 1, dtype=np.int64) * width
        flat = stacked.reshape(-1)
    else:  # row shapes differ between batches
        if ndims is not None and not set(map(operator.attrgetter("ndim"), values)) <= ndims:
            raise ValueError(f"{name} must have {' or '.join(map(str, sorted(ndims)))} dimensions")
        sizes = np.array(list(map(operator.attrgetter("size"), values)), np.int64)
        counts = np.array(rows, np.int64)
        widths = sizes // np.maximum(counts, 1)  # values per row: a (B, ...) array's size is a multiple of B
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(np.repeat(widths, counts), out=offsets[1:])
        flat = _concatenate(values, axis=None)
    if offsets[-1] > _MAX_OFFSET:
        raise ValueError(f"{name} has more than {_MAX_OFFSET} values in one segment; lower segment_rows")
    values_array = pa.array(_as_float64(flat, name))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values_array, type=FLOAT_LIST, mask=mask)


def _action_columns_from_arrays(values: list[Any], rows: list[int]) -> tuple[pa.Array, pa.Array]:
    """``action`` and ``action_index``: integer (B,) arrays are discrete, float (B,) or (B, D) continuous."""
    _require_arrays(values, "actions")
    kinds = {dtype.kind for dtype in set(map(operator.attrgetter("dtype"), values))}
    if not kinds <= _NUMERIC_KINDS:
        raise TypeError(f"actions must be integers (B,) (discrete) or floats (B, D) (continuous), got kinds {kinds}")
    n = sum(rows)
    if "f" not in kinds:  # all discrete
        index = _concatenate(values)
        if index.ndim != 1:
            raise ValueError("integer (discrete) actions must be one-dimensional (B,), one index per row")
        index = index.astype(np.int64, copy=False)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(index.astype(np.float64)), type=FLOAT_LIST), pa.array(index)
    action = _list_column(values, rows, "actions", ndims={1, 2})
    if kinds == {"f"}:  # all continuous
        return action, pa.nulls(n, pa.int64())
    discrete = [a.dtype.kind != "f" for a in values]  # some batches of each kind
    if any(a.ndim != 1 for a in itertools.compress(values, discrete)):
        raise ValueError("integer (discrete) actions must be one-dimensional (B,), one index per row")
    index = _concatenate([a if d else np.zeros(len(a), np.int64) for a, d in zip(values, discrete, strict=True)])
    return action, pa.array(index.astype(np.int64, copy=False), mask=np.repeat(np.logical_not(discrete), rows))


def _require_row_lists(values: list[Any], name: str) -> None:
    """A single string is a sequence too: "abc" must not become three rows."""
    for kind in set(map(type, values)):
        if kind in (str, bytes) or kind is _NONE:
            raise TypeError(f"{name} must be a list with one entry per row, got {kind.__name__}")


def _strings_per_row(values: list[Any], rows: list[int], name: str, *, nullable: bool) -> pa.Array:
    """Per-batch lists of strings (one per row) as one column; a batch that gave None has null rows."""
    present = _present(values)
    if not any(present):
        return pa.nulls(sum(rows), pa.string())
    if all(present):
        _require_row_lists(values, name)
    else:
        _require_row_lists(list(itertools.compress(values, present)), name)
        values = [v if v is not None else itertools.repeat(None, k) for v, k in zip(values, rows, strict=True)]
    strings = pa.array(list(itertools.chain.from_iterable(values)), pa.string())
    if strings.null_count and not nullable:
        raise ValueError(f"{name} must not contain None")
    return strings


def _strings_per_batch(values: list[Any], batch_of_row: pa.Array, name: str, *, nullable: bool = False) -> pa.Array:
    """A per-batch string repeated for each of the batch's rows."""
    strings = pa.array(values, pa.string())
    if strings.null_count and not nullable:
        raise ValueError(f"{name} must be a string, got None")
    return strings.take(batch_of_row)


def _reasons_column(values: list[Any], n: int) -> pa.Array:
    """``shield_reasons`` from flattened lists plus offsets; a None row means no reason (like a missing key)."""
    _require_row_lists(values, "shield_reasons")
    per_row = list(itertools.chain.from_iterable(values))
    kinds = set(map(type, per_row))
    if _NONE in kinds:
        per_row = [r if r is not None else [] for r in per_row]
        kinds.discard(_NONE)
    if not kinds <= {list, tuple}:
        raise TypeError(
            f"shield_reasons must hold one list of strings per row, got {sorted(k.__name__ for k in kinds)}"
        )
    offsets = np.zeros(n + 1, np.int32)
    if any(per_row):  # usually no row has a reason
        np.cumsum(np.array(list(map(len, per_row)), np.int64), out=offsets[1:], dtype=np.int32)
    reasons = pa.array(list(itertools.chain.from_iterable(per_row)), pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), reasons, type=_REASONS_LIST)


def _times(times: list[Any], rows: list[int]) -> pa.Array:
    """One float64 per row from each batch's number, or from its (B,) array (a coalesced batch)."""
    kinds = set(map(type, times))
    if np.ndarray in kinds:
        per_row = [t if type(t) is np.ndarray else np.full(k, t, np.float64) for t, k in zip(times, rows, strict=True)]
        if list(map(len, per_row)) != rows or any(t.ndim != 1 or t.dtype.kind not in "iuf" for t in per_row):
            raise ValueError("time must be a number or a float64 array (B,), one value per row")
        return pa.array(_concatenate(per_row).astype(np.float64, copy=False))
    for kind in kinds:
        if kind is bool or not issubclass(kind, numbers.Real):
            raise TypeError(f"time must be a number (Unix epoch seconds), got {kind.__name__}")
    return pa.array(np.repeat(np.array(times, np.float64), rows))


def slices_to_table(parts: list[BatchSlice], schema: pa.Schema) -> pa.Table:
    """Build one table from consecutive batch slices, raising on any batch that does not fit the schema."""
    if schema is not DECISION_SCHEMA:
        raise TypeError("batches can only be logged as decisions")
    if all(map(operator.attrgetter("whole"), parts)):
        batches = list(map(operator.attrgetter("batch"), parts))
    else:  # a segment boundary cut the first or the last batch
        batches = [p.batch if p.whole else _sliced(p) for p in parts]
    for kind in set(map(type, batches)):
        if kind is not DecisionBatch:
            raise TypeError(f"log_decision_batch takes a DecisionBatch, got {kind.__name__}")
    rows = list(map(operator.attrgetter("rows"), parts))
    n = sum(rows)

    def field(name: str) -> list[Any]:
        return _row_field(batches, rows, name)

    def per_batch(name: str) -> list[Any]:
        return list(map(operator.attrgetter(name), batches))

    batch_of_row = pa.array(np.repeat(np.arange(len(batches)), rows))
    action, action_index = _action_columns_from_arrays(field("actions"), rows)
    columns = {
        "schema_version": pa.array(np.full(n, SCHEMA_VERSION, np.int16)),
        "request_id": _strings_per_row(field("request_ids"), rows, "request_ids", nullable=False),
        "time": _times(per_batch("time"), rows),
        "policy_version": _strings_per_batch(per_batch("policy_version"), batch_of_row, "policy_version"),
        "variant": _strings_per_batch(per_batch("variant"), batch_of_row, "variant"),
        "observation": _list_column(field("observations"), rows, "observations"),
        "action": action,
        "action_index": action_index,
        "propensity": _float_column(field("propensities"), rows, "propensities"),
        "probabilities": _list_column(field("probabilities"), rows, "probabilities", ndims={2}, optional=True),
        "shield_reasons": _reasons_column(field("shield_reasons"), n),
        "latency_ms": _float_column(field("latency_ms"), rows, "latency_ms"),
        "context_json": _strings_per_row(field("context_json"), rows, "context_json", nullable=True),
        "assignment_probability": _float_column(
            field("assignment_probability"), rows, "assignment_probability", optional=True
        ),
        "served_by": _strings_per_batch(per_batch("served_by"), batch_of_row, "served_by", nullable=True),
        "predicted_value": _nan_as_null(
            _float_column(field("predicted_value"), rows, "predicted_value", optional=True)
        ),
        "proposed_action": _proposed_column(field("proposed_action"), rows),
    }
    columns["episode_id"], columns["step"], columns["terminal"] = trajectory_columns(columns["context_json"])
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
