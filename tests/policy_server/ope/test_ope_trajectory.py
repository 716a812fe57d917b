"""Trajectory estimators (policy_server/ope/trajectory.py) against the scope-rl definitions and exact values.

Definitions (scope-rl: ``PerDecisionImportanceSampling``, ``SelfNormalizedPDIS``, ``DoublyRobust``,
``FittedQEvaluation``), with w_{0:t} = prod_{k<=t} pi_e(a_k|s_k) / pi_b(a_k|s_k) and w_{0:-1} = 1:

    PDIS  = 1/n sum_i sum_t gamma^t w^i_{0:t} r^i_t
    WPDIS = sum_t gamma^t (sum_i w^i_{0:t} r^i_t) / (sum_i w^i_{0:t})
    DR    = 1/n sum_i sum_t gamma^t [w^i_{0:t} (r^i_t - Q(s^i_t, a^i_t)) + w^i_{0:t-1} sum_a pi_e(a|s^i_t) Q(s^i_t, a)]
    FQE   = 1/n sum_i sum_a pi_e(a|s^i_0) Q_0(s^i_0, a),  Q_t fitted to r_t + gamma (1 - done_t) V_{t+1}(s_{t+1})

Specified: exact equality on a hand-computed log of two trajectories; on a 2-state, 2-action MDP of
horizon 4 whose value is computed exactly by dynamic programming, PDIS and DR are unbiased (the mean
over 200 seeded datasets lies within 4 standard errors of the exact value), WPDIS and FQE are consistent
(within 0.05 of it on 20,000 trajectories), and the 90 % bootstrap intervals by trajectory cover the exact
value in at least 80 % of 60 datasets (nominal 90 %, slack 10 points for the bootstrap's
approximation and the simulation's own noise, ~4 % standard error).
"""

from __future__ import annotations

import numpy as np
import pytest

from policy_server.ope import trajectory as tr
from tests.support.tiny_mdp import GAMMA, PI_B, PI_T, exact_value, simulate

A, B = [1.0, 0.0], [0.0, 1.0]  # one-hot states
PI_E = {0: [0.8, 0.2], 1: [0.5, 0.5]}  # evaluation policy by state


def _hand_log() -> tr.Inputs:
    """Trajectory 1: A, a=0 (pi_b 0.5), r=1; B, a=1 (pi_b 0.25), r=2. Trajectory 2: B, a=0 (pi_b 0.75), r=4."""
    return tr.Inputs(
        observations=np.array([[A, B], [B, B]]),
        actions=np.array([[0, 1], [0, 0]]),
        propensities=np.array([[0.5, 0.25], [0.75, 1.0]]),
        target=np.array([[PI_E[0], PI_E[1]], [PI_E[1], PI_E[1]]]),
        done=np.array([[False, True], [True, False]]),
        mask=np.array([[True, True], [True, False]]),
    )


REWARDS = np.array([[1.0, 2.0], [4.0, 0.0]])


def test_pdis_and_wpdis_equal_their_formulas_on_a_hand_computed_log() -> None:
    x = _hand_log()
    w1, w2 = 0.8 / 0.5, 0.5 / 0.75  # step-0 weights; trajectory 1's step-1 weight is w1 * 0.5 / 0.25
    assert tr.pdis(x, REWARDS, GAMMA).tolist() == pytest.approx([w1 * 1 + GAMMA * w1 * 2 * 2, w2 * 4])
    step0 = (w1 * 1 + w2 * 4) / (w1 + w2)
    assert tr.wpdis(x, REWARDS, GAMMA) == pytest.approx(step0 + GAMMA * 2.0)
    assert tr.trajectory_weights(x).tolist() == pytest.approx([w1 * 2, w2])


def test_dr_equals_its_formula_with_a_given_q() -> None:
    x = _hand_log()
    q = np.array([[[0.5, 1.0], [0.0, 1.5]], [[3.0, 2.0], [0.0, 0.0]]])
    w1, w2 = 1.6, 2 / 3
    t1 = w1 * (1 - 0.5) + (0.8 * 0.5 + 0.2 * 1.0) + GAMMA * (2 * w1 * (2 - 1.5) + w1 * (0.5 * 0.0 + 0.5 * 1.5))
    t2 = w2 * (4 - 3.0) + (0.5 * 3.0 + 0.5 * 2.0)
    assert tr.dr(x, REWARDS, GAMMA, q=q).tolist() == pytest.approx([t1, t2])


def test_fqe_on_tabular_states_is_the_backward_recursion() -> None:
    """Q_1(B, 1) = 2 (the only step at position 1; the untaken action gets the position's mean target, 2);
    Q_0(A, 0) = 1 + 0.9 * V_1(B) = 2.8, Q_0(B, 0) = 4 (done), Q_0(., 1) = mean target 3.4."""
    x = _hand_log()
    v1_b = 0.5 * 2.0 + 0.5 * 2.0
    q0_a0, q0_b0, q0_1 = 1 + GAMMA * v1_b, 4.0, (1 + GAMMA * v1_b + 4.0) / 2
    expected = [0.8 * q0_a0 + 0.2 * q0_1, 0.5 * q0_b0 + 0.5 * q0_1]
    assert tr.fqe(x, REWARDS, GAMMA).tolist() == pytest.approx(expected, abs=1e-5)


def test_pdis_and_dr_are_unbiased_on_the_tiny_mdp() -> None:
    truth = exact_value(PI_T)
    runs = {"pdis": [], "dr": []}
    for seed in range(200):
        x, r = simulate(40, seed)
        runs["pdis"].append(tr.pdis(x, r, GAMMA).mean())
        runs["dr"].append(tr.dr(x, r, GAMMA, seed=seed).mean())
    for name, values in runs.items():
        values = np.array(values)
        se = values.std(ddof=1) / np.sqrt(values.size)
        assert abs(values.mean() - truth) < 4 * se, (name, values.mean(), truth, se)
    assert np.std(runs["dr"]) < np.std(runs["pdis"])  # the value model reduces the variance


def test_wpdis_and_fqe_are_consistent_on_the_tiny_mdp() -> None:
    truth = exact_value(PI_T)
    assert truth != pytest.approx(exact_value(PI_B), abs=0.2)  # the policies differ: the test can tell them apart
    x, r = simulate(20_000, seed=1)
    assert tr.wpdis(x, r, GAMMA) == pytest.approx(truth, abs=0.05)
    assert tr.fqe(x, r, GAMMA).mean() == pytest.approx(truth, abs=0.05)


@pytest.mark.parametrize("name", tr.ESTIMATORS)
def test_bootstrap_intervals_by_trajectory_cover_the_exact_value(name: str) -> None:
    truth = exact_value(PI_T)
    covered = []
    for seed in range(60):
        x, r = simulate(150, 1000 + seed)
        e = tr.estimate(name, x, r, GAMMA, confidence_level=0.9, n_resamples=60, seed=seed)
        assert e.lower_bound >= e.ci_low and e.upper_bound <= e.ci_high
        covered.append(e.ci_low <= truth <= e.ci_high)
    assert np.mean(covered) >= 0.8, (name, np.mean(covered))


def test_the_hcope_bound_holds_at_its_level_and_is_looser_than_the_bootstrap() -> None:
    """Thomas et al. (2015)'s bound, given the rewards' range [-0.5, 3.5], is below the exact value in at least
    90 % of 40 datasets at 90 % confidence (it is a guarantee, not an approximation), above the least possible
    return (it says something), and below the bootstrap's lower bound on the same data (it is the loose one)."""
    truth = exact_value(PI_T)
    g_min = -0.5 * sum(GAMMA**t for t in range(4))
    held, looser, informative = [], [], []
    for seed in range(40):
        x, r = simulate(300, 2000 + seed)
        bound = tr.hcope_lower_bound(x, r, GAMMA, (-0.5, 3.5), confidence_level=0.9, seed=seed)
        bootstrap = tr.estimate("pdis", x, r, GAMMA, confidence_level=0.9, n_resamples=100, seed=seed)
        held.append(bound <= truth)
        looser.append(bound <= bootstrap.lower_bound)
        informative.append(bound > g_min)
    assert np.mean(held) >= 0.9 and all(looser) and all(informative)
