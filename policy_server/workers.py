"""``policy-server serve --workers N``: N server processes on one port, watched by a supervisor.

Why processes: one :class:`server.PolicyServer` is one event loop on one core (HTTP parsing,
batching and the forward pass all run on the loop thread, see server.py), so a second core
needs a second interpreter. Each worker binds its own listening socket on the same host:port
with SO_REUSEPORT and the kernel spreads new connections over them (a hash of the 4-tuple): no
accept lock, no proxy hop, and a worker that dies takes only its own connections with it.

Why fork, after ``import torch`` and before anything else: a worker runs threads (the
model-loading executor, the decision log's writer, the WAL commit thread, torch's intra-op and
OpenMP pools, pyarrow's jemalloc thread); forking a process that holds such threads copies locks
nobody will ever release. So the supervisor imports torch (and with it numpy) and nothing more:
no model, no tensor operation, no pyarrow, no event loop, no thread of its own; each worker
loads its model after the fork (PyTorch's DataLoader forks its workers from the same state).
What that buys, measured here with the CUDA build of torch 2.13 on the CPU: ``import torch``
costs ~510 MB of RSS, mostly relocated library pages that a forked worker shares copy-on-write
instead of making its own: ~390 MB RSS idle (~150 MB PSS) per worker instead of ~590 MB with
spawn, and a restart that takes no interpreter start-up. The one thread the supervisor has is
OpenBLAS's pool (numpy's), which shuts itself down around fork (pthread_atfork). ``gc.freeze()``
before forking keeps the workers' garbage collectors from touching, hence copying, those pages.

What the supervisor does:

* binds host:port itself first with SO_REUSEPORT, without listening: it learns the port when
  0 is asked, keeps it reserved for its workers, and fails fast (exit 1) when it is taken;
* makes ONE random ``POLICY_SERVER_REWARD_KEY`` when the variable is unset and passes it to every
  worker in the environment, so each verifies the ids the others signed (attribution.py);
* starts every worker with ``reuse_port`` (it binds once its model is warm, so a restarted
  worker takes connections only when it can answer them), its own write-ahead log directory
  ``<wal-dir>/worker-<i>`` (a restarted worker replays its predecessor's WAL) and the shared
  metrics directory of worker_metrics.py (every /metrics answer is the sum of all workers);
  WAL sessions that no worker would replay (left in ``<wal-dir>`` by a single-process server, or in
  ``worker-<j>`` for j >= N after ``--workers`` was lowered) are first moved to ``worker-<j mod N>``;
* prints ``policy-server listening on http://HOST:PORT`` once every worker is bound;
* forwards SIGTERM/SIGINT to the workers as SIGTERM and waits for their graceful shutdowns
  (``--shutdown-timeout-s`` + ``--log-flush-timeout-s``, plus a margin), then SIGKILLs what is
  left (acknowledged rows stay in its WAL);
* restarts a worker that exits unexpectedly, unless ``MAX_CRASHES`` crashes happened within
  ``CRASH_WINDOW_S``: then it stops everything with a one-line error. A worker that fails before
  binding with exit code 2 (the artifact cannot be served) is not restarted: the same error
  would repeat, so the server stops with code 2;
* exits with the worst exit code of its workers (a worker killed by a signal counts as 1).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import fcntl
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from policy_server import attribution, worker_metrics

__all__ = ["CRASH_WINDOW_S", "MAX_CRASHES", "adopt_orphan_wal_sessions", "supervise"]

log = logging.getLogger("policy_server.workers")

MAX_CRASHES = 5  # unexpected exits within CRASH_WINDOW_S before the supervisor gives up
CRASH_WINDOW_S = 60.0
STOP_MARGIN_S = 10.0  # beyond the workers' own shutdown timeouts, before SIGKILL
_PR_SET_PDEATHSIG = 1


@dataclass
class _Worker:
    index: int
    process: Any  # multiprocessing.context.SpawnProcess
    conn: Connection
    listening: bool = False
    reaped: bool = False
    pid: int = 0


@dataclass
class _State:
    workers: list[_Worker] = field(default_factory=list)
    crashes: deque[float] = field(default_factory=deque)
    stopping: bool = False
    stop_deadline: float = 0.0
    announced: bool = False
    result: int = 0
    signalled: bool = False


def supervise(args: argparse.Namespace) -> int:
    """Run ``args.workers`` server processes on one port until SIGTERM/SIGINT; the exit code."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.durable and not args.wal_dir:
        print("policy-server: --durable needs --wal-dir (the write-ahead log it waits for)", file=sys.stderr)
        return 2
    if args.wal_dir and not args.log_dir:
        print("policy-server: --wal-dir needs --log-dir (where the log is replayed)", file=sys.stderr)
        return 2
    if not os.environ.get(attribution.ENV_VAR, "").strip():
        os.environ[attribution.ENV_VAR] = secrets.token_urlsafe(32)  # inherited by every worker
        log.warning(
            "%s is unset: made one key for these %d workers; other replicas and the router cannot verify "
            "their request ids (set the variable on every server of the rollout)",
            attribution.ENV_VAR,
            args.workers,
        )
    try:  # say it once here rather than once per worker
        attribution.RewardKeys.from_env()
    except attribution.RewardKeyError as exc:
        print(f"policy-server: {exc}", file=sys.stderr)
        return 2
    try:
        if args.wal_dir:
            adopt_orphan_wal_sessions(Path(args.wal_dir), args.workers)
    except OSError as exc:
        print(
            f"policy-server: cannot prepare --wal-dir {args.wal_dir}: {exc}; make it a writable directory",
            file=sys.stderr,
        )
        return 1
    try:
        metrics_dir = tempfile.mkdtemp(prefix="policy-server-metrics-")
    except OSError as exc:
        print(f"policy-server: cannot create the workers' metrics directory ({exc}); set TMPDIR", file=sys.stderr)
        return 1
    try:
        reserved = _reserve(args.host, args.port)
    except OSError as exc:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        print(f"policy-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    import torch  # noqa: F401  -- preloaded for every worker (see the module docstring: why fork)

    gc.collect()
    gc.freeze()  # the workers' collectors never scan (so never copy) the preloaded objects

    try:
        return _Supervisor(args, reserved, metrics_dir).run()
    finally:
        reserved.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def adopt_orphan_wal_sessions(wal_dir: Path, workers: int) -> int:
    """Move dead WAL sessions no worker would replay into a worker's directory; returns how many.

    A session is ``<session>.lock`` + ``<session>.ckpt`` + ``<session>-NNNNNN.wal`` (decision_log/wal.py);
    it is dead when nobody holds its lock (recover() uses the same test). Done before any worker
    starts, and the lock is held while the files move, so no replay sees half a session.
    """
    sources = [(wal_dir, 0)]
    for sub in wal_dir.glob("worker-*"):
        index = sub.name.removeprefix("worker-")
        if index.isdigit() and int(index) >= workers and sub.is_dir():
            sources.append((sub, int(index) % workers))
    moved = 0
    for source, target_index in sources:
        target = wal_dir / f"worker-{target_index}"
        for lock in sorted(source.glob("*.lock")):
            fd = os.open(lock, os.O_WRONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live server still owns it (another supervisor?): leave it
                os.close(fd)
                log.warning("WAL session %s is in use by a running server; not moved", lock)
                continue
            try:
                target.mkdir(parents=True, exist_ok=True)
                for path in sorted(source.glob(f"{lock.stem}*"), key=lambda f: f.suffix == ".lock"):
                    os.replace(path, target / path.name)  # the lock file last
                moved += 1
            finally:
                os.close(fd)
        if source != wal_dir:
            with contextlib.suppress(OSError):
                source.rmdir()
    if moved:
        log.info("moved %d write-ahead log session(s) no worker would replay into %s/worker-*", moved, wal_dir)
    return moved


def _reserve(host: str, port: int) -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket: the port for the workers, taken by nobody else."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


class _Supervisor:
    def __init__(self, args: argparse.Namespace, reserved: socket.socket, metrics_dir: str) -> None:
        self.args = args
        self.reserved = reserved
        self.port = reserved.getsockname()[1]
        self.metrics_dir = metrics_dir
        self.ctx = multiprocessing.get_context("fork")
        self.inherited: list[socket.socket] = [reserved]  # the supervisor's sockets: closed in each worker
        self.state = _State()
        self.stop_after_s = args.shutdown_timeout_s + args.log_flush_timeout_s + STOP_MARGIN_S

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self.inherited += [wake_r, wake_w]
        previous_fd = signal.set_wakeup_fd(wake_w.fileno())
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            st = self.state
            st.workers = [self._spawn(i) for i in range(self.args.workers)]
            while not (st.stopping and all(w.reaped for w in st.workers)):
                waitables: list[Any] = [wake_r]
                for w in st.workers:
                    if not w.reaped:
                        waitables += [w.process.sentinel, w.conn]
                multiprocessing.connection.wait(waitables, timeout=1.0)
                with contextlib.suppress(BlockingIOError):
                    wake_r.recv(4096)
                self._step()
            return st.result
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            wake_r.close()
            wake_w.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.state.signalled = True

    def _step(self) -> None:
        st = self.state
        for w in st.workers:
            self._read_messages(w)
        if st.signalled and not st.stopping:
            self._stop("signal")
        for i, w in enumerate(st.workers):
            if not w.reaped and w.process.exitcode is not None:
                replacement = self._reap(w)
                if replacement is not None:
                    st.workers[i] = replacement
        if not st.announced and not st.stopping and all(w.listening for w in st.workers):
            st.announced = True
            print(f"policy-server listening on http://{self.args.host}:{self.port}", flush=True)
        if st.stopping and time.monotonic() > st.stop_deadline:
            for w in st.workers:
                if not w.reaped and w.process.exitcode is None:
                    log.error(
                        "worker %d (pid %d) did not stop within %.0f s; killing it", w.index, w.pid, self.stop_after_s
                    )
                    w.process.kill()
            st.stop_deadline = float("inf")

    def _read_messages(self, w: _Worker) -> None:
        with contextlib.suppress(EOFError, OSError):
            while not w.reaped and w.conn.poll():
                message = w.conn.recv()
                if message == "listening":
                    w.listening = True
                    log.info("worker %d listening (pid %d)", w.index, w.pid)

    def _spawn(self, index: int) -> _Worker:
        parent, child = self.ctx.Pipe(duplex=False)
        overrides: dict[str, Any] = {"reuse_port": True, "metrics_dir": self.metrics_dir}
        if self.args.wal_dir:
            overrides["wal_dir"] = os.path.join(self.args.wal_dir, f"worker-{index}")
        proc = self.ctx.Process(
            target=_worker_main,
            args=(self.args, self.port, overrides, child, self.inherited, os.getpid()),
            name=f"policy-server-worker-{index}",
        )
        proc.start()
        child.close()
        return _Worker(index, proc, parent, pid=proc.pid or 0)

    def _reap(self, w: _Worker) -> _Worker | None:
        """A worker exited: account for it; returns its replacement when it is restarted."""
        st = self.state
        self._read_messages(w)
        w.reaped = True
        w.conn.close()
        worker_metrics.mark_dead(self.metrics_dir, w.pid)
        code = w.process.exitcode
        if st.stopping:
            if code in (-signal.SIGTERM, -signal.SIGINT) and not w.listening:
                code = 0  # stopped while still loading its model: it had acknowledged nothing
            st.result = max(st.result, _exit_status(code))
            return None
        if not w.listening and code == 2:
            log.error("worker %d cannot serve the artifact (see above); stopping", w.index)
            st.result = 2
            self._stop("artifact")
            return None
        now = time.monotonic()
        st.crashes.append(now)
        while st.crashes and now - st.crashes[0] > CRASH_WINDOW_S:
            st.crashes.popleft()
        if len(st.crashes) >= MAX_CRASHES:
            print(
                f"policy-server: workers exited unexpectedly {len(st.crashes)} times within {CRASH_WINDOW_S:g} s "
                f"(last: worker {w.index}, exit code {code}); giving up: fix the cause logged above and restart",
                file=sys.stderr,
                flush=True,
            )
            st.result = max(1, _exit_status(code))
            self._stop("crashes")
            return None
        log.warning("worker %d (pid %d) exited unexpectedly with code %s; restarting it", w.index, w.pid, code)
        return self._spawn(w.index)

    def _stop(self, why: str) -> None:
        st = self.state
        st.stopping = True
        st.stop_deadline = time.monotonic() + self.stop_after_s
        log.info("stopping %d workers (%s)", sum(not w.reaped for w in st.workers), why)
        for w in st.workers:
            if not w.reaped and w.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)


def _exit_status(code: int | None) -> int:
    return 1 if code is None or code < 0 else code


def _worker_main(
    args: argparse.Namespace,
    port: int,
    overrides: dict[str, Any],
    conn: Connection,
    inherited: list[socket.socket],
    supervisor: int,
) -> None:
    """A forked worker: one ordinary server process that reports to the supervisor once bound."""
    signal.set_wakeup_fd(-1)  # the supervisor's signal plumbing is not the worker's
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the supervisor, which forwards it
    for sock in inherited:
        sock.close()
    with contextlib.suppress(OSError, AttributeError):  # Linux: die with the supervisor, never serve orphaned
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before prctl took effect
        sys.exit(1)
    args = copy.copy(args)
    args.port, args.workers = port, 1

    from policy_server import cli

    def announce(host: str, bound: int) -> None:
        conn.send("listening")

    code = cli.serve_process(args, announce=announce, overrides=overrides)
    conn.close()
    sys.exit(code)
