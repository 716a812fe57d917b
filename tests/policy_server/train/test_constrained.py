"""`constrained-cql`: on a cooling MDP whose values are computed exactly, the cost budget is what separates policies.

Trained on the same random-behaviour trajectories with the same seed, the policy trained without a
budget overheats far beyond it; the one trained with the budget stays within it (true discounted
cost, computed exactly from the MDP) while still earning more than the logged behaviour. The
exported artifact serves the very policy that was trained: its softmax propensities are the
training policy's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from policy_server import artifact, cli
from policy_server.ope import evaluate as ope_evaluate
from policy_server.train import constrained
from tests.policy_server.train import cooling_mdp as mdp

BUDGET = 1.0
TEMPERATURE = 0.5
# Settings the test pins (small and quick on CPU); the CLI's defaults are for bigger data.
QUICK = {"gamma": mdp.GAMMA, "steps": 1200, "batch_size": 128, "lr": 2e-3, "target_every": 100,
         "lambda_lr": 0.2, "seed": 0, "exploration": artifact.Exploration(kind="softmax", temperature=TEMPERATURE)}


@pytest.fixture(scope="module")
def logged() -> mdp.episodes.EpisodeArrays:
    return mdp.logged_episodes(300, seed=0)


@pytest.fixture(scope="module")
def unconstrained(logged: mdp.episodes.EpisodeArrays) -> constrained.Result:
    return constrained.train(logged, constrained.Config(**QUICK))


@pytest.fixture(scope="module")
def budgeted(logged: mdp.episodes.EpisodeArrays) -> constrained.Result:
    return constrained.train(logged, constrained.Config(costs=("overheat",), budgets=(BUDGET,), **QUICK))


def _behaviour_value(logged: mdp.episodes.EpisodeArrays, name: str | None = None) -> float:
    values = logged.rewards if name is None else logged.costs[name]
    return float((values @ mdp.GAMMA ** np.arange(mdp.HORIZON)).mean())


def test_without_a_budget_the_policy_overheats(unconstrained: constrained.Result,
                                               logged: mdp.episodes.EpisodeArrays) -> None:
    reward, cost = mdp.true_values(unconstrained.module, TEMPERATURE)
    assert cost > 5 * BUDGET
    assert reward > _behaviour_value(logged)
    assert unconstrained.lambdas == {}


def test_with_a_budget_the_policy_stays_within_it_and_still_improves(
    budgeted: constrained.Result, unconstrained: constrained.Result, logged: mdp.episodes.EpisodeArrays
) -> None:
    reward, cost = mdp.true_values(budgeted.module, TEMPERATURE)
    assert cost <= BUDGET
    assert _behaviour_value(logged) < reward < mdp.true_values(unconstrained.module, TEMPERATURE)[0]
    assert budgeted.lambdas["overheat"] > 0  # the budget binds: the multiplier had to rise
    assert budgeted.estimates["cost/overheat"] == pytest.approx(BUDGET, abs=0.25)  # dual ascent settled at it
    assert budgeted.steps == QUICK["steps"] and budgeted.resumed_from == 0


def test_the_exploration_rule_gives_every_action_support(budgeted: constrained.Result,
                                                          logged: mdp.episodes.EpisodeArrays) -> None:
    obs = torch.from_numpy(logged.observations.reshape(-1, 2))
    with torch.no_grad():
        probs = constrained.policy_probabilities(budgeted.module(obs), QUICK["exploration"])
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(obs)))
    assert float(probs.min()) > 0


def test_the_cli_exports_the_trained_policy_with_exact_propensities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arrays = mdp.save_logged(tmp_path / "episodes.npz", 300, seed=0)
    out = tmp_path / "model"
    code = cli.main(["train", "--algorithm", "constrained-cql", "--trajectory-arrays", arrays, "--out", str(out),
                     "--version", "safe-1", "--gamma", str(mdp.GAMMA), "--cost", "overheat", "--cost-budget",
                     str(BUDGET), "--steps", "300", "--batch-size", "128", "--temperature", str(TEMPERATURE)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(stdout)
    assert result["algorithm"] == "constrained-cql" and result["steps"] == 300 and result["workers"] == 1
    assert result["budgets"] == {"overheat": BUDGET} and result["lambdas"]["overheat"] >= 0
    assert result["ope"]["estimator"] == "wpdis" and np.isfinite(result["ope"]["estimate"])

    manifest = artifact.read_manifest(str(out))
    assert manifest.output == "q_values" and manifest.action.n == mdp.N_ACTIONS
    assert manifest.exploration.kind == "softmax" and manifest.exploration.temperature == TEMPERATURE
    obs = mdp.logged_episodes(5, seed=1).observations.reshape(-1, 2)
    served, _ = ope_evaluate.policy_probabilities(str(out), obs)
    with torch.no_grad():
        values = artifact.load_artifact(str(out)).module(torch.from_numpy(obs))
    expected = constrained.policy_probabilities(values, manifest.exploration).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-6)
    assert np.allclose(served.sum(axis=1), 1.0) and served.min() > 0
    assert json.loads((out / "training.json").read_text())["budgets"] == {"overheat": BUDGET}


def test_training_errors_say_what_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arrays = mdp.save_logged(tmp_path / "episodes.npz", 20, seed=0)
    base = ["train", "--algorithm", "constrained-cql", "--trajectory-arrays", arrays, "--out", str(tmp_path / "m"),
            "--version", "x", "--steps", "2"]
    assert cli.main([*base, "--cost", "overheat"]) == 2
    assert "one --cost-budget per --cost" in capsys.readouterr().err
    assert cli.main([*base, "--cost", "latency", "--cost-budget", "1"]) == 2
    assert "cost 'latency' is not in the trajectories" in capsys.readouterr().err
    assert cli.main([*base[:3], "--trajectory-arrays", str(tmp_path / "missing.npz"), *base[5:]]) == 2
    assert "cannot read trajectory arrays" in capsys.readouterr().err
    assert cli.main(["train", "--trajectory-arrays", arrays, "--out", str(tmp_path / "m"), "--version", "x"]) == 2
    assert "use --algorithm constrained-cql" in capsys.readouterr().err


def test_many_episodes_estimate_the_cost_on_a_sample_of_first_states(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constrained, "INITIAL_STATES_PER_DUAL_STEP", 8)
    data = mdp.logged_episodes(40, seed=2)
    result = constrained.train(data, constrained.Config(costs=("overheat",), budgets=(-1.0,), gamma=mdp.GAMMA,
                                                        steps=5, batch_size=16, lambda_lr=1.0))
    assert result.steps == 5 and result.lambdas["overheat"] > 0  # an unreachable budget: lambda only rises
    assert np.isfinite(result.estimates["cost/overheat"])
