"""Cost constraints in the offline gate: a candidate that buys reward with a cost fails on the cost's budget,
and a cost the logs cannot estimate refuses, never passes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from policy_server.ope import OPEError
from policy_server.ope import evaluate as ope_evaluate
from policy_server.ope.constraints import Constraint, parse_constraint
from policy_server.ope.logged import LoggedData

K = 3
# Action 2 pays best and costs most: the reward hacker's favourite.
REWARD = np.array([0.3, 0.6, 0.8])
COST = np.array([0.02, 0.05, 0.6])


def _log(n: int = 3000, behaviour: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3), seed: int = 0,
         costs: bool = True) -> LoggedData:
    rng = np.random.default_rng(seed)
    dist = np.tile(np.array(behaviour), (n, 1))
    actions = rng.choice(K, size=n, p=np.array(behaviour))
    rewards = (rng.random(n) < REWARD[actions]).astype(np.float64)
    margin = (rng.random(n) < COST[actions]).astype(np.float64)
    return LoggedData(
        observations=rng.standard_normal((n, 2)).astype(np.float32), actions=actions.astype(np.int64),
        propensities=dist[np.arange(n), actions], rewards=rewards, behavior_dist=dist, n_actions=K,
        costs={"margin_violation": margin} if costs else {},
    )


def _policy(n: int, favourite: int, epsilon: float = 0.1) -> np.ndarray:
    probs = np.full((n, K), epsilon / K)
    probs[:, favourite] += 1.0 - epsilon
    return probs


def _gate(data: LoggedData, favourite: int, constraints: list[Constraint], **extra: Any) -> dict[str, Any]:
    n = data.actions.shape[0]
    return ope_evaluate.evaluate(data, _policy(n, favourite), baseline=np.full((n, K), 1 / K),
                                 estimators=("snips", "dr"), bound="student_t", constraints=constraints,
                                 min_lower_bound_ratio=0.9, **extra)


def test_a_candidate_over_its_cost_budget_fails_with_the_numbers() -> None:
    data = _log()
    assert _gate(data, 2, [])["verdict"] == "pass", "on reward alone the hacker passes: the defect"
    result = _gate(data, 2, [Constraint("margin_violation", max=0.1)])
    assert result["verdict"] == "fail"
    assert result["reason"].startswith("cost:margin_violation (")
    assert "above its budget 0.1" in result["reason"]
    [snips, dr] = result["constraints"]
    true_cost = float((_policy(1, 2)[0] * COST).sum())
    for entry in (snips, dr):
        assert entry["verdict"] == "fail" and entry["budget"] == pytest.approx(0.1)
        assert entry["upperBound"] > 0.1 and entry["value"] == pytest.approx(true_cost, abs=0.05)


def test_an_honest_candidate_passes_its_budget() -> None:
    result = _gate(_log(), 1, [Constraint("margin_violation", max=0.2)])
    assert result["verdict"] == "pass", result["reason"]
    assert all(c["verdict"] == "pass" and c["upperBound"] <= 0.2 for c in result["constraints"])


def test_max_increase_is_relative_to_the_baseline_on_the_same_logs() -> None:
    data = _log()
    uniform_cost = float(COST.mean())
    tight = _gate(data, 1, [Constraint("margin_violation", max_increase=-0.2)])  # must cut the cost by 0.2
    loose = _gate(data, 1, [Constraint("margin_violation", max_increase=0.0)])
    assert loose["verdict"] == "pass" and tight["verdict"] == "fail"
    for entry in loose["constraints"]:
        assert entry["baselineValue"] == pytest.approx(uniform_cost, abs=0.03)
        assert entry["budget"] == pytest.approx(entry["baselineValue"])


def test_a_cost_never_logged_refuses() -> None:
    result = _gate(_log(costs=False), 1, [Constraint("margin_violation", max=0.2)])
    assert result["verdict"] == "refuse"
    assert "never reported with a reward" in result["reason"]


def test_a_cost_missing_from_some_decisions_refuses() -> None:
    data = _log()
    data.costs["margin_violation"][:10] = np.nan
    result = _gate(data, 1, [Constraint("margin_violation", max=0.2)])
    assert result["verdict"] == "refuse" and "missing from 10 of 3000" in result["reason"]


def test_thin_support_refuses_every_criterion() -> None:
    data = _log(behaviour=(0.4998, 0.4998, 0.0004))  # the logger almost never prices under the floor
    result = _gate(data, 2, [Constraint("margin_violation", max=0.9)])
    assert result["verdict"] == "refuse"
    assert all(c["verdict"] == "refuse" for c in result["constraints"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cost=margin,max=0.05", Constraint("margin", max=0.05)),
        ("cost=margin,maxIncrease=0.01,estimators=dr,confidence=0.9",
         Constraint("margin", max_increase=0.01, estimators=("dr",), confidence=0.9)),
    ],
)
def test_constraints_parse_from_the_command_line(text: str, expected: Constraint) -> None:
    assert parse_constraint(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cost=margin", "exactly one of max= and maxIncrease="),
        ("cost=margin,max=0.1,maxIncrease=0.1", "exactly one"),
        ("max=0.1", "needs the cost's name"),
        ("cost=margin,max=lots", "max must be a number"),
        ("cost=margin,budget=1", "unknown key(s) budget"),
        ("cost=margin,max=inf", "finite"),
    ],
)
def test_bad_constraints_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(OPEError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_constraint(text)
