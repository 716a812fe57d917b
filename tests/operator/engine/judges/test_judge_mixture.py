"""The normal-mixture confidence sequence: its error over many looks stays within alpha."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rollout_operator.engine.judges import mixture

from tests.support import requirements


def test_radius_shrinks_with_information_and_grows_with_confidence() -> None:
    radii = [mixture.radius(1.0, w, tau=0.1, alpha=0.05) for w in (10, 100, 1000, 10000)]
    assert radii == sorted(radii, reverse=True)
    assert mixture.radius(1.0, 100, 0.1, 0.01) > mixture.radius(1.0, 100, 0.1, 0.05)
    assert mixture.radius(1.0, 0, 0.1, 0.05) == math.inf


def test_known_variance_sequence_covers_zero_at_every_look_with_probability_1_minus_alpha() -> None:
    """2,000 null sequences of 200 looks: the share that ever excludes 0 is at most alpha (plus MC noise)."""
    rng = np.random.default_rng(7)
    runs, looks, per_look, alpha, tau = 2000, 200, 50.0, 0.05, 0.05
    means = rng.normal(0.0, 1.0 / math.sqrt(per_look), size=(runs, looks))
    info = per_look * np.arange(1, looks + 1)
    estimate = np.cumsum(means * per_look, axis=1) / info
    radius = np.array([mixture.radius(1.0, w, tau, alpha) for w in info])
    ever = (np.abs(estimate) > radius).any(axis=1).mean()
    assert ever <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
    # and it is not vacuous: a true difference of 0.1 sd is found within the 200 looks
    shifted = estimate + 0.1
    assert (np.abs(shifted) > radius).any(axis=1).mean() > 0.9


@pytest.mark.parametrize("dof", [1, 2, 5, 20, 100])
def test_chi2_quantile_matches_scipy_and_errs_low_in_the_lower_tail(dof: int) -> None:
    stats = requirements.module("scipy.stats", "install the dev extra: pip install -e '.[dev]' (scipy is in server)")
    for q in (0.0125, 0.025, 0.5, 0.975):
        exact = stats.chi2.ppf(q, dof)
        assert mixture.chi2_quantile(q, dof) == pytest.approx(exact, rel=1e-9 if dof <= 2 else 0.08)
        if q < 0.5:
            assert mixture.chi2_quantile(q, dof) <= exact * (1 + 1e-9)


def test_variance_upper_bound_is_wide_with_few_intervals() -> None:
    assert mixture.variance_upper_bound(10.0, 1, 0.05) == math.inf
    # sum of squared deviations = dof x sigma^2 with sigma^2 = 1: the bound is above 1, by less as dof grows
    few, many = mixture.variance_upper_bound(2.0, 3, 0.05), mixture.variance_upper_bound(49.0, 50, 0.05)
    assert few > 10 and 1.0 < many < 1.5


def test_t_mixture_never_rejects_a_true_null_more_often_than_alpha_whatever_sigma() -> None:
    """500 null sequences of 100 intervals with sigma unknown to the test (3.0 here)."""
    rng = np.random.default_rng(11)
    runs, looks, w, alpha, rho = 500, 100, 180.0, 0.05, 2.0
    rejected = 0
    for _ in range(runs):
        d = rng.normal(0.0, 3.0 / math.sqrt(w), looks)
        D = np.cumsum(w * d)
        Q = np.cumsum(w * d * d)
        W = w * np.arange(1, looks + 1)
        if any(mixture.t_log_ratio(D[k], Q[k], W[k], k + 1, rho) >= math.log(1 / alpha) for k in range(1, looks)):
            rejected += 1
    assert rejected / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def test_t_bounds_invert_the_test_and_contain_the_estimate() -> None:
    rng = np.random.default_rng(5)
    d = rng.normal(-0.1, 0.2, 30)
    D, Q, W = float(d.sum()), float((d * d).sum()), 30.0
    lower, upper = mixture.t_bounds(D, Q, W, 30, 1.0, 0.05)
    assert lower < D / W < upper
    threshold = math.log(1 / 0.05)
    assert mixture.t_log_ratio(D, Q, W, 30, 1.0, lower) == pytest.approx(threshold, abs=1e-6)
    assert mixture.t_log_ratio(D, Q, W, 30, 1.0, upper) == pytest.approx(threshold, abs=1e-6)
    assert mixture.t_log_ratio(D, Q, W, 30, 1.0, D / W) < threshold
