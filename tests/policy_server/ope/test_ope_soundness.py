"""Issue #20, offline half: each defect the audit found, reproduced small and seeded, and the gate's answer to it.

Context-free bandits with exact truth (value = sum_a pi_e(a) mu(a)); the large versions live in bench/calibration.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from policy_server.ope import bandit, confidence, evaluate
from policy_server.ope import gate as ope_gate
from policy_server.ope.logged import LoggedData


def log(behavior: list[float], target: list[float], mu: list[float], q: list[float], n: int, rng: np.random.Generator):
    """(rewards, actions, propensities, target dist, behaviour dist, q_hat) of n logged rounds."""
    b = np.asarray(behavior)
    action = rng.choice(b.size, size=n, p=b)
    reward = (rng.random(n) < np.asarray(mu)[action]).astype(np.float64)

    def tile(v: list[float]) -> np.ndarray:
        return np.tile(np.asarray(v, dtype=np.float64), (n, 1))

    return reward, action, b[action], tile(target), tile(behavior), tile(q)


# A logger that gives 1e-10 to the action the candidate takes 94 % of the time; the reward model is optimistic there.
NEAR = ([0.5, 0.3, 0.2 - 1e-10, 1e-10], [0.02, 0.02, 0.02, 0.94], [0.6, 0.5, 0.4, 0.02], [0.6, 0.5, 0.4, 0.9])


def test_a_candidate_living_where_the_logger_almost_never_goes_passed_on_exact_zero_support_alone() -> None:
    reward, action, pscore, target, behavior, q = log(*NEAR, n=5000, rng=np.random.default_rng(1))
    rounds = bandit.dr_rounds(reward, action, pscore, target, q)
    blind = bandit.diagnostics(action, pscore, target, behavior, floor=0.0)
    truth, baseline = float(np.dot(NEAR[1], NEAR[2])), float(np.dot(NEAR[0], NEAR[2]))
    assert truth < baseline < rounds.mean()  # the estimate is the model's optimism, not data
    assert blind.unsupported_mass == 0.0 and blind.ess > 1000 and blind.mean_weight < 0.1  # Kish ESS cannot see it
    before = ope_gate.gate(rounds, baseline, diagnostics=blind, bound="student_t", weight_band=None)
    assert before.verdict == "pass"


def test_the_support_floor_refuses_it_with_the_mass_and_the_floor_in_the_reason() -> None:
    reward, action, pscore, target, behavior, q = log(*NEAR, n=5000, rng=np.random.default_rng(1))
    rounds = bandit.dr_rounds(reward, action, pscore, target, q)
    diag = bandit.diagnostics(action, pscore, target, behavior)  # default floor: 1 % of 1/K
    assert diag.unsupported_mass == pytest.approx(0.94)
    result = ope_gate.gate(rounds, 0.53, diagnostics=diag, bound="student_t")
    assert result.verdict == "refuse"
    assert "94.000%" in result.reason and f"{bandit.support_floor(4):.3g}" in result.reason
    assert "log with more exploration" in result.reason


def test_the_self_normalisation_check_alone_refuses_it_with_the_mean_weight_and_its_interval() -> None:
    reward, action, pscore, target, behavior, q = log(*NEAR, n=5000, rng=np.random.default_rng(1))
    rounds = bandit.dr_rounds(reward, action, pscore, target, q)
    blind = bandit.diagnostics(action, pscore, target, behavior, floor=0.0)
    result = ope_gate.gate(rounds, 0.53, diagnostics=blind, bound="student_t")
    assert result.verdict == "refuse"
    assert "self-normalisation check failed" in result.reason
    assert f"mean importance weight {blind.mean_weight:.4g}" in result.reason and "1 +- 0.1" in result.reason


def test_full_support_passes_the_self_normalisation_check_even_with_heavy_weights() -> None:
    """E[w] = 1 under full support; a wide interval around it (few rare, huge weights) is no evidence of trouble."""
    rng = np.random.default_rng(2)
    reward, action, pscore, target, behavior, q = log(
        [0.5, 0.25, 0.15, 0.099, 0.001], [0.2, 0.2, 0.2, 0.3, 0.1], [0.5, 0.4, 0.6, 0.5, 0.05], [0.5] * 5, 5000, rng
    )
    diag = bandit.diagnostics(action, pscore, target, behavior, floor=0.0)
    rounds = bandit.dr_rounds(reward, action, pscore, target, q)
    result = ope_gate.gate(rounds, -10.0, diagnostics=diag, bound="student_t")
    assert result.verdict == "pass", result.reason


def _heavy_dr(rng: np.random.Generator, n: int = 3000) -> np.ndarray:
    """DR terms with weight 100 on a rare action where the model is badly optimistic: skewness around -20."""
    reward, action, pscore, target, _, q = log(
        [0.5, 0.25, 0.15, 0.099, 0.001], [0.2, 0.2, 0.2, 0.3, 0.1], [0.5, 0.4, 0.6, 0.5, 0.05],
        [0.5, 0.4, 0.6, 0.5, 0.6], n, rng,
    )
    return bandit.dr_rounds(reward, action, pscore, target, q)


def test_student_t_claims_95_percent_on_heavy_weights_and_delivers_less_while_bernstein_holds() -> None:
    truth = float(np.dot([0.2, 0.2, 0.2, 0.3, 0.1], [0.5, 0.4, 0.6, 0.5, 0.05]))
    rng = np.random.default_rng(3)
    t_cover = bern_cover = 0
    runs = 400
    for _ in range(runs):
        x = _heavy_dr(rng)
        t_cover += confidence.student_t_lower_bound(x, 0.05) <= truth
        bern_cover += confidence.bernstein_lower_bound(x, 0.05, (-100.0, 101.0)) <= truth
    assert t_cover / runs < 0.93  # ~0.90: the defect, more than 3 standard errors below 0.95
    assert bern_cover / runs >= 0.95


def test_snips_intervals_from_the_ratio_cover_and_are_narrower_than_with_a_fixed_normaliser() -> None:
    behavior, target, mu = [0.4, 0.3, 0.2, 0.07, 0.03], [0.05, 0.05, 0.1, 0.4, 0.4], [0.2, 0.3, 0.5, 0.6, 0.4]
    truth = float(np.dot(target, mu))
    rng = np.random.default_rng(4)
    covered, width_ratio = {"fixed": 0, "ratio": 0}, []
    runs = 120
    for seed in range(runs):
        reward, action, pscore, dist, _, _ = log(behavior, target, mu, [0.0] * 5, 1000, rng)
        w = bandit.importance_weights(action, pscore, dist)
        fixed = confidence.bootstrap_ci(bandit.snips_rounds(reward, action, pscore, dist), 300, rng=seed)
        ratio = confidence.bootstrap_ci(w * reward, 300, rng=seed, denominator=w)
        covered["fixed"] += fixed.lower <= truth <= fixed.upper
        covered["ratio"] += ratio.lower <= truth <= ratio.upper
        width_ratio.append((fixed.upper - fixed.lower) / (ratio.upper - ratio.lower))
    assert covered["fixed"] / runs >= 0.97  # conservative: ignores the denominator's correlated noise
    assert covered["ratio"] / runs >= 0.95 - 3 * np.sqrt(0.05 * 0.95 / runs)
    assert np.median(width_ratio) > 1.15


def test_the_gate_job_reports_the_snips_interval_of_the_ratio_not_of_a_fixed_normaliser() -> None:
    behavior, target, mu = [0.4, 0.3, 0.2, 0.07, 0.03], [0.05, 0.05, 0.1, 0.4, 0.4], [0.2, 0.3, 0.5, 0.6, 0.4]
    reward, action, pscore, dist, beh, _ = log(behavior, target, mu, [0.0] * 5, 2000, np.random.default_rng(5))
    data = LoggedData(np.zeros((2000, 1), np.float32), action.astype(np.int64), pscore, reward, beh, 5)
    result = evaluate.evaluate(data, dist, baseline=None, estimators=["snips"], bound="student_t", n_resamples=300,
                               seed=7)
    w = bandit.importance_weights(action, pscore, dist)
    ratio = confidence.bootstrap_ci(w * reward, 300, 0.05, rng=7, denominator=w)
    fixed = confidence.bootstrap_ci(bandit.snips_rounds(reward, action, pscore, dist), 300, 0.05, rng=7)
    entry = result["estimates"][0]
    assert (entry["ciLow"], entry["ciHigh"]) == pytest.approx((ratio.lower, ratio.upper))
    assert entry["ciHigh"] - entry["ciLow"] < fixed.upper - fixed.lower
