"""`ope.evaluate`: a candidate artifact's probabilities on logged observations, the evaluation's errors, the result.

The end-to-end verdicts (pass, fail, refuse against a known truth) are tested through the command
line in tests/policy_server/test_ope_cli.py; these test the library functions it is made of.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policy_server.ope import OPEError
from policy_server.ope import evaluate as ope_evaluate
from policy_server.ope import logged as ope_logged
from tests.support import decision_logs


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ope-evaluate")
    return {
        "log": decision_logs.write_log(root / "log", decision_logs.behaviour(root / "behaviour"), n=1000),
        "good": decision_logs.candidate(root / "good", "good"),
    }


def test_probabilities_follow_the_artifacts_exploration(data: dict[str, Any]) -> None:
    logged = ope_logged.load_logged(data["log"].url)
    probs, version = ope_evaluate.policy_probabilities(str(data["good"]), logged.observations, batch_size=97)
    assert version == "v2" and probs.shape == (logged.actions.shape[0], decision_logs.N_ACTIONS)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    best = decision_logs.expected_reward(logged.observations).argmax(axis=1)
    # epsilon-greedy 0.1 over 3 actions: the best action gets 0.9 + 0.1/3
    np.testing.assert_allclose(probs[np.arange(len(best)), best], 0.9 + 0.1 / 3, rtol=1e-6)
    # the logged behaviour probabilities are read back exactly as the server logged them
    assert logged.behavior_dist is not None
    np.testing.assert_allclose(logged.behavior_dist[np.arange(len(best)), logged.actions], logged.propensities)


def test_an_artifact_that_cannot_be_evaluated_is_an_ope_error(tmp_path: Path) -> None:
    with pytest.raises(OPEError, match=r"manifest\.json"):
        ope_evaluate.policy_probabilities(str(tmp_path / "no-artifact"), np.zeros((4, decision_logs.OBS_DIM)))


def _uniform_log(n: int = 40, k: int = 3) -> ope_logged.LoggedData:
    rng = np.random.default_rng(0)
    return ope_logged.LoggedData(
        observations=rng.standard_normal((n, 2)).astype(np.float32),
        actions=np.arange(n, dtype=np.int64) % k,
        propensities=np.full(n, 1.0 / k),
        rewards=rng.standard_normal(n),
        behavior_dist=np.full((n, k), 1.0 / k),
        n_actions=k,
    )


@pytest.mark.parametrize(("estimators", "actions", "words"), [
    (["magic"], 3, "unknown estimator"),
    ([], 3, "unknown estimator"),
    (["snips"], 2, "the candidate policy has 2 actions, the log has 3"),
])
def test_what_cannot_be_evaluated_is_refused_with_the_reason(estimators: list[str], actions: int, words: str) -> None:
    data = _uniform_log()
    candidate = np.full((data.actions.shape[0], actions), 1.0 / actions)
    with pytest.raises(OPEError, match=words):
        ope_evaluate.evaluate(data, candidate, baseline=None, estimators=estimators)


def test_the_result_is_compacted_to_fit_a_termination_message() -> None:
    small = {"v": 1, "kind": "ope", "verdict": "pass", "reason": "ok", "estimates": [{"estimator": "dr"}]}
    assert json.loads(ope_evaluate.compact(small)) == small
    large = {"v": 1, "kind": "ope", "verdict": "fail", "reason": "x" * 5000,
             "estimates": [{"estimator": "dr", "value": 1.0, "reason": "y" * 5000}]}
    text = ope_evaluate.compact(large)
    assert len(text.encode()) <= ope_evaluate.RESULT_LIMIT and "\n" not in text
    slim = json.loads(text)
    assert slim["verdict"] == "fail" and slim["reason"] == "x" * 400 and slim["estimates"] == [
        {"estimator": "dr", "value": 1.0}
    ]
    # when even that is too long, only the verdict and a short reason are kept
    assert set(json.loads(ope_evaluate.compact(large, limit=100))) == {"v", "kind", "verdict", "reason"}
