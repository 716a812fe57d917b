"""`ope.logged`: which decisions of a log offline evaluation and training learn from, and as which arrays.

Logs are written with `DecisionLog`, as the policy server writes them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policy_server.decision_log.writer import DecisionLog
from policy_server.ope import OPEError
from policy_server.ope import logged as ope_logged


def decision(i: int, **over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "request_id": f"r{i}",
        "time": 1_700_000_000.0 + i,
        "policy_version": "v1",
        "variant": "stable",
        "observation": [float(i), -0.5],
        "action": 1,
        "propensity": 0.75,
        "probabilities": [0.25, 0.75],
        "shield_reasons": [],
        "latency_ms": 0.5,
    }
    rec.update(over)
    return rec


def write(directory: Path, decisions: list[dict[str, Any]], rewarded: set[int]) -> str:
    with DecisionLog(str(directory), flush_interval_s=3600) as dlog:
        for i, rec in enumerate(decisions):
            dlog.log_decision(rec)
            if i in rewarded:
                dlog.log_reward({"request_id": rec["request_id"], "time": rec["time"] + 1.0, "reward": float(i)})
    return str(directory)


def test_only_rewarded_served_discrete_decisions_are_loaded(tmp_path: Path) -> None:
    url = write(tmp_path, [
        decision(0),
        decision(1, variant="shadow"),  # never served to anyone
        decision(2),  # no reward arrived
        decision(3, action=[0.3, 0.7], probabilities=None),  # a continuous action
        decision(4, action=0, propensity=0.25),
    ], rewarded={0, 1, 3, 4})
    data = ope_logged.load_logged(url)
    assert data.rewards.tolist() == [0.0, 4.0] and data.rewards.dtype == np.float64
    assert data.actions.tolist() == [1, 0] and data.actions.dtype == np.int64
    assert data.propensities.tolist() == [0.75, 0.25] and data.propensities.dtype == np.float64
    assert data.observations.dtype == np.float32
    np.testing.assert_array_equal(data.observations, [[0.0, -0.5], [4.0, -0.5]])
    assert data.behavior_dist is not None and data.behavior_dist.tolist() == [[0.25, 0.75], [0.25, 0.75]]
    assert data.n_actions == 2
    assert ope_logged.load_logged(url, obs_shape=(2, 1)).observations.shape == (2, 2, 1)


def test_behaviour_probabilities_only_when_every_row_logged_them(tmp_path: Path) -> None:
    url = write(tmp_path, [decision(0), decision(1, probabilities=None, action=2)], rewarded={0, 1})
    data = ope_logged.load_logged(url)
    assert data.behavior_dist is None and data.n_actions == 3  # from the largest logged action


@pytest.mark.parametrize(("obs_shape", "words"), [
    (None, "no rewarded, served discrete decisions"),
    ((3,), "the policy expects shape [3]"),
])
def test_a_log_that_cannot_be_used_says_why(tmp_path: Path, obs_shape: tuple[int, ...] | None, words: str) -> None:
    url = write(tmp_path, [decision(0)], rewarded={0} if obs_shape else set())
    with pytest.raises(OPEError, match=re.escape(words)):
        ope_logged.load_logged(url, obs_shape=obs_shape)
