"""The write-ahead log: what was committed is replayed into Parquet exactly once past the checkpoint.

Also: a torn last record is skipped, a live session is never replayed, segments behind the
checkpoint are deleted, and the backlog gauges count what Parquet has not caught up with.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from policy_server.decision_log import read_decisions, read_rewards
from policy_server.decision_log._backlog import Backlog
from policy_server.decision_log.schema import DecisionBatch
from policy_server.decision_log.wal import WalError, WriteAheadLog, recover
from policy_server.decision_log.writer import DecisionLog


def batch(start: int, size: int, *, continuous: bool = False) -> DecisionBatch:
    rows = np.arange(start, start + size)
    return DecisionBatch(
        request_ids=[f"req-{i}" for i in rows],
        time=1_700_000_000.0 + start,
        policy_version="v3",
        variant="candidate",
        observations=np.stack([rows * 0.5, -rows * 0.25], axis=1).astype(np.float32),
        actions=(np.stack([rows * 0.1], axis=1).astype(np.float32) if continuous else rows % 3),
        propensities=np.full(size, 0.5),
        probabilities=None if continuous else np.tile([0.25, 0.5, 0.25], (size, 1)),
        shield_reasons=[["bounds"] if i % 4 == 0 else [] for i in rows],
        latency_ms=0.1 * rows,
        context_json=[f'{{"i":{i}}}' for i in rows],
    )


def _dead_session(directory: Path, batches: list[DecisionBatch], rewards: int = 0) -> WriteAheadLog:
    wal = WriteAheadLog(directory, commit_interval_s=3600)
    for b in batches:
        wal.append_decisions(b)
    for i in range(rewards):
        wal.append_reward({"request_id": f"req-{i}", "time": 1.0, "reward": float(i), "costs": {"risk": 0.5}})
    assert wal.commit()
    wal.close(delete=False)  # the files stay, the lock goes: as after a SIGKILL
    return wal


def _replay(wal_dir: Path, log_dir: Path) -> int:
    return recover(wal_dir, DecisionLog(str(log_dir), flush_interval_s=3600))


def test_committed_decisions_and_rewards_are_replayed_exactly(tmp_path: Path) -> None:
    _dead_session(tmp_path / "wal", [batch(0, 3), batch(3, 5)], rewards=2)
    assert _replay(tmp_path / "wal", tmp_path / "log") == 10
    rows = read_decisions(str(tmp_path / "log")).to_pylist()
    assert [r["request_id"] for r in rows] == [f"req-{i}" for i in range(8)]
    r5 = rows[5]
    assert r5["observation"] == [2.5, -1.25] and r5["action_index"] == 2 and r5["propensity"] == 0.5
    assert r5["probabilities"] == [0.25, 0.5, 0.25] and r5["context_json"] == '{"i":5}'
    assert rows[4]["shield_reasons"] == ["bounds"] and r5["time"] == 1_700_000_003.0
    assert {r["policy_version"] for r in rows} == {"v3"}
    rewards = read_rewards(str(tmp_path / "log")).to_pylist()
    assert [(r["request_id"], r["reward"]) for r in rewards] == [("req-0", 0.0), ("req-1", 1.0)]
    assert not list((tmp_path / "wal").iterdir())  # replayed, then removed


def test_continuous_actions_survive_the_round_trip(tmp_path: Path) -> None:
    _dead_session(tmp_path / "wal", [batch(0, 4, continuous=True)])
    _replay(tmp_path / "wal", tmp_path / "log")
    rows = read_decisions(str(tmp_path / "log")).to_pylist()
    assert rows[3]["action"] == [pytest.approx(0.3)] and rows[3]["action_index"] is None


def test_only_rows_past_the_checkpoint_are_replayed(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", commit_interval_s=3600)
    wal.append_decisions(batch(0, 4))
    wal.append_decisions(batch(4, 4))
    wal.commit()
    wal.checkpoint("decisions", 6)  # Parquet already holds req-0..req-5
    wal.close(delete=False)
    assert _replay(tmp_path / "wal", tmp_path / "log") == 2
    assert read_decisions(str(tmp_path / "log")).column("request_id").to_pylist() == ["req-6", "req-7"]


def test_a_torn_last_record_is_skipped(tmp_path: Path) -> None:
    _dead_session(tmp_path / "wal", [batch(0, 2), batch(2, 2)])
    segment = next((tmp_path / "wal").glob("*.wal"))
    segment.write_bytes(segment.read_bytes()[:-7])  # the process died in the middle of a write
    assert _replay(tmp_path / "wal", tmp_path / "log") == 2
    assert read_decisions(str(tmp_path / "log")).column("request_id").to_pylist() == ["req-0", "req-1"]


def test_a_live_session_is_not_replayed(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", commit_interval_s=3600)
    wal.append_decisions(batch(0, 2))
    wal.commit()
    try:
        assert _replay(tmp_path / "wal", tmp_path / "log") == 0
        assert list((tmp_path / "wal").glob("*.wal"))
    finally:
        wal.close(delete=True)
    assert not list((tmp_path / "wal").iterdir())


def test_segments_behind_the_checkpoint_are_deleted(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", commit_interval_s=3600, segment_bytes=1)  # one segment per commit
    for start in (0, 2, 4):
        wal.append_decisions(batch(start, 2))
        wal.commit()
    assert len(list((tmp_path / "wal").glob("*.wal"))) == 4  # three full ones and the open one
    wal.checkpoint("decisions", 4)
    assert len(list((tmp_path / "wal").glob("*.wal"))) == 2
    wal.close(delete=True)


def test_durable_callers_are_told_about_each_commit(tmp_path: Path) -> None:
    seen: list[int] = []
    wal = WriteAheadLog(tmp_path / "wal", commit_interval_s=3600, on_commit=seen.append)
    n = wal.append_decisions(batch(0, 1))
    assert wal.committed < n
    wal.commit()
    assert wal.committed == n and seen[-1] == n
    wal.close(delete=True)


def test_fsync_and_durable_need_the_commit_thread(tmp_path: Path) -> None:
    for option in ({"fsync": True}, {"durable": True}):
        with pytest.raises(ValueError, match="need the commit thread"):
            WriteAheadLog(tmp_path / "wal", threaded=False, **option)


def test_an_unusable_directory_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(WalError, match="point --wal-dir at a writable local directory"):
        WriteAheadLog(tmp_path / "file" / "wal")


def test_backlog_counts_rows_and_the_age_of_the_oldest() -> None:
    now = [100.0]
    done = {"decisions": 0, "rewards": 0}
    backlog = Backlog(lambda: done, clock=lambda: now[0])
    backlog.add("decisions", 10)
    now[0] = 101.0
    backlog.add("decisions", 5)
    backlog.add("rewards", 1)
    now[0] = 103.0
    assert backlog.rows() == 16 and backlog.oldest_age_s() == 3.0
    done["decisions"] = 10
    assert backlog.rows() == 6 and backlog.oldest_age_s() == 2.0
    done.update(decisions=15, rewards=1)
    assert backlog.rows() == 0 and backlog.oldest_age_s() == 0.0


def test_a_failed_commit_keeps_the_records_and_is_retried(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", commit_interval_s=3600)
    wal.append_decisions(batch(0, 2))
    good_fd = wal._fd
    wal._fd = os.open(os.devnull, os.O_RDONLY)  # writes fail, as on a full or read-only disk
    assert not wal.commit() and wal.failing and wal.errors == 1 and wal.committed == 0
    os.close(wal._fd)
    wal._fd = good_fd  # the disk has room again
    assert wal.commit() and not wal.failing and wal.committed == 1
    wal.close(delete=False)
    assert _replay(tmp_path / "wal", tmp_path / "log") == 2


def test_non_contiguous_arrays_are_logged(tmp_path: Path) -> None:
    """Views (a transposed or strided array) are as loggable as the arrays the server usually hands over."""
    b = batch(0, 3)
    wide = np.tile([0.25, 0.5, 0.25], (3, 2))
    b = dataclasses.replace(
        b, probabilities=wide[:, ::2], observations=np.asfortranarray(b.observations)
    )  # strided and column-major: not C-contiguous
    _dead_session(tmp_path / "wal", [b])
    _replay(tmp_path / "wal", tmp_path / "log")
    rows = read_decisions(str(tmp_path / "log")).to_pylist()
    assert rows[2]["probabilities"] == [0.25, 0.25, 0.5] and rows[2]["observation"] == [1.0, -0.5]
