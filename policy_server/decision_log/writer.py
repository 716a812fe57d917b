"""``DecisionLog``: the non-blocking writer of decisions and rewards, as Parquet segments.

Why it looks like this:

* The request path must not wait for storage. ``log_decision``/``log_reward`` only append the
  dict to the stream's buffer (``_buffer``), ``log_decision_batch`` a whole micro-batch; a
  background thread converts the buffers (``_convert``) and writes zstd Parquet segments every
  ``flush_interval_s`` or every ``segment_rows`` rows.
* Nothing is lost: a segment that fails to write stays queued and is retried with backoff
  (``errors`` counts failures); ``flush()``/``close()`` drain everything while holding the same
  lock the writer thread holds, so a write that is in flight when ``close()`` is called finishes
  first and nothing is skipped.
* Readers never see half a file: a segment is serialised in memory and written with one put
  (a temporary name and a rename on local disk).
"""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import io
import itertools
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from policy_server.decision_log import _convert, _storage
from policy_server.decision_log._batches import BatchSlice
from policy_server.decision_log._buffer import Stream
from policy_server.decision_log.schema import (
    DECISION_SCHEMA,
    DECISIONS_DIR,
    REWARD_SCHEMA,
    REWARDS_DIR,
    DecisionBatch,
)
from policy_server.errors import PolicyServerError

__all__ = ["DecisionLog", "DecisionLogError"]

log = logging.getLogger(__package__)  # the package's logger, as before it was split into modules


class DecisionLogError(PolicyServerError, RuntimeError):
    """flush()/close() could not write every buffered record before their deadline."""


# Parquet dictionary encoding only where values repeat: on ids, times and floats it costs the writer
# about twice the CPU and makes segments bigger (4,096 served decisions: 2.0 against 0.8 µs per row,
# 107 against 85 bytes per row). Names a schema lacks are ignored.
_DICTIONARY_COLUMNS = ["schema_version", "policy_version", "variant", "served_by", "shield_reasons"]


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
      before they raise ``DecisionLogError`` (records stay buffered; call again to retry). It is
      the whole budget of a call, so keep it below the pod's termination grace period.
    * **on_progress**: called from the writer thread with ``(stream name, rows)`` each time the
      first ``rows`` rows of that stream (in logging order) are written or rejected: the
      write-ahead log's checkpoint.

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
        flush_timeout_s: float = 15.0,
        max_backoff_s: float = 30.0,
        on_progress: Callable[[str, int], None] | None = None,
    ) -> None:
        if segment_rows < 1:
            raise ValueError(f"segment_rows must be >= 1, got {segment_rows}")
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be > 0 seconds, got {flush_interval_s}")
        self.url = url
        self._fs, root = _storage.resolve(url, filesystem)
        self._local = "file" in _storage.protocols(self._fs)
        self._segment_rows = segment_rows
        self._flush_interval_s = flush_interval_s
        self._flush_timeout_s = flush_timeout_s
        self._on_progress = on_progress
        self._max_backoff_s = max_backoff_s
        self._decisions = Stream(DECISIONS_DIR, DECISION_SCHEMA, _storage.join(root, DECISIONS_DIR))
        self._rewards = Stream(REWARDS_DIR, REWARD_SCHEMA, _storage.join(root, REWARDS_DIR))
        self._streams = (self._decisions, self._rewards)
        for stream in self._streams:
            self._fs.makedirs(stream.path, exist_ok=True)

        self.errors = 0
        self.rejected = 0
        self.segments_written = 0
        self.rows_written = {DECISIONS_DIR: 0, REWARDS_DIR: 0}
        self.rows_accounted = {DECISIONS_DIR: 0, REWARDS_DIR: 0}  # written or rejected, in logging order

        self._writer_id = uuid.uuid4().hex[:8]  # several replicas may share one directory
        self._seq = itertools.count(1)
        self._pending: collections.deque[tuple[Stream, str, pa.Table, int]] = collections.deque()
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
        buf.append(BatchSlice(batch, 0, rows, True))
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
        return sum(s.rows for s in self._streams) + sum(t.num_rows for _, _, t, _ in list(self._pending))

    @property
    def failing(self) -> bool:
        """The writer thread's last attempt failed and it is backing off (storage unwritable or full)."""
        return self._backoff_s > 0

    def flush(self, deadline: float | None = None) -> None:
        """Write everything logged before this call; blocks (run it off the event loop).

        Raises ``DecisionLogError`` if the filesystem keeps failing for ``flush_timeout_s`` (or
        past ``deadline``, a ``time.monotonic()`` value); the records stay buffered and the next
        flush()/close() tries again.
        """
        if deadline is None:
            deadline = time.monotonic() + self._flush_timeout_s
        backoff = 0.05
        # The writer thread may be inside a write that hangs (a stalled network mount): bound the wait.
        if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
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
        """Stop the writer thread and write everything within ``flush_timeout_s`` in all; idempotent, blocking."""
        deadline = time.monotonic() + self._flush_timeout_s
        if not self._closed:
            self._closed = True
            self._stop.set()
            self._wake.set()
            self._thread.join(self._flush_timeout_s)  # a hung write is reported by flush() below
            atexit.unregister(self._atexit)
        self.flush(deadline)

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
                table, rejected = _convert.to_table(rows, stream.schema)
                self.rejected += rejected
                if table.num_rows or rejected:
                    self._pending.append((stream, self._segment_name(), table, rejected))

    def _segment_name(self) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"part-{stamp}-{next(self._seq):06d}-{self._writer_id}.parquet"

    def _write_pending(self) -> bool:
        """Write queued segments in order; stop at the first failure (lock held). True if all done."""
        while self._pending:
            stream, name, table, rejected = self._pending[0]
            try:
                if table.num_rows:
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
            self.segments_written += bool(table.num_rows)
            self.rows_written[stream.name] += table.num_rows
            self.rows_accounted[stream.name] += table.num_rows + rejected
            if self._on_progress is not None:
                try:
                    self._on_progress(stream.name, self.rows_accounted[stream.name])
                except Exception:
                    log.exception("decision log %s: the progress callback failed", self.url)
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
        final = _storage.join(directory, name)
        if self._local:
            self._fs.makedirs(directory, exist_ok=True)  # recreate a directory removed under us
            tmp = _storage.join(directory, f"_tmp-{name}")
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
