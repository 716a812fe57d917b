"""Critic calibration offline: logged predictions against realised (discounted) returns of the joined log."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from policy_server import cli
from policy_server.decision_log import DecisionLog
from policy_server.decision_log.schema import DECISION_SCHEMA, REWARD_SCHEMA
from policy_server.join import JoinOptions, join_tables
from policy_server.ope import critic
from policy_server.ope._checks import OPEError


def _decision(rid: str, t: float, episode: str | None, step: int | None, predicted: float | None) -> dict:
    return {"schema_version": 2, "request_id": rid, "time": t, "policy_version": "v1", "variant": "stable",
            "observation": [t], "action": [0.0], "action_index": 0, "propensity": 1.0, "shield_reasons": [],
            "latency_ms": 0.1, "episode_id": episode, "step": step, "predicted_value": predicted}  # fmt: skip


def _reward(rid: str, reward: float, terminal: bool | None = None) -> dict:
    return {"schema_version": 2, "request_id": rid, "time": 9.0, "reward": reward, "terminal": terminal}


# episode e: rewards 1, 2, 4 then terminal; f: one step still running (truncated); a bandit decision
DECISIONS = [
    _decision("e0", 1.0, "e", 0, 3.0),
    _decision("e1", 2.0, "e", 1, 5.0),
    _decision("e2", 3.0, "e", 2, 4.0),
    _decision("f0", 1.5, "f", 0, 7.0),
    _decision("bandit", 1.0, None, None, 0.5),
    _decision("no-critic", 1.0, None, None, None),
    _decision("unrewarded", 1.0, None, None, 9.0),
]
REWARDS = [_reward("e0", 1.0), _reward("e1", 2.0), _reward("e2", 4.0, terminal=True), _reward("f0", 6.0),
           _reward("bandit", 1.5), _reward("no-critic", 3.0)]  # fmt: skip


def _joined() -> tuple[pa.Table, set[str]]:
    table, _ = join_tables(
        pa.Table.from_pylist(DECISIONS, DECISION_SCHEMA),
        pa.Table.from_pylist(REWARDS, REWARD_SCHEMA),
        JoinOptions(default_reward=0.0),
    )
    return table, {"e2"}


def test_discounted_returns_restart_at_each_trajectory_end() -> None:
    got = critic.discounted_returns(np.array([1.0, 2.0, 4.0, 6.0]), np.array([False, False, True, True]), 0.5)
    assert got.tolist() == [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0, 6.0]


def test_one_step_calibration_compares_each_rewarded_prediction_with_its_own_reward() -> None:
    table, terminal = _joined()
    got = critic.critic_calibration(table, terminal, 0.0)
    pairs = [(3.0, 1.0), (5.0, 2.0), (4.0, 4.0), (7.0, 6.0), (0.5, 1.5)]  # not: no prediction, made-up reward
    errors = [p - r for p, r in pairs]
    assert got["n"] == len(pairs)
    assert got["meanAbsError"] == pytest.approx(np.mean(np.abs(errors)))
    assert got["bias"] == pytest.approx(np.mean(errors))
    assert got["rootMeanSquaredError"] == pytest.approx(np.sqrt(np.mean(np.square(errors))))
    assert got["calibrationRatio"] == pytest.approx(np.mean([p for p, _ in pairs]) / np.mean([r for _, r in pairs]))


def test_discounted_calibration_uses_complete_trajectories_only() -> None:
    table, terminal = _joined()
    got = critic.critic_calibration(table, terminal, 0.5)
    realised = [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0]  # episode e; f is still running
    assert got["n"] == 3 and got["truncatedSteps"] == 1
    assert got["meanRealized"] == pytest.approx(np.mean(realised))
    assert got["meanAbsError"] == pytest.approx(np.mean(np.abs(np.array([3.0, 5.0, 4.0]) - realised)))


def test_a_log_without_predictions_is_refused_with_what_to_do() -> None:
    plain = [{**d, "predicted_value": None} for d in DECISIONS]
    decisions, rewards = pa.Table.from_pylist(plain, DECISION_SCHEMA), pa.Table.from_pylist(REWARDS, REWARD_SCHEMA)
    table, _ = join_tables(decisions, rewards, JoinOptions())
    with pytest.raises(OPEError, match="output q_values"):
        critic.critic_calibration(table, set(), 0.0)
    with pytest.raises(OPEError, match=r"--gamma must be in \[0, 1\]"):
        critic.critic_calibration(table, set(), 1.5)


def test_the_cli_reports_calibration_without_a_policy(tmp_path, capsys) -> None:
    log = DecisionLog(str(tmp_path / "log"), flush_interval_s=60)
    for d in DECISIONS:
        record = {k: v for k, v in d.items() if k not in ("schema_version", "action_index")}
        log.log_decision(record | {"action": 0})  # a discrete action (an index) in the record path
    for r in REWARDS:
        log.log_reward({k: v for k, v in r.items() if k != "schema_version"})
    log.close()
    code = cli.main(["ope", "--critic-calibration", "--logs", log.url, "--gamma", "0.5", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["kind"] == "critic-calibration" and result["n"] == 3
    assert cli.main(["ope", "--logs", log.url]) == 2
    assert "give the candidate artifact with --policy" in capsys.readouterr().err
