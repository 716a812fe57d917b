"""The decision column ``proposed_action``: an out-of-envelope proposal the server replaced, null otherwise.

It reaches Parquet through the staging area and survives the write-ahead log, like ``action``:
``[index]`` for discrete actions, the vector for continuous ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from policy_server.decision_log import read_decisions
from policy_server.decision_log.wal import WriteAheadLog, recover
from policy_server.decision_log.writer import DecisionLog
from policy_server.log_staging import DecisionStaging
from tests.policy_server.test_decision_log_wal import batch
from tests.policy_server.test_log_staging import micro_batch


def test_staged_proposals_are_logged_and_other_rows_are_null(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "log"), flush_interval_s=60)
    staging = DecisionStaging(log, policy_version="v7", variant="candidate", capacity=64)
    staging.add(**micro_batch(0, 2))  # staged before any proposal
    staging.add(**micro_batch(2, 3), proposed_action=np.array([[3.0], [np.nan], [2.0]]))
    staging.add(**micro_batch(5, 1))
    staging.flush()
    log.close()
    rows = read_decisions(log.url).to_pylist()
    assert [r["request_id"] for r in rows] == [f"req-{i}" for i in range(6)]
    assert [r["proposed_action"] for r in rows] == [None, None, [3.0], None, [2.0], None]


def test_proposals_survive_the_write_ahead_log(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", commit_interval_s=3600)
    proposed = np.array([[0.5, -2.0], [np.nan, np.nan], [1.5, 0.0]])
    wal.append_decisions(dataclasses.replace(batch(0, 3), proposed_action=proposed))
    wal.append_decisions(batch(3, 2))
    assert wal.commit()
    wal.close(delete=False)  # as after a SIGKILL
    assert recover(tmp_path / "wal", DecisionLog(str(tmp_path / "log"), flush_interval_s=3600)) == 5
    rows = read_decisions(str(tmp_path / "log")).to_pylist()
    assert [r["proposed_action"] for r in rows] == [[0.5, -2.0], None, [1.5, 0.0], None, None]


def test_the_record_path_takes_the_column_too(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "log"), flush_interval_s=60)
    common = {"time": 1.0, "policy_version": "v1", "variant": "stable", "observation": [0.0], "propensity": 1.0}
    common |= {"latency_ms": 0.5, "shield_reasons": ["envelope"]}
    log.log_decision({"request_id": "a", "action": 1, "proposed_action": [3.0], **common})
    log.log_decision({"request_id": "b", "action": 0, **common})
    log.close()
    rows = read_decisions(log.url).to_pylist()
    assert [(r["request_id"], r["proposed_action"]) for r in rows] == [("a", [3.0]), ("b", None)]
