"""``policy-server serve --workers N`` (policy_server/workers.py), real processes over HTTP.

Every request below opens a new connection, so the kernel (SO_REUSEPORT) picks a worker for
each: two workers both serve, any single scrape counts every worker's decisions, a reward is
accepted whichever worker made its decision, a SIGKILLed worker is restarted without counters
going backwards, and SIGTERM drains every acknowledged decision into the log exactly once. The
supervisor gives up on a worker that keeps dying, stops at once on an artifact it cannot serve or
a port in use, and hands WAL sessions no worker owns (a single-process run's) to a worker.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from policy_server import workers as workers_module
from tests.support.policy_server import Client, parse_metrics, start_cli

OBS = [0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.4]
WAIT_S = 20.0  # bound of every polling loop below (snapshots are written every second)


class Workers:
    """A running ``serve --workers N``: its port and the pids its supervisor reported per worker."""

    def __init__(self, proc: subprocess.Popen, port: int, stderr: list[str]) -> None:
        self.proc, self.port, self.stderr = proc, port, stderr

    def pids(self) -> dict[int, int]:
        """Worker index -> pid of its latest incarnation (from the supervisor's log)."""
        found: dict[int, int] = {}
        for line in list(self.stderr):
            m = re.search(r"worker (\d+) listening \(pid (\d+)\)", line)
            if m:
                found[int(m.group(1))] = int(m.group(2))
        return found

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@contextmanager
def workers(*args: str, n: int = 2) -> Iterator[Workers]:
    proc = start_cli("--workers", str(n), *args)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on http://[\d.]+:(\d+)", line)
        assert m, f"no listening line: {line!r}; stderr: {''.join(stderr)}"
        yield Workers(proc, int(m.group(1)), stderr)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(5)


def once(port: int, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
    """One request on a connection of its own (so any worker may take it)."""
    client = Client(port)
    try:
        return client.request(method, path, None if payload is None else json.dumps(payload))
    finally:
        client.close()


def act(port: int) -> str:
    status, body = once(port, "POST", "/v1/act", {"observation": OBS})
    assert status == 200, body
    return body["request_id"]


def decisions(port: int) -> float:
    status, text = once(port, "GET", "/metrics")
    assert status == 200, text
    return sum(v for k, v in parse_metrics(text).items() if k.startswith("policy_decisions_total{"))


def scrapes_until(port: int, expected: float) -> list[float]:
    """Scrape (each on a new connection) until one counts ``expected`` decisions; every value seen."""
    seen = [decisions(port)]
    deadline = time.monotonic() + WAIT_S
    while seen[-1] != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        seen.append(decisions(port))
    return seen


def logged_ids(log_dir: Path) -> tuple[list[str], collections.Counter[str]]:
    """Request ids of every logged decision, and rows per writer (the segment name's last part)."""
    ids: list[str] = []
    per_writer: collections.Counter[str] = collections.Counter()
    for seg in sorted((log_dir / "decisions").rglob("*.parquet")):
        rows = pq.read_table(seg, columns=["request_id"]).column("request_id").to_pylist()
        ids += rows
        per_writer[seg.stem.rsplit("-", 1)[-1]] += len(rows)
    return ids, per_writer


def test_two_workers_both_serve_and_any_single_scrape_counts_every_decision(models, tmp_path) -> None:
    log_dir = tmp_path / "log"
    with workers("--model", str(models()), "--log-dir", str(log_dir)) as srv:
        sent = [act(srv.port) for _ in range(120)]
        seen = scrapes_until(srv.port, len(sent))
        assert seen[-1] == len(sent), seen
        assert [decisions(srv.port) for _ in range(8)] == [len(sent)] * 8  # whichever worker answers
        assert seen == sorted(seen)
        assert srv.stop() == 0
    ids, per_writer = logged_ids(log_dir)
    assert sorted(ids) == sorted(sent)
    assert len(per_writer) == 2 and min(per_writer.values()) > 0, per_writer  # both workers took connections


def test_a_reward_is_accepted_whichever_worker_made_the_decision(models, tmp_path) -> None:
    with workers("--model", str(models())) as srv:
        ids = [act(srv.port) for _ in range(30)]
        answers = [once(srv.port, "POST", "/v1/reward", {"request_id": rid, "reward": 1.0}) for rid in ids]
        assert [status for status, _ in answers] == [202] * len(ids), answers
        deadline = time.monotonic() + WAIT_S
        while True:
            _, text = once(srv.port, "GET", "/metrics")
            rewarded = sum(v for k, v in parse_metrics(text).items() if k.startswith("policy_reward_count{"))
            if rewarded == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rewarded == len(ids)


def test_a_killed_worker_is_restarted_and_counters_never_go_backwards(models, tmp_path) -> None:
    log_dir, wal_dir = tmp_path / "log", tmp_path / "wal"
    with workers("--model", str(models()), "--log-dir", str(log_dir), "--wal-dir", str(wal_dir)) as srv:
        sent = [act(srv.port) for _ in range(60)]
        seen = scrapes_until(srv.port, len(sent))
        before = srv.pids()
        assert len(before) == 2, srv.stderr
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while srv.pids().get(0) == before[0] and time.monotonic() < deadline:
            with contextlib.suppress(ConnectionError):  # one queued on the dying worker's socket is reset
                seen.append(decisions(srv.port))  # the survivor answers meanwhile
            time.sleep(0.2)
        assert srv.pids()[0] != before[0], "".join(srv.stderr)
        assert srv.pids()[1] == before[1]
        sent += [act(srv.port) for _ in range(60)]
        seen += scrapes_until(srv.port, len(sent))
        assert seen[-1] == len(sent), seen
        assert seen == sorted(seen), seen  # the dead worker's counts stayed in the sum
        assert srv.stop() == 0
    ids, _ = logged_ids(log_dir)
    assert sorted(ids) == sorted(sent)  # the successor replayed its predecessor's WAL
    assert not list(wal_dir.rglob("*.wal"))  # every worker's WAL was written out and deleted


def test_sigterm_under_load_logs_every_acknowledged_decision_exactly_once(models, tmp_path) -> None:
    log_dir = tmp_path / "log"
    acked: list[str] = []
    stop = threading.Event()

    def client(port: int) -> None:
        conn = None
        for sent in range(5_000):  # bounded; ends at the first refused or failed request after SIGTERM
            if stop.is_set() and conn is None:
                return
            if conn is not None and sent % 20 == 0 and not stop.is_set():
                conn.close()  # a fresh connection every 20 requests: the kernel spreads them over both workers
                conn = None
            conn = conn or Client(port, timeout=10)
            try:
                status, body = conn.post("/v1/act", {"observation": OBS})
            except OSError:
                conn = None
                if stop.is_set():
                    return
                continue
            if status == 200:
                acked.append(body["request_id"])
            elif stop.is_set():
                return

    with workers("--model", str(models()), "--log-dir", str(log_dir), "--wal-dir", str(tmp_path / "wal")) as srv:
        threads = [threading.Thread(target=client, args=(srv.port,), daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + WAIT_S
        while len(acked) < 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        assert srv.stop() == 0, "".join(srv.stderr)
        for t in threads:
            t.join(30)
    ids, per_writer = logged_ids(log_dir)
    assert len(acked) >= 400
    assert len(ids) == len(set(ids))  # nothing logged twice
    assert set(acked) <= set(ids)  # everything acknowledged was logged
    assert len(per_writer) == 2


def test_a_worker_that_cannot_load_the_artifact_stops_the_server_with_code_2(tmp_path) -> None:
    proc = start_cli("--workers", "2", "--model", str(tmp_path / "missing"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "listening" not in out
    assert "cannot serve the artifact" in err
    assert "restarting" not in err


def test_a_port_in_use_is_refused_at_once_with_code_1(models) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_cli("--workers", "2", "--model", str(models()), "--port", str(port))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert out == ""


def test_a_worker_that_keeps_dying_makes_the_supervisor_give_up_with_one_line(models) -> None:
    with workers("--model", str(models())) as srv:
        killed: set[int] = set()
        deadline = time.monotonic() + 90
        while srv.proc.poll() is None and time.monotonic() < deadline:
            pid = srv.pids().get(0)
            if pid is not None and pid not in killed:
                killed.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        assert srv.proc.wait(60) == 1
    assert len(killed) == workers_module.MAX_CRASHES
    err = "".join(srv.stderr)
    assert err.count("giving up") == 1
    assert f"exited unexpectedly {workers_module.MAX_CRASHES} times" in err


def _session(directory: Path, name: str) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    files = [f"{name}.lock", f"{name}.ckpt", f"{name}-000000.wal", f"{name}-000001.wal"]
    for f in files:
        (directory / f).write_text(f)
    return files


def test_wal_sessions_no_worker_would_replay_move_to_a_worker_that_will(tmp_path) -> None:
    single = _session(tmp_path, "20261206T100000-aaaaaaaa")  # a --workers 1 run writes the root
    gone = _session(tmp_path / "worker-3", "20261206T110000-bbbbbbbb")  # --workers 4 before, 2 now
    live = _session(tmp_path / "worker-2", "20261206T120000-cccccccc")
    with open(tmp_path / "worker-2" / live[0], "w") as held:  # a server still running holds its lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert workers_module.adopt_orphan_wal_sessions(tmp_path, 2) == 2
    assert sorted(p.name for p in (tmp_path / "worker-0").iterdir()) == sorted(single)
    assert sorted(p.name for p in (tmp_path / "worker-1").iterdir()) == sorted(gone)
    assert sorted(p.name for p in (tmp_path / "worker-2").iterdir()) == sorted(live)
    assert not (tmp_path / "worker-3").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-0", "worker-1", "worker-2"]


def test_decisions_a_killed_single_process_left_in_its_wal_are_replayed_by_the_workers(models, tmp_path) -> None:
    log_dir, wal_dir = tmp_path / "log", tmp_path / "wal"
    single = start_cli("--model", str(models()), "--log-dir", str(log_dir), "--wal-dir", str(wal_dir))
    try:
        m = re.search(r":(\d+)$", single.stdout.readline().strip())
        assert m, single.stderr.read() if single.poll() is not None else "no listening line"
        port = int(m.group(1))
        deadline = time.monotonic() + WAIT_S
        while once(port, "GET", "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        sent = [act(port) for _ in range(40)]
        time.sleep(0.1)  # > --wal-commit-ms: every acknowledged decision is in the WAL file
    finally:
        single.kill()
        single.wait(30)
    assert list(wal_dir.glob("*.wal"))  # the Parquet writer had not flushed them: only the WAL holds them
    with workers("--model", str(models()), "--log-dir", str(log_dir), "--wal-dir", str(wal_dir)) as srv:
        assert srv.stop() == 0, "".join(srv.stderr)
    ids, _ = logged_ids(log_dir)
    assert sorted(ids) == sorted(sent)
    assert not list(wal_dir.rglob("*.wal"))
