"""The trajectory gate (policy_server/ope/trajectory_gate.py) on the tiny MDP of tests/support/tiny_mdp.py.

Specified: a candidate better than the logger passes and a worse one fails, by every estimator's lower
bound; PDIS also reports the (looser) HCOPE bound; the gate refuses, naming the reason in one line, on
unsupported actions, on too few effective trajectories and on estimators that disagree beyond the
(relative) tolerance; a cost budget fails a candidate whose upper bound of the discounted cost is above
it and passes one below it; a cost the log never reported refuses.
"""

from __future__ import annotations

import numpy as np
import pytest

from policy_server.ope import constraints, trajectory_gate
from tests.support import tiny_mdp

WORSE = np.array([[0.9, 0.1], [0.1, 0.9]])


def _gate(candidate: np.ndarray, n: int = 3000, seed: int = 0, behaviour: np.ndarray = tiny_mdp.PI_B,
          budgets: tuple[str, ...] = (), **knobs: object) -> dict:
    x, r = tiny_mdp.simulate(n, seed, behaviour=behaviour, target=candidate)
    traj = tiny_mdp.as_trajectories(x, r, behaviour=behaviour)
    settings = trajectory_gate.GateSettings(gamma=tiny_mdp.GAMMA, n_resamples=60, **knobs)  # type: ignore[arg-type]
    return trajectory_gate.evaluate_trajectories(traj, x.target, settings,
                                                 constraints=[constraints.parse_constraint(b) for b in budgets])


def test_a_better_candidate_passes_by_every_estimator() -> None:
    assert tiny_mdp.exact_value(tiny_mdp.PI_T) > tiny_mdp.exact_value(tiny_mdp.PI_B) + 0.3
    result = _gate(tiny_mdp.PI_T)
    assert result["verdict"] == "pass", result["reason"]
    assert [e["estimator"] for e in result["estimates"]] == ["pdis", "wpdis", "dr", "fqe"]
    truth = tiny_mdp.exact_value(tiny_mdp.PI_T)
    for e in result["estimates"]:
        assert e["verdict"] == "pass" and e["lowerBound"] >= e["baselineValue"] == result["loggedValue"]
        assert e["ciLow"] <= e["lowerBound"] and e["value"] == pytest.approx(truth, abs=0.2)
    assert result["mode"] == "trajectories" and result["n"] == 3000 and result["steps"] == 3000 * tiny_mdp.H
    assert result["ess"] > 30 and result["unsupportedMass"] == 0.0
    pdis = result["estimates"][0]
    assert pdis["hcopeLowerBound"] < pdis["lowerBound"]  # Thomas et al.'s bound, reported beside the bootstrap's


def test_a_worse_candidate_fails_on_its_lower_bound() -> None:
    assert tiny_mdp.exact_value(WORSE) < tiny_mdp.exact_value(tiny_mdp.PI_B) - 0.3
    result = _gate(WORSE, agreement_tolerance=None)
    assert result["verdict"] == "fail"
    assert "lower bound" in result["reason"] and "below the required" in result["reason"]


def test_unsupported_actions_are_refused() -> None:
    never_one_in_state_1 = np.array([[0.5, 0.5], [1.0, 0.0]])
    result = _gate(tiny_mdp.PI_T, behaviour=never_one_in_state_1)
    assert result["verdict"] == "refuse" and result["unsupportedMass"] > 0.01
    assert result["reason"].startswith("unsupported actions: the candidate puts")
    assert "\n" not in result["reason"]


def test_too_few_effective_trajectories_are_refused() -> None:
    result = _gate(tiny_mdp.PI_T, n=40, min_effective_trajectories=30)
    assert result["verdict"] == "refuse" and result["ess"] < 30
    assert result["reason"].startswith("effective number of trajectories")


def test_estimators_that_disagree_beyond_the_relative_tolerance_are_refused() -> None:
    result = _gate(tiny_mdp.PI_T, n=300, agreement_tolerance=1e-4)
    assert result["verdict"] == "refuse" and result["reason"].startswith("estimators disagree:")
    spread = result["agreement"]["spread"]
    assert spread > 1e-4 * result["agreement"]["scale"] and result["agreement"]["relativeTo"] == "max |estimate|"
    assert _gate(tiny_mdp.PI_T, n=300, agreement_tolerance=1.0)["verdict"] != "refuse"


def test_a_cost_budget_fails_a_candidate_above_it_and_passes_one_below_it() -> None:
    hot = tiny_mdp.exact_value(tiny_mdp.PI_T, reward=tiny_mdp.HOT)  # the candidate's exact discounted cost
    over = _gate(tiny_mdp.PI_T, budgets=(f"cost=hot,max={hot - 0.3}",))
    assert over["verdict"] == "fail" and over["reason"].startswith("cost:hot (")
    assert {c["verdict"] for c in over["constraints"]} == {"fail"}
    within = _gate(tiny_mdp.PI_T, budgets=(f"cost=hot,max={hot + 0.3}",))
    assert within["verdict"] == "pass", within["reason"]
    for c in within["constraints"]:
        assert c["value"] == pytest.approx(hot, abs=0.15) and c["upperBound"] <= c["budget"]


def test_a_cost_the_log_never_reported_is_refused() -> None:
    result = _gate(tiny_mdp.PI_T, budgets=("cost=latency,max=1",))
    assert result["verdict"] == "refuse" and "cost 'latency' was never reported" in result["reason"]
