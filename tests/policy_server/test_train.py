"""`policy-server train`: a small synthetic log in, a servable artifact that beats the behaviour policy out.

The artifact is checked the way it will be used: `policy-server serve` loads it and answers
/v1/act over HTTP with exact propensities, and its off-policy estimate on the log (the OPE report
the trainer writes) is above the behaviour policy's logged value, as is its true value under the
known reward function.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from policy_server import artifact, cli
from policy_server.ope import evaluate as ope_evaluate
from policy_server.ope import logged as ope_logged
from tests.support import decision_logs
from tests.support.policy_server import cli_server


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> decision_logs.WrittenLog:
    root = tmp_path_factory.mktemp("train")
    return decision_logs.write_log(root / "log", decision_logs.behaviour(root / "behaviour"), n=3000, seed=5)


def _train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any] | None, str]:
    code = cli.main(["train", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def _true_value(artifact_dir: str, log: decision_logs.WrittenLog) -> float:
    logged = ope_logged.load_logged(log.url)
    probs, _ = ope_evaluate.policy_probabilities(artifact_dir, logged.observations)
    return float((probs * decision_logs.expected_reward(logged.observations)).sum(axis=1).mean())


@pytest.mark.integration
def test_trained_artifact_is_served_and_beats_the_behaviour_policy(
    log: decision_logs.WrittenLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models" / "train-abc"
    result_file = tmp_path / "termination-log"
    code, result, err = _train(capsys, "--logs", log.url, "--out", str(out), "--version", "train-abc",
                               "--steps", "600", "--bound", "bootstrap_t", "--write-result", str(result_file))
    assert code == 0, err
    assert result is not None and result["version"] == "train-abc" and result["artifact"] == str(out)
    assert json.loads(result_file.read_text()) == result
    ope = result["ope"]
    assert ope["baselineValue"] == pytest.approx(log.mean_reward)
    assert ope["estimate"] > ope["baselineValue"] and ope["lowerBound"] > ope["baselineValue"]
    assert ope["verdict"] == "pass" and ope["ess"] > 100
    assert json.loads((out / "ope.json").read_text())["verdict"] == "pass"
    # Not only the estimate: under the known reward function the trained policy is better.
    assert _true_value(str(out), log) > log.mean_reward + 0.3

    manifest = artifact.read_manifest(str(out))
    assert manifest.version == "train-abc" and manifest.output == "q_values"
    assert manifest.exploration.kind == "epsilon_greedy"  # propensities stay > 0 for the next evaluation
    assert manifest.observation.reference is not None  # drift reference from the training data
    with cli_server("--model", str(out)) as server:
        client = server.client()
        obs = np.random.default_rng(0).standard_normal(decision_logs.OBS_DIM).tolist()
        answer = client.act(obs)
        assert answer["policy_version"] == "train-abc"
        assert answer["action"] in range(decision_logs.N_ACTIONS)
        assert 0.1 / decision_logs.N_ACTIONS - 1e-9 <= answer["propensity"] <= 1.0
        client.close()


def test_discrete_cql_through_d3rlpy_exports_a_loadable_q_network(
    log: decision_logs.WrittenLog, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cql"
    code, result, err = _train(capsys, "--logs", log.url, "--out", str(out), "--version", "cql-1",
                               "--algorithm", "discrete-cql", "--steps", "40", "--batch-size", "128")
    assert code == 0, err
    assert result is not None and result["algorithm"] == "discrete-cql"
    loaded = artifact.load_artifact(str(out))
    assert loaded.manifest.output == "q_values" and loaded.manifest.action.n == decision_logs.N_ACTIONS
    assert not (tmp_path / "d3rlpy_logs").exists() and not Path(os.getcwd(), "d3rlpy_logs").exists()


def test_training_errors_say_what_to_fix(log: decision_logs.WrittenLog, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    result_file = tmp_path / "result"
    code, _, err = _train(capsys, "--logs", str(tmp_path / "empty"), "--out", str(tmp_path / "m"), "--version", "x",
                          "--write-result", str(result_file))
    assert code == 2 and "no rewarded, served discrete decisions" in err
    assert "no rewarded" in json.loads(result_file.read_text())["error"]
    if not torch.cuda.is_available():
        code, _, err = _train(capsys, "--logs", log.url, "--out", str(tmp_path / "m"), "--version", "x",
                              "--device", "cuda")
        assert code == 2 and "torch sees no GPU" in err
