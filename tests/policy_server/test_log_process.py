"""The decision log behind a process boundary: everything handed over is on disk after close()."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_server import decision_log, log_process


def _decision(i: int) -> dict:
    return {
        "request_id": f"r{i}",
        "time": 1.0 + i,
        "policy_version": "v1",
        "variant": "x",
        "observation": [0.5, float(i)],
        "action": i % 3,
        "propensity": 0.25,
        "probabilities": [0.25, 0.5, 0.25],
        "shield_reasons": ["action_mask"] if i % 2 else [],
        "latency_ms": 0.3,
        "context_json": None,
    }


def test_roundtrip_and_close_flushes(tmp_path: Path) -> None:
    plog = log_process.ProcessDecisionLog(str(tmp_path / "log"))
    for start in range(0, 1000, 8):
        plog.log_decisions([_decision(i) for i in range(start, start + 8)])
    plog.log_decision(_decision(5000))
    plog.log_reward({"request_id": "r3", "time": 9.0, "reward": 1.5, "costs": {"risk": 0.1}})
    plog.close()
    plog.close()  # idempotent
    table = decision_log.read_decisions(str(tmp_path / "log"))
    assert table.num_rows == 1001
    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert rows["r7"]["observation"] == [0.5, 7.0] and rows["r7"]["shield_reasons"] == ["action_mask"]
    rewards = decision_log.read_rewards(str(tmp_path / "log")).to_pylist()
    assert [(r["request_id"], r["reward"]) for r in rewards] == [("r3", 1.5)]


def test_bad_location_fails_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(log_process.DecisionLogProcessError, match="cannot open the decision log"):
        log_process.ProcessDecisionLog(str(blocker / "sub"))
