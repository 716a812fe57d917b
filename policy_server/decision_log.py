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
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "DECISION_SCHEMA",
    "REWARD_SCHEMA",
    "SCHEMA_VERSION",
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


def _convert(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
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


def _to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> tuple[pa.Table, int]:
    """Convert a batch, dropping (and logging) records that do not fit the schema.

    One malformed record must not block the stream forever, so it is rejected, not retried.
    Bad records are isolated by bisection: a 50k-row batch with one bad record costs ~30
    conversions, not 50k. Returns the table and the number of rejected records.
    """
    errors: list[tuple[Any, Exception]] = []
    tables = _convert_bisect(rows, schema, errors)
    if errors:
        rid, exc = errors[0]
        log.error(
            "decision log: rejected %d %s record(s) that do not match the schema; first: request_id=%r: %s. "
            "Fix the caller so that records match docs/decision-log.md.",
            len(errors),
            schema.metadata[STREAM_KEY.encode()].decode(),
            rid,
            exc,
        )
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table, len(errors)


_CONVERSION_ERRORS = (pa.ArrowException, TypeError, ValueError, KeyError, AttributeError)


def _convert_bisect(
    rows: list[dict[str, Any]], schema: pa.Schema, errors: list[tuple[Any, Exception]]
) -> list[pa.Table]:
    try:
        return [_convert(rows, schema)]
    except _CONVERSION_ERRORS as exc:
        if len(rows) == 1:
            row = rows[0]
            errors.append((row.get("request_id") if isinstance(row, Mapping) else None, exc))
            return []
    mid = len(rows) // 2
    return _convert_bisect(rows[:mid], schema, errors) + _convert_bisect(rows[mid:], schema, errors)


# --------------------------------------------------------------------------------------------
# Writer


class _Stream:
    """One buffered event stream (decisions or rewards) and its directory."""

    def __init__(self, name: str, schema: pa.Schema, path: str) -> None:
        self.name = name
        self.schema = schema
        self.path = path
        self.buffer: collections.deque[dict[str, Any]] = collections.deque()

    def drain(self, segment_rows: int, *, partial: bool) -> list[list[dict[str, Any]]]:
        """Pop full segments (and the remainder if ``partial``); appends may race, pops never do."""
        chunks = []
        buf = self.buffer
        while len(buf) >= segment_rows or (partial and buf):
            n = min(segment_rows, len(buf))
            chunks.append([buf.popleft() for _ in range(n)])
        return chunks


class DecisionLog:
    """Non-blocking, append-only Parquet log of decisions and rewards.

    Usage::

        dlog = DecisionLog("s3://bucket/rollouts/cartpole")   # or a local path, memory://...
        dlog.log_decision({...})      # on the request path: only appends to a buffer
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

    The record dicts are kept as they are until written: do not mutate them after logging.
    Counters (for metrics): ``errors`` (failed segment writes, each retried), ``rejected`` (records
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
        buf = self._decisions.buffer
        buf.append(record)
        if len(buf) >= self._segment_rows:
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
        """Records logged but not yet written (buffered or in a segment waiting for a retry)."""
        return sum(len(s.buffer) for s in self._streams) + sum(t.num_rows for _, _, t in list(self._pending))

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
        pq.write_table(table, sink, compression="zstd")
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
