"""Bootstrap intervals and high-confidence lower bounds: coverage on known truths, formulas, error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policy_server.ope import OPEInputError, bandit, confidence
from tests.support import ope_data


@pytest.mark.parametrize(("method", "n"), [("exact", 2_000), ("shift", 30_000)])
def test_bootstrap_ci_covers_the_true_mean(method, n):
    """50 seeded repetitions of a 95 % interval for the mean of skewed data: most contain the truth."""
    hits = 0
    for rep in range(50):
        rng = np.random.default_rng(1000 + rep)
        x = rng.exponential(scale=2.0, size=n)  # true mean 2
        ci = confidence.bootstrap_ci(x, n_resamples=400, alpha=0.05, rng=rng, method=method)
        assert ci.method == method
        assert ci.lower < ci.estimate < ci.upper
        hits += ci.lower <= 2.0 <= ci.upper
    assert hits >= 43  # nominal 47.5; 43 is ~3 binomial standard deviations below


def test_bootstrap_ci_of_ips_covers_the_policy_value():
    hits = 0
    for rep in range(30):
        log, x = ope_data.uniform_logged(25_000, 5, seed=200 + rep)
        target = ope_data.softmax(2.0 * x[:, 1:2] * np.arange(5)[None, :])
        rounds = bandit.ips_rounds(log.reward, log.action, log.pscore, target)
        ci = confidence.bootstrap_ci(rounds, n_resamples=300, rng=rep)
        hits += ci.lower <= log.true_value(target) <= ci.upper
    assert hits >= 25  # nominal 28.5


@pytest.mark.parametrize("method", ["exact", "shift"])
def test_bootstrap_spread_matches_the_standard_error_even_on_ordered_data(method):
    """Sorted data are maximally autocorrelated; the shift method's permutation must still give independent-looking
    replicates whose spread is the standard error s / sqrt(n)."""
    rng = np.random.default_rng(3)
    x = np.sort(rng.normal(size=40_000))
    reps = confidence.bootstrap_estimates(x, n_resamples=1000, rng=4, method=method)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert reps.std(ddof=1) == pytest.approx(se, rel=0.1)
    assert reps.mean() == pytest.approx(x.mean(), abs=4 * se / math.sqrt(1000) + 1e-12)


def test_ratio_bootstrap_for_self_normalised_estimators():
    log, x = ope_data.uniform_logged(4_000, 4, seed=9)
    target = ope_data.softmax(x @ np.random.default_rng(0).normal(size=(3, 4)))
    reward = log.reward + 5.0  # an offset SNIPS is immune to, but a fixed-denominator bootstrap is not
    w = bandit.importance_weights(log.action, log.pscore, target)
    snips = bandit.snips(reward, log.action, log.pscore, target)
    # numerator and denominator are resampled together: the spread is the ratio's delta-method standard error,
    # not that of w * r over a fixed denominator
    delta_se = math.sqrt(np.sum((w * (reward - snips)) ** 2)) / w.sum()
    fixed_se = math.sqrt(np.sum((w * reward - (w * reward).mean()) ** 2)) / w.sum()
    assert fixed_se > 2 * delta_se
    for method in ("exact", "shift"):
        ci = confidence.bootstrap_ci(w * reward, n_resamples=500, rng=1, denominator=w, method=method)
        assert ci.estimate == pytest.approx(snips, abs=1e-12)
        assert ci.std == pytest.approx(delta_se, rel=0.1)

    # the loop form over any estimator function gives a comparable interval
    def estimator(idx):
        return bandit.snips(reward[idx], log.action[idx], log.pscore[idx], target[idx])

    looped = confidence.bootstrap_ci(estimator, n_resamples=300, rng=2, n=log.n)
    assert looped.method == "loop"
    assert looped.estimate == pytest.approx(snips, abs=1e-12)
    assert looped.std == pytest.approx(ci.std, rel=0.25)


def test_student_t_lower_bound_has_the_stated_error_rate():
    """For normal data the one-sided t bound exceeds the true mean in about delta of the repetitions."""
    rng = np.random.default_rng(11)
    misses = sum(confidence.student_t_lower_bound(rng.normal(1.0, 2.0, size=30), 0.1) > 1.0 for _ in range(400))
    assert 20 <= misses <= 60  # expected 40


def test_bernstein_bound_formula_and_validity():
    rng = np.random.default_rng(12)
    x = rng.uniform(0.0, 4.0, size=500)
    delta = 0.05
    log_term = math.log(2 / delta)
    expected = x.mean() - math.sqrt(2 * x.var(ddof=1) * log_term / x.size) - 7 * 4.0 * log_term / (3 * (x.size - 1))
    assert confidence.bernstein_lower_bound(x, delta, (0.0, 4.0)) == pytest.approx(expected, rel=1e-12)
    # it is valid (never above the truth here) and looser than Student-t
    misses = 0
    for _ in range(200):
        sample = rng.uniform(0.0, 4.0, size=200)
        lb = confidence.bernstein_lower_bound(sample, delta, (0.0, 4.0))
        misses += lb > 2.0
        assert lb < confidence.student_t_lower_bound(sample, delta)
    assert misses <= 10


def test_bernstein_needs_a_range_that_contains_the_data():
    x = np.array([0.5, 1.5, 3.0])
    with pytest.raises(OPEInputError, match="value_range"):
        confidence.lower_bound(x, 0.05, "bernstein")
    with pytest.raises(OPEInputError, match="outside value_range"):
        confidence.bernstein_lower_bound(x, 0.05, (0.0, 2.0))


def test_bootstrap_lower_bound_is_below_the_mean():
    x = np.random.default_rng(1).normal(size=5_000)
    lb = confidence.lower_bound(x, 0.05, "bootstrap", rng=3)
    assert x.mean() - 2.5 * x.std() / math.sqrt(x.size) < lb < x.mean()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: confidence.bootstrap_ci(np.ones(5), alpha=1.5), "alpha"),
        (lambda: confidence.bootstrap_ci(np.ones(5), method="magic"), "unknown bootstrap method"),
        (lambda: confidence.bootstrap_ci(np.ones(5), method="shift"), "exact"),
        (lambda: confidence.bootstrap_ci(np.array([1.0, np.inf])), "NaN or infinity"),
        (lambda: confidence.bootstrap_ci(lambda idx: 0.0), "pass `n`"),
        (lambda: confidence.lower_bound(np.ones(5), 0.05, "hoeffding"), "unknown bound"),
        (lambda: confidence.student_t_lower_bound(np.ones(1), 0.05), "at least 2"),
        (lambda: confidence.student_t_lower_bound(np.ones(5), 1.0), "delta"),
    ],
)
def test_bad_arguments_say_what_is_wrong(call, message):
    with pytest.raises(OPEInputError, match=message):
        call()
