"""A write-ahead log on local disk: what the server acknowledged survives a SIGKILL.

Why: the Parquet writer batches rows for seconds (one file per ``flush_interval_s``) and may
write to remote storage; a killed process lost that tail (2.4-4.2 s of acknowledged traffic
under load). Every decision batch and reward is appended here first, as one framed record, on
the event-loop thread (a list append under an uncontended lock). Group commit: one ``write``
for everything appended since the last commit (page cache: it survives a killed process),
optionally followed by ``fdatasync`` (survives a node crash). A SIGKILL loses at most what was
appended since the last commit.

Who commits: with ``threaded=False`` the owner calls :meth:`commit` every ``commit_interval_s``
on its own thread (the server does, from an event-loop timer: a write to the page cache takes
tens of µs, and a commit thread would first have to win the GIL from the busy loop; measured on
the loaded 2-core machine, that wait once stretched the loss window to 52 ms). Otherwise a
commit thread does, which ``fsync`` and ``durable`` need: there, callers wait for
:attr:`committed` to reach their record (``on_commit`` wakes them), and lose nothing they were
told about.

The WAL is deleted as Parquet catches up: the Parquet writer reports, per stream, how many rows
(in logging order) are written or rejected (:meth:`checkpoint`); that count goes to a small
``<session>.ckpt`` file, and a segment whose rows are all covered is removed. On the next start
:func:`recover` replays, for every session whose lock is free (its process is gone), the rows
past its checkpoint into a decision log, and deletes the session's files once they are written.

Record layout: ``<u32 length><u32 crc32><u8 kind><u64 first row index>`` + an orjson payload.
A torn or corrupt tail (the process died mid-write) ends the replay of that segment.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from policy_server.decision_log.schema import DECISIONS_DIR, REWARDS_DIR, DecisionBatch
from policy_server.errors import PolicyServerError

__all__ = ["WalError", "WriteAheadLog", "recover"]

log = logging.getLogger(__package__)

_HEADER = struct.Struct("<IIBQ")
_KIND = {DECISIONS_DIR: 1, REWARDS_DIR: 2}
_STREAM = {v: k for k, v in _KIND.items()}


class WalError(PolicyServerError, RuntimeError):
    """The WAL directory cannot be used (not writable, not a directory)."""


class WriteAheadLog:
    """Append-only, group-committed record log of one server session (see the module docstring).

    **Parameters:**

    * **directory**: local directory (an ``emptyDir`` in the pod); created if missing.
    * **commit_interval_s**: how often appended records are written (the SIGKILL loss window).
    * **fsync**: also ``fdatasync`` each commit (survives a node crash, not only a process kill).
    * **durable**: commit as soon as something is appended (callers wait for their record).
    * **threaded**: commit from a thread of its own (needed for ``fsync`` and ``durable``); if
      False, the owner calls :meth:`commit` every ``commit_interval_s``.
    * **on_commit**: called from the commit thread with :attr:`committed` after each commit.
    * **segment_bytes**: start a new segment file past this size (old ones are deleted when covered).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        commit_interval_s: float = 0.005,
        fsync: bool = False,
        durable: bool = False,
        on_commit: Callable[[int], None] | None = None,
        segment_bytes: int = 16 << 20,
        threaded: bool = True,
    ) -> None:
        if commit_interval_s <= 0:
            raise ValueError(f"commit_interval_s must be > 0, got {commit_interval_s}")
        if not threaded and (fsync or durable):
            raise ValueError("fsync and durable need the commit thread (threaded=True)")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.session = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
            self._lock_fd = os.open(self.directory / f"{self.session}.lock", os.O_CREAT | os.O_WRONLY, 0o600)
        except OSError as exc:
            raise WalError(
                f"write-ahead log directory {str(self.directory)!r} is not usable ({exc}); "
                "point --wal-dir at a writable local directory (an emptyDir in the pod)"
            ) from None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # recover() skips live sessions
        self.commit_interval_s = commit_interval_s
        self.fsync = fsync
        self.durable = durable
        self.on_commit = on_commit
        self.segment_bytes = segment_bytes
        self.appended = 0  # records appended (on the caller's thread)
        self.committed = 0  # records written by the commit thread
        self.errors = 0  # failed commits (each retried)
        self._failing = False
        self.logged = {DECISIONS_DIR: 0, REWARDS_DIR: 0}  # rows appended per stream
        self.accounted = {DECISIONS_DIR: 0, REWARDS_DIR: 0}  # rows Parquet has written or rejected
        self._buf: list[bytes] = []
        self._buf_lock = threading.Lock()
        self._commit_lock = threading.Lock()  # one commit at a time: records reach the file in order
        self._segments: deque[tuple[Path, dict[str, int]]] = deque()  # closed segments, their last rows
        self._seg_no = 0
        self._fd = -1
        self._seg_size = 0
        self._seg_ends = dict(self.logged)
        self._open_segment()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-commit", daemon=True)
        if threaded:
            self._thread.start()

    # -- producer side (event-loop thread) ---------------------------------------------------

    def append_decisions(self, batch: DecisionBatch) -> int:
        """Append one batch of decisions; returns its record number (compare with :attr:`committed`)."""
        return self.append_encoded(DECISIONS_DIR, *self.encode_decisions(batch))

    def encode_decisions(self, batch: DecisionBatch) -> tuple[int, bytes]:
        """(rows, payload) of a batch, for :meth:`append_encoded`: encoding may raise, appending does not.

        So a caller that also hands the rows elsewhere (the Parquet writer) can encode, hand over,
        then append, and keep the WAL's row numbers those of the Parquet writer.
        """
        dense = np.ascontiguousarray  # orjson writes C-contiguous arrays only (no copy when they are)
        payload = orjson.dumps(
            {
                "ids": batch.request_ids,
                "t": batch.time,
                "pv": batch.policy_version,
                "v": batch.variant,
                "obs": dense(batch.observations),
                "a": dense(batch.actions),
                "adt": batch.actions.dtype.str,
                "p": dense(batch.propensities),
                "pr": None if batch.probabilities is None else dense(batch.probabilities),
                "sr": batch.shield_reasons,
                "lat": dense(batch.latency_ms),
                "ctx": batch.context_json,
                "pval": None if batch.predicted_value is None else dense(batch.predicted_value),
                "prop": None if batch.proposed_action is None else dense(batch.proposed_action),
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        return len(batch.request_ids), payload

    def append_reward(self, record: dict[str, Any]) -> int:
        """Append one reward record; returns its record number."""
        return self.append_encoded(REWARDS_DIR, 1, orjson.dumps(record))

    def append_encoded(self, stream: str, rows: int, payload: bytes) -> int:
        """Append an encoded record of ``rows`` rows of ``stream``; returns its record number."""
        first = self.logged[stream]
        self.logged[stream] = first + rows
        frame = _HEADER.pack(len(payload), zlib.crc32(payload), _KIND[stream], first) + payload
        with self._buf_lock:
            self._buf.append(frame)
            self.appended += 1
            n = self.appended
        if self.durable:
            self._wake.set()
        return n

    # -- Parquet progress (the decision log's writer thread) ---------------------------------

    def checkpoint(self, stream: str, rows: int) -> None:
        """Parquet has written (or rejected) the first ``rows`` rows of ``stream``: persist, prune."""
        self.accounted[stream] = rows
        path = self.directory / f"{self.session}.ckpt"
        tmp = path.with_suffix(".ckpt.tmp")
        try:
            tmp.write_text(json.dumps(self.accounted))
            os.replace(tmp, path)
        except OSError as exc:  # the rows stay in the WAL: a replay may duplicate them, never lose them
            log.warning("write-ahead log: cannot write the checkpoint %s (%s)", path, exc)
            return
        while self._segments and all(self.accounted[s] >= end for s, end in self._segments[0][1].items()):
            seg, _ = self._segments.popleft()
            with contextlib.suppress(OSError):
                seg.unlink()

    @property
    def failing(self) -> bool:
        """The last commit failed (the directory is unwritable or full)."""
        return self._failing

    # -- commit thread -----------------------------------------------------------------------

    def _open_segment(self) -> None:
        self._seg_no += 1
        self._seg_path = self.directory / f"{self.session}-{self._seg_no:06d}.wal"
        self._fd = os.open(self._seg_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self._seg_size = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.commit_interval_s)
            self._wake.clear()
            self.commit()

    def commit(self) -> bool:
        """Write everything appended so far; True on success (failures are counted and retried)."""
        with self._commit_lock:
            return self._commit()

    def _commit(self) -> bool:
        with self._buf_lock:
            frames, self._buf = self._buf, []
            n = self.appended
        if not frames:  # still report: a waiter may have queued itself just after the last report
            if self.on_commit is not None:
                self.on_commit(self.committed)
            return True
        data = b"".join(frames)
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # short writes: a full disk reports ENOSPC on the next call
                written += os.write(self._fd, data[written:])
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError as exc:
            self.errors += 1
            self._failing = True
            with self._buf_lock:
                self._buf[:0] = frames  # retried next time, in order
            if self.errors == 1 or self.errors % 1000 == 0:
                log.error("write-ahead log %s: commit failed (%s); retrying", self._seg_path, exc)
            return False
        self._failing = False
        self._seg_size += len(data)
        self._seg_ends = dict(self.logged)  # an upper bound of the rows in this segment
        self.committed = n
        if self._seg_size >= self.segment_bytes:
            os.close(self._fd)
            self._segments.append((self._seg_path, self._seg_ends))
            self._open_segment()
        if self.on_commit is not None:
            self.on_commit(n)
        return True

    def close(self, *, delete: bool) -> None:
        """Stop the commit thread after a last commit; ``delete`` the session's files (all in Parquet)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(1)  # a commit is one write (+ fdatasync); the final commit below retries it
        self.commit()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if delete:
            for path in self.directory.glob(f"{self.session}*"):
                with contextlib.suppress(OSError):
                    path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


# --------------------------------------------------------------------------- recovery


def _frames(path: Path) -> Iterator[tuple[str, int, bytes]]:
    data = path.read_bytes()
    pos = 0
    while pos + _HEADER.size <= len(data):
        size, crc, kind, first = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + size]
        if len(payload) < size or zlib.crc32(payload) != crc or kind not in _STREAM:
            log.warning("write-ahead log %s: torn or corrupt record at byte %d; the rest is skipped", path, pos)
            return
        yield _STREAM[kind], first, payload
        pos += _HEADER.size + size


def _batch(payload: bytes, skip: int) -> DecisionBatch:
    d = orjson.loads(payload)
    cut = slice(skip, None)
    probs = d["pr"]
    return DecisionBatch(
        request_ids=d["ids"][cut],
        time=d["t"] if not isinstance(d["t"], list) else np.asarray(d["t"], np.float64)[cut],
        policy_version=d["pv"],
        variant=d["v"],
        observations=np.asarray(d["obs"], np.float32)[cut],
        actions=np.asarray(d["a"], np.dtype(d["adt"]))[cut],
        propensities=np.asarray(d["p"], np.float64)[cut],
        probabilities=None if probs is None else np.asarray(probs, np.float64)[cut],
        shield_reasons=d["sr"][cut],
        latency_ms=np.asarray(d["lat"], np.float64)[cut],
        context_json=None if d["ctx"] is None else d["ctx"][cut],
        predicted_value=None if d.get("pval") is None else np.asarray(d["pval"], np.float64)[cut],  # NaN: null
        proposed_action=None if d.get("prop") is None else np.asarray(d["prop"], np.float64)[cut],  # NaN row: null
    )


def recover(directory: str | os.PathLike[str], dlog: Any) -> int:
    """Replay the rows of dead sessions past their checkpoints into ``dlog`` and close it.

    Returns the number of rows replayed. A session's files are deleted only after ``dlog.close()``
    wrote everything; if it raises (storage down), the files stay for the next start.
    """
    root = Path(directory)
    if not root.is_dir():
        dlog.close()
        return 0
    sessions = []
    for lock in sorted(root.glob("*.lock")):
        fd = os.open(lock, os.O_WRONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live server owns it
            os.close(fd)
            continue
        sessions.append((lock.stem, fd))
    replayed = 0
    try:
        for session, _ in sessions:
            ckpt_path = root / f"{session}.ckpt"
            done = json.loads(ckpt_path.read_text()) if ckpt_path.exists() else {}
            for seg in sorted(root.glob(f"{session}-*.wal")):
                for stream, first, payload in _frames(seg):
                    skip = max(0, done.get(stream, 0) - first)
                    if stream == DECISIONS_DIR:
                        batch = _batch(payload, skip)
                        if batch.request_ids:
                            dlog.log_decision_batch(batch)
                            replayed += len(batch.request_ids)
                    elif not skip:
                        dlog.log_reward(orjson.loads(payload))
                        replayed += 1
        dlog.close()
        for session, _ in sessions:
            for path in root.glob(f"{session}*"):
                with contextlib.suppress(OSError):
                    path.unlink()
    finally:
        for _, fd in sessions:
            os.close(fd)
    if replayed:
        log.warning("write-ahead log %s: recovered %d rows of earlier sessions into the decision log", root, replayed)
    return replayed
