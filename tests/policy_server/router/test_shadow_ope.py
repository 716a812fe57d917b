"""The shadow candidate's off-policy estimate: SNIPS over the stable's live decisions, joined to rewards."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from policy_server.router.shadow_ope import MIN_REWARDS, ShadowEstimator


def _feed(estimator: ShadowEstimator, rows: list[tuple[int, float, int, float, float]]) -> None:
    """rows: (served action, its propensity, candidate's action, reward, margin cost)."""
    for i, (served, propensity, candidate, reward, cost) in enumerate(rows):
        estimator.decided(f"r{i}", served, propensity, candidate)
        assert estimator.rewarded(f"r{i}", reward, {"margin": cost})


def test_the_estimate_is_snips_with_the_delta_method_interval() -> None:
    rng = random.Random(1)
    rows = [(rng.randrange(3), rng.choice([0.2, 0.5, 0.8]), rng.randrange(3), rng.random(), float(rng.random() < 0.3))
            for _ in range(500)]
    estimator = ShadowEstimator(confidence=0.95)
    _feed(estimator, rows)
    w = np.array([(s == c) / p for s, p, c, _, _ in rows])
    r = np.array([row[3] for row in rows])
    point = float((w * r).sum() / w.sum())
    half = 1.959963984540054 * math.sqrt(float((w**2 * (r - point) ** 2).sum())) / float(w.sum())
    reward = estimator.estimates()["reward"]
    assert reward is not None
    assert reward.point == pytest.approx(point)
    assert (reward.lower, reward.upper) == pytest.approx((point - half, point + half))
    assert reward.baseline == pytest.approx(r.mean())
    assert reward.effective_sample_size == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert estimator.estimates()["cost:margin"] is not None


def test_the_interval_covers_the_candidates_true_value() -> None:
    """Simulated logs with a known answer: the candidate always plays 2, whose mean reward is 0.7."""
    means = [0.2, 0.4, 0.7]
    logging = [0.5, 0.3, 0.2]
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(300):
        estimator = ShadowEstimator(confidence=0.95)
        actions = rng.choice(3, size=400, p=logging)
        rewards = rng.random(400) < np.array(means)[actions]
        _feed(estimator, [(int(a), logging[a], 2, float(r), 0.0) for a, r in zip(actions, rewards, strict=True)])
        estimate = estimator.estimates()["reward"]
        assert estimate is not None
        covered += estimate.lower <= means[2] <= estimate.upper
    assert covered / 300 >= 0.92


def test_no_estimate_without_enough_rewards_or_any_agreement() -> None:
    estimator = ShadowEstimator()
    _feed(estimator, [(0, 0.5, 0, 1.0, 0.0)] * (MIN_REWARDS - 1))
    assert estimator.estimates()["reward"] is None
    disagreeing = ShadowEstimator()
    _feed(disagreeing, [(0, 0.5, 1, 1.0, 0.0)] * (2 * MIN_REWARDS))
    assert disagreeing.estimates()["reward"] is None, "a candidate that never agrees cannot be estimated"


def test_unknown_ids_continuous_actions_and_bad_numbers_are_ignored() -> None:
    estimator = ShadowEstimator()
    assert not estimator.rewarded("never-seen", 1.0, None)
    estimator.decided("c", [0.1, 0.2], 0.5, [0.1, 0.2])  # continuous: no importance weight exists
    assert not estimator.rewarded("c", 1.0, None)
    estimator.decided("p", 1, 0.0, 1)  # a zero propensity cannot be divided by
    assert not estimator.rewarded("p", 1.0, None)
    estimator.decided("n", 1, 0.5, 1)
    assert not estimator.rewarded("n", float("inf"), None)
    assert estimator.joined("reward") == 0


def test_a_new_window_forgets_the_old_one() -> None:
    estimator = ShadowEstimator()
    _feed(estimator, [(1, 0.5, 1, 1.0, 0.0)] * MIN_REWARDS)
    assert estimator.joined("reward") == MIN_REWARDS
    estimator.reset()
    assert estimator.estimates() == {} and estimator.joined("reward") == 0


def test_pending_decisions_are_bounded() -> None:
    estimator = ShadowEstimator(capacity=10)
    for i in range(25):
        estimator.decided(f"r{i}", 1, 0.5, 1)
    assert not estimator.rewarded("r0", 1.0, None)
    assert estimator.rewarded("r24", 1.0, None)


def test_no_violation_among_the_agreeing_requests_still_leaves_a_wilson_wide_upper_bound() -> None:
    """The delta method alone would claim an upper bound of exactly 0 here."""
    estimator = ShadowEstimator(confidence=0.95)
    agreeing = [(1, 0.5, 1, 1.0, 0.0)] * 100  # the candidate's choice never violated the margin...
    others = [(0, 0.5, 1, 1.0, 1.0)] * 20  # ...the stable's other choice did: costs range over [0, 1]
    _feed(estimator, agreeing + others)
    cost = estimator.estimates()["cost:margin"]
    assert cost is not None and cost.point == 0.0
    z2 = 1.959963984540054**2
    assert cost.upper == pytest.approx(z2 / (cost.effective_sample_size + z2))
    assert 0.03 < cost.upper < 0.04
