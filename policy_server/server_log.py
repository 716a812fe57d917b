"""The policy server's side of the decision log: what it promises about an acknowledged decision.

Why a module of its own: the server's request path only calls :meth:`ServerLog.log_batch`,
:meth:`ServerLog.log_reward` and :meth:`ServerLog.reply`; everything that makes those calls keep
the durability contract (docs/decision-log.md, "Durability contract") lives here:

* a batch is logged before any of its responses is written; a failure is retried row by row, so
  one row that cannot be logged is answered 500 and its neighbours 200;
* with a write-ahead log, each batch and reward is appended to it first; without ``fsync`` or
  ``durable`` the event loop commits it every ``wal_commit_ms`` (one write to the page cache: a
  commit thread would first have to win the GIL from the busy loop), otherwise the WAL's thread
  does, and with ``durable`` responses wait for the commit that holds them;
* earlier sessions' WAL files are replayed into Parquet when the log opens;
* health (errors, backlog, age of the oldest unwritten row) for ``/metrics`` and ``/readyz``;
* closing within ``log_flush_timeout_s``, counting what could not be written.

Single-threaded like the server: every method but :meth:`open` runs on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from policy_server import metrics, protocol

if TYPE_CHECKING:  # pyarrow (~45 MB) is imported only when the server logs decisions
    from policy_server.decision_log._backlog import Backlog
    from policy_server.decision_log.wal import WriteAheadLog
    from policy_server.decision_log.writer import DecisionLog
    from policy_server.log_staging import DecisionStaging
    from policy_server.policy import BatchDecision
    from policy_server.server import ServerConfig

__all__ = ["STAGING_FLUSH_S", "Reply", "ServerLog"]

log = logging.getLogger("policy_server")

STAGING_FLUSH_S = 1.0  # staged decisions reach the log's writer at least this often
DECISIONS, REWARDS = "decisions", "rewards"  # the two streams (decision_log.schema's directory names)

Reply = tuple[protocol.HttpProtocol, int, int, bytes]  # connection, request seq, status, body


class ServerLog:
    """Decisions and rewards of one server process: staging, WAL, Parquet writer, health, shutdown."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.decision_log: DecisionLog
        self.wal: WriteAheadLog | None = None
        self.backlog: Backlog
        self.staging: DecisionStaging | None = None
        self.unwritten = 0  # rows the shutdown could not write to Parquet (kept in the WAL if there is one)
        self.row_errors = 0  # decisions answered 500 because they could not be logged
        self._deferred: collections.deque[tuple[int, float, list[Reply]]] = collections.deque()
        self._wal_on_loop = False
        self._wal_timer: asyncio.TimerHandle | None = None
        self._staging_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Replay earlier sessions' WAL, then open this session's WAL and Parquet writer (a worker thread)."""
        import pyarrow

        from policy_server.decision_log import _backlog, wal, writer

        cfg = self.config
        assert cfg.log_dir is not None
        # Arrow's jemalloc pool returns freed segment buffers sooner than its default (mimalloc):
        # measured ~25 MB less RSS for the same load on this machine.
        with contextlib.suppress(NotImplementedError):  # wheels built without jemalloc keep the default
            pyarrow.set_memory_pool(pyarrow.jemalloc_memory_pool())
        if cfg.wal_dir:
            try:
                wal.recover(cfg.wal_dir, writer.DecisionLog(cfg.log_dir, flush_timeout_s=cfg.log_flush_timeout_s))
            except writer.DecisionLogError as exc:  # the files stay; the next start tries again
                log.error("could not replay the write-ahead log into %s yet: %s", cfg.log_dir, exc)
            threaded = cfg.durable or cfg.wal_fsync  # else the loop commits (see the module docstring)
            self.wal = wal.WriteAheadLog(
                cfg.wal_dir,
                commit_interval_s=cfg.wal_commit_ms / 1000.0,
                fsync=cfg.wal_fsync,
                durable=cfg.durable,
                on_commit=self._on_commit if cfg.durable else None,
                threaded=threaded,
            )
            self._wal_on_loop = not threaded
        self.decision_log = writer.DecisionLog(
            cfg.log_dir,
            flush_interval_s=cfg.log_flush_interval_s,
            flush_timeout_s=cfg.log_flush_timeout_s,
            on_progress=self.wal.checkpoint if self.wal is not None else None,
        )
        self.backlog = _backlog.Backlog(lambda: self.decision_log.rows_accounted)

    def start(self, loop: asyncio.AbstractEventLoop, *, policy_version: str, variant: str) -> None:
        """On the loop, once the model is loaded: the staging area and its flush timer."""
        from policy_server.log_staging import DecisionStaging

        self.loop = loop
        self.staging = DecisionStaging(self.decision_log, policy_version=policy_version, variant=variant)
        self._staging_timer = loop.call_later(STAGING_FLUSH_S, self._flush_staging)

    async def close(self) -> None:
        """Hand over the staged rows, then write everything within ``log_flush_timeout_s``; never raises."""
        from policy_server.decision_log.writer import DecisionLogError

        for timer in (self._staging_timer, self._wal_timer):
            if timer is not None:
                timer.cancel()
        self._staging_timer = self._wal_timer = None
        if self.staging is not None:  # None if the model never loaded
            self.staging.flush()
        loop = asyncio.get_running_loop()
        written = False
        try:
            await loop.run_in_executor(None, self.decision_log.close)
            written = True
        except DecisionLogError as exc:
            self.unwritten = self.decision_log.buffered
            where = f"; they stay in the write-ahead log {self.config.wal_dir}" if self.wal is not None else ""
            log.error("decision log: %d rows could not be written at shutdown%s: %s", self.unwritten, where, exc)
        finally:
            wal_ = self.wal
            if wal_ is not None:  # the WAL is deleted only when Parquet holds every row
                await loop.run_in_executor(None, lambda: wal_.close(delete=written))

    def _flush_staging(self) -> None:
        """Hand staged decisions to the log at least every ``STAGING_FLUSH_S`` (a quiet server too)."""
        assert self.staging is not None
        self.staging.flush()
        self._staging_timer = self.loop.call_later(STAGING_FLUSH_S, self._flush_staging)

    # ------------------------------------------------------------------ health

    @property
    def failing(self) -> bool:
        """The WAL or the Parquet writer failed its last attempt (unwritable or full storage)."""
        return (self.wal is not None and self.wal.failing) or self.decision_log.failing

    def health(self) -> metrics.LogHealth:
        return metrics.LogHealth(
            errors={
                "wal": self.wal.errors if self.wal is not None else 0,
                "parquet": self.decision_log.errors,
                "row": self.row_errors,
            },
            backlog_rows=self.backlog.rows(),
            oldest_unflushed_age_s=self.backlog.oldest_age_s(),
        )

    # ------------------------------------------------------------------ request path

    def log_batch(
        self,
        items: list[Any],
        obs: np.ndarray,
        d: BatchDecision,
        reasons: list[list[str]],
        latency_s: np.ndarray,
        policy_version: str,
        predicted: np.ndarray | None = None,
        proposed: np.ndarray | None = None,
    ) -> set[int]:
        """Log the batch before any of it is answered; returns the rows that could not be logged.

        ``items`` have ``request_id`` and ``context_json``. A failure of the whole batch (a bug,
        an unexpected value) is retried row by row, so one bad row is answered 500 and its
        neighbours are still logged and answered 200.
        """
        try:
            self._log_rows(items, obs, d, reasons, latency_s, policy_version, slice(None), predicted, proposed)
            return set()
        except Exception:
            log.exception("decision log: a batch of %d could not be logged; logging its rows one by one", len(items))
        failed = set()
        for i in range(len(items)):
            try:
                self._log_rows(items, obs, d, reasons, latency_s, policy_version, slice(i, i + 1), predicted, proposed)
            except Exception:
                failed.add(i)
        self.row_errors += len(failed)
        return failed

    def _log_rows(
        self,
        items: list[Any],
        obs: np.ndarray,
        d: BatchDecision,
        reasons: list[list[str]],
        latency_s: np.ndarray,
        policy_version: str,
        rows: slice,
        predicted: np.ndarray | None = None,
        proposed: np.ndarray | None = None,
    ) -> None:
        from policy_server.decision_log.schema import DecisionBatch

        assert self.staging is not None
        part = items[rows]
        contexts = [it.context_json for it in part]
        now = time.time()
        batch = DecisionBatch(
            request_ids=[it.request_id for it in part],
            time=now,
            policy_version=policy_version,
            variant=self.config.variant,
            observations=obs[rows],
            actions=d.actions[rows],
            propensities=d.propensities[rows],
            probabilities=None if d.probabilities is None else d.probabilities[rows],
            shield_reasons=reasons[rows],
            latency_ms=latency_s[rows] * 1000.0,
            context_json=None if contexts.count(None) == len(contexts) else contexts,
            predicted_value=None if predicted is None else predicted[rows],
            proposed_action=None if proposed is None else proposed[rows],
        )
        # Encode for the WAL, hand the rows to the staging area, then append: a failure in either of
        # the first two leaves both untouched, so the WAL's row numbers stay the Parquet writer's.
        wal_ = self.wal
        encoded = wal_.encode_decisions(batch) if wal_ is not None else None
        self.staging.add(
            request_ids=batch.request_ids,
            time=now,
            observations=batch.observations,
            actions=batch.actions,
            propensities=batch.propensities,
            probabilities=batch.probabilities,
            shield_reasons=batch.shield_reasons,
            latency_ms=batch.latency_ms,
            context_json=batch.context_json,
            predicted_value=batch.predicted_value,
            proposed_action=batch.proposed_action,
        )
        if wal_ is not None and encoded is not None:
            wal_.append_encoded(DECISIONS, *encoded)
            self._schedule_wal_commit()
        self.backlog.add(DECISIONS, len(part))

    def log_reward(self, record: dict[str, Any]) -> None:
        if self.wal is not None:
            self.wal.append_reward(record)
            self._schedule_wal_commit()
        self.decision_log.log_reward(record)
        self.backlog.add(REWARDS, 1)

    def reply(self, replies: list[Reply]) -> None:
        """Send now, or (``durable``) once the WAL has committed what was appended so far."""
        wal_ = self.wal
        if wal_ is not None and self.config.durable and wal_.committed < wal_.appended:
            self._deferred.append((wal_.appended, time.monotonic(), replies))
            return
        for conn, seq, status, body in replies:
            conn.respond(seq, status, body)

    def expired(self) -> list[Reply]:
        """Durable replies released if committed, and those that waited past ``durable_timeout_s`` (to fail)."""
        deferred = self._deferred
        if deferred and self.wal is not None:
            self._release(self.wal.committed)
        out: list[Reply] = []
        now = time.monotonic()
        while deferred and now - deferred[0][1] > self.config.durable_timeout_s:
            out += deferred.popleft()[2]
        return out

    # ------------------------------------------------------------------ WAL commits

    def _schedule_wal_commit(self) -> None:
        """Group commit on the loop: one write per ``wal_commit_ms`` for everything appended meanwhile."""
        if self._wal_on_loop and self._wal_timer is None:
            self._wal_timer = self.loop.call_later(self.config.wal_commit_ms / 1000.0, self._commit_wal)

    def _commit_wal(self) -> None:
        assert self.wal is not None
        self._wal_timer = None
        self.wal.commit()  # a failure is counted and the records are kept for the next commit
        if self.wal.failing:
            self._schedule_wal_commit()

    def _on_commit(self, committed: int) -> None:
        """WAL commit thread: wake the loop to release the responses that waited for this commit."""
        if self._deferred:
            self.loop.call_soon_threadsafe(self._release, committed)

    def _release(self, committed: int) -> None:
        deferred = self._deferred
        while deferred and deferred[0][0] <= committed:
            for conn, seq, status, body in deferred.popleft()[2]:
                conn.respond(seq, status, body)
