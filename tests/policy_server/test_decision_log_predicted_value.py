"""The decision column ``predicted_value``: a value-predicting policy's Q of the served action, null otherwise.

It reaches Parquet through the staging area, survives the write-ahead log, and a non-finite
prediction is stored as null (no prediction) so offline means skip it.
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


def test_staged_predictions_are_logged_and_rows_without_one_are_null(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "log"), flush_interval_s=60)
    staging = DecisionStaging(log, policy_version="v7", variant="candidate", capacity=64)
    staging.add(**micro_batch(0, 2))  # staged before any prediction
    staging.add(**micro_batch(2, 3), predicted_value=np.array([1.5, np.inf, -0.25]))
    staging.add(**micro_batch(5, 1))
    staging.flush()
    log.close()
    rows = read_decisions(log.url).to_pylist()
    assert [r["request_id"] for r in rows] == [f"req-{i}" for i in range(6)]
    assert [r["predicted_value"] for r in rows] == [None, None, 1.5, None, -0.25, None]


def test_predictions_survive_the_write_ahead_log(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", commit_interval_s=3600)
    wal.append_decisions(dataclasses.replace(batch(0, 3), predicted_value=np.array([2.0, np.nan, -1.0])))
    wal.append_decisions(batch(3, 2))
    assert wal.commit()
    wal.close(delete=False)  # as after a SIGKILL
    assert recover(tmp_path / "wal", DecisionLog(str(tmp_path / "log"), flush_interval_s=3600)) == 5
    rows = read_decisions(str(tmp_path / "log")).to_pylist()
    assert [r["predicted_value"] for r in rows] == [2.0, None, -1.0, None, None]


def test_the_record_path_takes_the_column_too(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "log"), flush_interval_s=60)
    common = {"time": 1.0, "policy_version": "v1", "variant": "stable", "observation": [0.0], "propensity": 1.0}
    common |= {"latency_ms": 0.5}
    log.log_decision({"request_id": "a", "action": 1, "predicted_value": 0.75, **common})
    log.log_decision({"request_id": "b", "action": 0, **common})
    log.close()
    rows = read_decisions(log.url).to_pylist()
    assert [(r["request_id"], r["predicted_value"]) for r in rows] == [("a", 0.75), ("b", None)]
