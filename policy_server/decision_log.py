"""Decision log: every served decision and every reward, as Parquet segments.

Why it looks like this:

* Off-policy evaluation needs each decision's propensity, policy version and request id, and the
  rewards that arrive later, joined by ``request_id``. Decisions and rewards are two separate
  append-only event streams (``decisions/`` and ``rewards/``) because rewards arrive later, from
  another endpoint, sometimes never, sometimes twice.
* The request path must not wait for storage. ``log_decision``/``log_reward`` only append the
  dict to a ``collections.deque`` (atomic under the GIL, ~0.1 µs); a background thread turns the
  buffers into ``pyarrow`` tables and writes zstd Parquet segments every ``flush_interval_s`` or
  every ``segment_rows`` rows.
* Conversion holds the GIL, so the writer converts a segment in chunks (``CONVERT_RECORDS``
  dicts or ``CONVERT_BATCH_ROWS`` batch rows per call) and yields the GIL between them: the
  producer's event loop then waits well under a millisecond for it, not the whole segment's
  conversion (``pa.Table.from_pylist``: 130-190 ms per 50,000 dicts here).
  ``log_decision_batch`` takes a micro-batch as numpy columns (:class:`DecisionBatch`) instead,
  appends it whole to the same deque, and the writer builds Arrow columns from concatenated
  numpy buffers and offsets, with no Python object per row. Dicts and batches share one
  buffer, so the log keeps their order. The work per batch is still Python and holds the GIL,
  so a producer of many tiny batches should coalesce them first (``log_staging.DecisionStaging``,
  which the server uses: one batch per 4,096 decisions).
* Nothing is lost: a segment that fails to write stays queued and is retried with backoff
  (``errors`` counts failures); ``flush()``/``close()`` drain everything while holding the same
  lock the writer thread holds, so a write that is in flight when ``close()`` is called finishes
  first and nothing is skipped.
* Any fsspec URL works (local path, ``file://``, ``memory://``, ``s3://`` with ``s3fs``).

See ``docs/decision-log.md`` for the column reference and the versioning policy.
"""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import io
import itertools
import logging
import numbers
import operator
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "DECISION_SCHEMA",
    "REWARD_SCHEMA",
    "SCHEMA_VERSION",
    "DecisionBatch",
    "DecisionLog",
    "DecisionLogError",
    "join_rewards",
    "read_decisions",
    "read_rewards",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Bump on any incompatible change of the columns below (see docs/decision-log.md)."""

SCHEMA_VERSION_KEY = "policy_rollouts.schema_version"
STREAM_KEY = "policy_rollouts.stream"
DECISIONS_DIR = "decisions"
REWARDS_DIR = "rewards"

_FLOAT_LIST = pa.list_(pa.float64())

DECISION_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),
        pa.field("policy_version", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("observation", _FLOAT_LIST, nullable=False),
        pa.field("action", _FLOAT_LIST, nullable=False),
        pa.field("action_index", pa.int64()),
        pa.field("propensity", pa.float64(), nullable=False),
        pa.field("probabilities", _FLOAT_LIST),
        pa.field("shield_reasons", pa.list_(pa.string()), nullable=False),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("context_json", pa.string()),
        pa.field("assignment_probability", pa.float64()),
        pa.field("served_by", pa.string()),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION), STREAM_KEY: DECISIONS_DIR},
)

REWARD_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("costs", pa.map_(pa.string(), pa.float64())),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION), STREAM_KEY: REWARDS_DIR},
)

# Columns the writer fills itself, not taken from the record dicts.
_DERIVED = {"schema_version", "action", "action_index"}


class DecisionLogError(RuntimeError):
    """flush()/close() could not write every buffered record before their deadline."""


@dataclass(frozen=True, slots=True)
class DecisionBatch:
    """One micro-batch of decisions as columns: what the server's hot path hands over (no per-row dicts).

    B rows; each field maps to the column of the same meaning in ``DECISION_SCHEMA``. The writer
    checks and converts it later, off the request path: a batch that does not fit (wrong lengths,
    wrong dtypes) is rejected as a whole and counted in ``DecisionLog.rejected`` by its rows.
    """

    request_ids: list[str]  # B ids
    time: float | np.ndarray  # Unix epoch seconds: one value for the whole batch, or float64 (B,) per row
    policy_version: str
    variant: str
    observations: np.ndarray  # (B, ...) float32 or float64; stored flattened per row as list<float64>
    actions: np.ndarray  # int (B,): discrete, action=[float(k)], action_index=k; float (B, D): continuous
    propensities: np.ndarray  # float64 (B,)
    probabilities: np.ndarray | None  # float64 (B, K), or None (column null for these rows)
    shield_reasons: list[list[str]]  # B lists (usually empty)
    latency_ms: np.ndarray  # float64 (B,)
    context_json: list[str | None] | None = None  # None: null for all rows
    assignment_probability: np.ndarray | None = None  # float64 (B,) or None -> null
    served_by: str | None = None  # one value for the batch, or null


# --------------------------------------------------------------------------------------------
# Records -> Arrow


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
        return pa.array(actions, _FLOAT_LIST), pa.nulls(n, pa.int64())
    split = [_split_action(a) for a in actions]
    return pa.array([s[0] for s in split], _FLOAT_LIST), pa.array([s[1] for s in split], pa.int64())


def _records_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
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
    arrays = [columns[f.name] if f.name in columns else table.column(f.name) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _to_table(items: list[Any], schema: pa.Schema) -> tuple[pa.Table, int]:
    """Convert one segment's worth of buffered items, dropping (and logging) those that do not fit.

    Items are record dicts and :class:`_BatchSlice` s in logging order; each run of one kind is
    converted at once and the tables are concatenated, so the order is kept. One malformed item
    must not block the stream forever, so it is rejected, not retried. Bad items are isolated by
    bisection: a 50k-row segment with one bad record costs ~30 conversions, not 50k. A batch is
    rejected whole, counted by its rows. Returns the table and the number of rejected rows.
    """
    errors: list[_Rejection] = []
    tables: list[pa.Table] = []
    kinds = set(map(type, items))
    if len(kinds) == 1:  # one kind only (the usual case): no grouping pass
        runs: Any = [(_BatchSlice in kinds, items)]
    else:
        runs = itertools.groupby(items, key=lambda item: type(item) is _BatchSlice)
    for is_batch, run in runs:
        convert = _slices_to_table if is_batch else _records_to_table
        budget = CONVERT_BATCH_ROWS if is_batch else CONVERT_RECORDS
        for chunk in _chunks(list(run), budget):
            tables += _convert_bisect(chunk, schema, convert, errors)
            time.sleep(0)  # let the event loop thread take the GIL between conversions
    if errors:
        first = errors[0]
        log.error(
            "decision log: rejected %d %s record(s) that do not match the schema; first: request_id=%r: %s. "
            "Fix the caller so that records match docs/decision-log.md.",
            sum(e.rows for e in errors),
            schema.metadata[STREAM_KEY.encode()].decode(),
            first.request_id,
            first.error,
        )
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table, sum(e.rows for e in errors)


# Parquet dictionary encoding only where values repeat: on ids, times and floats it costs the writer
# about twice the CPU and makes segments bigger (4,096 served decisions: 2.0 against 0.8 µs per row,
# 107 against 85 bytes per row). Names a schema lacks are ignored.
_DICTIONARY_COLUMNS = ["schema_version", "policy_version", "variant", "served_by", "shield_reasons"]

# Rows converted per call (each call holds the GIL throughout): a whole 50,000-row segment at once
# held it for milliseconds (one pa.array call over 50,000 request-id strings; from_pylist over 50,000
# dicts: 130-190 ms), and the server's event loop waited that long: p99 at 32 clients 3.5-4.2 ms with
# the log on against 1.8-2.1 ms with the conversion skipped. Chunks of these sizes hold it for well
# under a millisecond here, and the writer yields the GIL between them.
CONVERT_BATCH_ROWS = 4096
CONVERT_RECORDS = 256


def _chunks(items: list[Any], max_rows: int) -> list[list[Any]]:
    """Consecutive runs of items of at most ``max_rows`` rows each; a larger batch is a chunk of its own.

    Batches are never cut here: a batch that does not fit the schema is rejected whole.
    """
    out: list[list[Any]] = []
    chunk: list[Any] = []
    rows = 0
    for item in items:
        n = item.rows if type(item) is _BatchSlice else 1
        if chunk and rows + n > max_rows:
            out.append(chunk)
            chunk, rows = [], 0
        chunk.append(item)
        rows += n
    if chunk:
        out.append(chunk)
    return out


_CONVERSION_ERRORS = (pa.ArrowException, TypeError, ValueError, KeyError, AttributeError, IndexError)


@dataclass(frozen=True, slots=True)
class _Rejection:
    request_id: Any
    rows: int
    error: Exception


def _convert_bisect(
    items: list[Any],
    schema: pa.Schema,
    convert: Callable[[list[Any], pa.Schema], pa.Table],
    errors: list[_Rejection],
) -> list[pa.Table]:
    try:
        return [convert(items, schema)]
    except _CONVERSION_ERRORS as exc:
        if len(items) == 1:
            errors.append(_rejection(items[0], exc))
            return []
    mid = len(items) // 2
    return _convert_bisect(items[:mid], schema, convert, errors) + _convert_bisect(items[mid:], schema, convert, errors)


def _rejection(item: Any, exc: Exception) -> _Rejection:
    if isinstance(item, _BatchSlice):
        try:
            first_id = item.batch.request_ids[item.start]
        except Exception:
            first_id = None
        return _Rejection(first_id, item.rows, exc)
    return _Rejection(item.get("request_id") if isinstance(item, Mapping) else None, 1, exc)


# --------------------------------------------------------------------------------------------
# Batches (numpy columns) -> Arrow
#
# Why numpy and offsets: a list<float64> column is a flat float64 buffer plus int32 row offsets,
# so concatenating the batches' arrays (np.concatenate, a few C calls) and repeating each batch's
# row width gives the column without a Python object per row. What is left in Python is a few
# C-level map() passes per field over the *batches*, plus the strings (ids, shield reasons).
#
# Measured on the shared 2-core dev machine (noisy: min-median of 5-9 runs), 50,000 rows, obs dim 8,
# 4 discrete actions with probabilities, no shield reasons, conversion to one Arrow table:
#   dict path (log_decision):        110-180 ms; longest GIL hold 70-120 ms (one from_pylist call)
#   batches of 32 (1,563 batches):    15-23 ms; longest GIL hold ~2-3 ms
#   batches of 4  (12,500 batches):   62-95 ms; longest GIL hold ~2-5 ms (mostly cache misses on
#                                     12,500 scattered small arrays; see _concatenate)
#   log_decision_batch: 0.45-0.8 µs per call (one deque append, whatever the batch size).
# "Longest GIL hold": worst delay seen by another thread sleeping 0.5 ms in a loop, with the switch
# interval at 0.2 ms so that only single C calls can hold it longer.


class _BatchSlice:
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

    def split(self, rows: int) -> tuple[_BatchSlice, _BatchSlice]:
        """The first ``rows`` rows and the rest."""
        cut = self.start + rows
        return _BatchSlice(self.batch, self.start, cut, False), _BatchSlice(self.batch, cut, self.stop, False)


# Fields with one entry per row; the optional ones may be None for the whole batch.
_ROW_FIELDS = ("request_ids", "observations", "actions", "propensities", "shield_reasons", "latency_ms")
_OPTIONAL_ROW_FIELDS = ("probabilities", "context_json", "assignment_probability")
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


def _sliced(part: _BatchSlice) -> DecisionBatch:
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
            return pa.nulls(n, _FLOAT_LIST)
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
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values_array, type=_FLOAT_LIST, mask=mask)


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
        return pa.ListArray.from_arrays(offsets, pa.array(index.astype(np.float64)), type=_FLOAT_LIST), pa.array(index)
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


def _slices_to_table(parts: list[_BatchSlice], schema: pa.Schema) -> pa.Table:
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
    }
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


# --------------------------------------------------------------------------------------------
# Writer


class _Stream:
    """One buffered event stream (decisions or rewards) and its directory.

    The buffer holds record dicts (one row each) and ``_BatchSlice`` s (``rows`` each) in logging
    order. ``extra_rows`` adds the rows of buffered slices beyond one per item, so the row count
    is ``len(buffer) + extra_rows`` without walking the buffer. Producers add to it, the writer
    subtracts under its lock; CPython (3.11, with the GIL) does not switch threads inside
    ``obj.n += k`` on a plain attribute (no call between the load and the store; checked with
    four threads and a 1 µs switch interval). Were an update ever lost, only
    ``buffered`` and the wake-up time would be off, never the data: segments are cut by walking
    the items.
    """

    def __init__(self, name: str, schema: pa.Schema, path: str) -> None:
        self.name = name
        self.schema = schema
        self.path = path
        self.buffer: collections.deque[Any] = collections.deque()
        self.extra_rows = 0

    @property
    def rows(self) -> int:
        return len(self.buffer) + self.extra_rows

    def drain(self, segment_rows: int, *, partial: bool) -> list[list[Any]]:
        """Pop full segments (and the remainder if ``partial``); appends may race, pops never do.

        A batch that would overflow the segment is cut: its first rows end this segment and the
        rest goes back to the front of the buffer, so order is kept.
        """
        chunks = []
        buf = self.buffer
        while buf and (partial or self.rows >= segment_rows):
            chunk: list[Any] = []
            taken = 0
            while buf and taken < segment_rows:
                item = buf.popleft()
                if type(item) is _BatchSlice:
                    self.extra_rows -= item.rows - 1
                    room = segment_rows - taken
                    if item.rows > room:
                        item, rest = item.split(room)
                        buf.appendleft(rest)
                        self.extra_rows += rest.rows - 1
                    taken += item.rows
                else:
                    taken += 1
                chunk.append(item)
            chunks.append(chunk)
        return chunks


class DecisionLog:
    """Non-blocking, append-only Parquet log of decisions and rewards.

    Usage::

        dlog = DecisionLog("s3://bucket/rollouts/cartpole")   # or a local path, memory://...
        dlog.log_decision({...})      # on the request path: only appends to a buffer
        dlog.log_decision_batch(DecisionBatch(...))   # a micro-batch as numpy columns, same buffer
        dlog.log_reward({...})
        dlog.close()                  # on shutdown (SIGTERM): writes everything still buffered

    **Parameters:**

    * **url**: directory (local path or fsspec URL); ``decisions/`` and ``rewards/`` are created in it.
    * **segment_rows**: at most this many rows per Parquet file; a full buffer is written at once.
    * **flush_interval_s**: whatever is buffered is written at least this often.
    * **filesystem**: an fsspec filesystem to use instead of the one the URL names (``url`` is then
      a path inside it).
    * **flush_timeout_s**: how long ``flush()``/``close()`` keep retrying a failing filesystem
      before they raise ``DecisionLogError`` (records stay buffered; call again to retry).

    The record dicts and batches are kept as they are until written: do not mutate them after logging.
    Counters (for metrics): ``errors`` (failed segment writes, each retried), ``rejected`` (rows
    that did not fit the schema and were dropped), ``segments_written``, ``rows_written``.
    """

    def __init__(
        self,
        url: str,
        *,
        segment_rows: int = 50_000,
        flush_interval_s: float = 5.0,
        filesystem: fsspec.AbstractFileSystem | None = None,
        flush_timeout_s: float = 60.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        if segment_rows < 1:
            raise ValueError(f"segment_rows must be >= 1, got {segment_rows}")
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be > 0 seconds, got {flush_interval_s}")
        self.url = url
        self._fs, root = _resolve(url, filesystem)
        self._local = "file" in _protocols(self._fs)
        self._segment_rows = segment_rows
        self._flush_interval_s = flush_interval_s
        self._flush_timeout_s = flush_timeout_s
        self._max_backoff_s = max_backoff_s
        self._decisions = _Stream(DECISIONS_DIR, DECISION_SCHEMA, _join(root, DECISIONS_DIR))
        self._rewards = _Stream(REWARDS_DIR, REWARD_SCHEMA, _join(root, REWARDS_DIR))
        self._streams = (self._decisions, self._rewards)
        for stream in self._streams:
            self._fs.makedirs(stream.path, exist_ok=True)

        self.errors = 0
        self.rejected = 0
        self.segments_written = 0
        self.rows_written = {DECISIONS_DIR: 0, REWARDS_DIR: 0}

        self._writer_id = uuid.uuid4().hex[:8]  # several replicas may share one directory
        self._seq = itertools.count(1)
        self._pending: collections.deque[tuple[_Stream, str, pa.Table]] = collections.deque()
        self._lock = threading.Lock()  # held while draining/writing: the writer thread or flush()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._warned_after_close = False
        self._backoff_s = 0.0
        self._thread = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)
        self._thread.start()
        # Daemon thread + atexit: interpreter exit never hangs on the writer, yet still flushes.
        self._atexit = _make_atexit(self)
        atexit.register(self._atexit)

    # -- hot path ---------------------------------------------------------------------------

    def log_decision(self, record: dict[str, Any]) -> None:
        """Queue one decision; never blocks and never raises (safe on the event-loop thread)."""
        stream = self._decisions
        buf = stream.buffer
        buf.append(record)
        if len(buf) + stream.extra_rows >= self._segment_rows:
            self._wake.set()
        if self._closed:
            self._after_close()

    def log_decision_batch(self, batch: DecisionBatch) -> None:
        """Queue a micro-batch of decisions as numpy columns; O(1), never blocks and never raises.

        The batch is appended whole; the writer thread checks and converts it. Like the dicts of
        ``log_decision``, its arrays and lists are kept as they are: do not mutate them after logging.
        """
        try:
            rows = len(batch.request_ids)
        except Exception:  # not a DecisionBatch: queued anyway, the writer rejects it as one record
            rows = 1
        stream = self._decisions
        buf = stream.buffer
        buf.append(_BatchSlice(batch, 0, rows, True))
        stream.extra_rows += rows - 1
        if len(buf) + stream.extra_rows >= self._segment_rows:
            self._wake.set()
        if self._closed:
            self._after_close()

    def log_reward(self, record: dict[str, Any]) -> None:
        """Queue one reward; never blocks and never raises."""
        buf = self._rewards.buffer
        buf.append(record)
        if len(buf) >= self._segment_rows:
            self._wake.set()
        if self._closed:
            self._after_close()

    def _after_close(self) -> None:
        if not self._warned_after_close:
            self._warned_after_close = True
            log.warning(
                "decision log %s: a record was logged after close(); it is kept in memory and written by the "
                "next flush()/close(). Close the log only after the server stops taking requests.",
                self.url,
            )

    # -- control ----------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Rows logged but not yet written (buffered or in a segment waiting for a retry); a batch counts its rows."""
        return sum(s.rows for s in self._streams) + sum(t.num_rows for _, _, t in list(self._pending))

    def flush(self) -> None:
        """Write everything logged before this call; blocks (run it off the event loop).

        Raises ``DecisionLogError`` if the filesystem keeps failing for ``flush_timeout_s``; the
        records stay buffered and the next flush()/close() tries again.
        """
        deadline = time.monotonic() + self._flush_timeout_s
        backoff = 0.05
        # The writer thread may be inside a write that hangs (a stalled network mount): bound the wait.
        if not self._lock.acquire(timeout=self._flush_timeout_s):
            raise DecisionLogError(
                f"decision log {self.url}: the writer thread has been stuck in one write for more than "
                f"{self._flush_timeout_s:g}s; {self.buffered} records are unwritten. Check that the storage "
                "responds, then call flush() or close() again."
            )
        try:
            self._drain(partial=True)
            while not self._write_pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DecisionLogError(
                        f"decision log {self.url}: {self.buffered} records are still unwritten after "
                        f"{self._flush_timeout_s:g}s of retries ({self.errors} write errors so far, see the log). "
                        "Fix the storage (permissions, credentials, free space) and call flush() or close() again."
                    )
                time.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, self._max_backoff_s)
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the writer thread and write everything; idempotent, blocking."""
        if not self._closed:
            self._closed = True
            self._stop.set()
            self._wake.set()
            self._thread.join(self._flush_timeout_s)  # a hung write is reported by flush() below
            atexit.unregister(self._atexit)
        self.flush()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        next_time_flush = time.monotonic() + self._flush_interval_s
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = self._backoff_s if self._backoff_s else max(0.0, next_time_flush - now)
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                break  # close() drains the rest under the lock
            try:
                time_due = time.monotonic() >= next_time_flush
                with self._lock:
                    self._drain(partial=time_due)
                    ok = self._write_pending()
                if time_due:
                    next_time_flush = time.monotonic() + self._flush_interval_s
                if ok:
                    self._backoff_s = 0.0
                else:
                    self._backoff_s = min(max(self._backoff_s * 2, 0.1), self._max_backoff_s)
            except Exception:  # never let the writer die: records would pile up silently
                log.exception("decision log %s: unexpected error in the writer thread; retrying", self.url)
                self._backoff_s = min(max(self._backoff_s * 2, 0.1), self._max_backoff_s)

    def _drain(self, *, partial: bool) -> None:
        """Move buffered records into named, converted segments waiting to be written (lock held)."""
        for stream in self._streams:
            for rows in stream.drain(self._segment_rows, partial=partial):
                table, rejected = _to_table(rows, stream.schema)
                self.rejected += rejected
                if table.num_rows:
                    self._pending.append((stream, self._segment_name(), table))

    def _segment_name(self) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"part-{stamp}-{next(self._seq):06d}-{self._writer_id}.parquet"

    def _write_pending(self) -> bool:
        """Write queued segments in order; stop at the first failure (lock held). True if all done."""
        while self._pending:
            stream, name, table = self._pending[0]
            try:
                self._write(stream.path, name, table)
            except Exception as exc:
                self.errors += 1
                log.warning(
                    "decision log: writing %s/%s (%d rows) failed (%s: %s); it stays queued and is retried with "
                    "backoff. Check that the storage is reachable and writable.",
                    stream.path,
                    name,
                    table.num_rows,
                    type(exc).__name__,
                    exc,
                )
                return False
            self._pending.popleft()
            self.segments_written += 1
            self.rows_written[stream.name] += table.num_rows
        return True

    def _write(self, directory: str, name: str, table: pa.Table) -> None:
        """Serialise in memory, then one put: readers never see half a file.

        On a local disk the bytes go to a ``_``-prefixed temporary name (ignored by readers)
        and are renamed; object stores make a single put atomic by themselves. A retry reuses
        the same name, so a write that succeeded but reported failure is not duplicated.
        """
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd", use_dictionary=_DICTIONARY_COLUMNS)
        data = sink.getvalue()
        final = _join(directory, name)
        if self._local:
            self._fs.makedirs(directory, exist_ok=True)  # recreate a directory removed under us
            tmp = _join(directory, f"_tmp-{name}")
            try:
                self._fs.pipe_file(tmp, data)
                self._fs.mv(tmp, final)
            finally:
                if self._fs.exists(tmp):
                    self._fs.rm(tmp)
        else:
            self._fs.pipe_file(final, data)


def _make_atexit(dlog: DecisionLog) -> Any:
    ref = weakref.ref(dlog)

    def _close_at_exit() -> None:
        obj = ref()
        if obj is not None:
            try:
                obj.close()
            except Exception:
                log.exception("decision log: could not flush at interpreter exit")

    return _close_at_exit


# --------------------------------------------------------------------------------------------
# Filesystem helpers


def _resolve(url: str, filesystem: fsspec.AbstractFileSystem | None) -> tuple[fsspec.AbstractFileSystem, str]:
    if filesystem is not None:
        return filesystem, filesystem._strip_protocol(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ValueError(
            f"decision log URL {url!r} cannot be opened: {exc}. Use a local path, file://, memory:// or install "
            "the fsspec backend for the scheme (e.g. `pip install s3fs` for s3://)."
        ) from exc
    return fs, path


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


# --------------------------------------------------------------------------------------------
# Readers


def _read_stream(url: str, sub: str, schema: pa.Schema, filesystem: fsspec.AbstractFileSystem | None) -> pa.Table:
    fs, root = _resolve(url, filesystem)
    directory = _join(root, sub)
    try:
        paths = sorted(
            p for p in fs.find(directory) if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith(("_", "."))
        )
    except FileNotFoundError:
        paths = []
    if not paths:
        return schema.empty_table()
    # The explicit schema makes older segments readable after columns are added (missing -> null).
    # Arrow's own local filesystem is faster than the fsspec wrapper; other schemes go through fsspec.
    arrow_fs = pafs.LocalFileSystem() if "file" in _protocols(fs) else fs
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
