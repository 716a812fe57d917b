"""The OPE gate: refuse on thin or missing evidence, fail below the required level, pass only when clearly good."""

from __future__ import annotations

import numpy as np
import pytest

from policy_server.ope import OPEInputError, bandit
from policy_server.ope import gate as ope_gate
from policy_server.ope.diagnostics import Diagnostics
from tests.support import ope_data

K = 5


def _uniform_log(n: int = 50_000, seed: int = 1):
    rng = np.random.default_rng(seed)
    _, expected = ope_data.make_contexts(n, K, rng)
    return ope_data.log_bandit(expected, np.full((n, K), 1.0 / K), rng)


def _judge(log, target, **kwargs):
    q_hat = np.full_like(target, log.reward.mean())  # a deliberately crude model: DR must do the work
    rounds = bandit.dr_rounds(log.reward, log.action, log.pscore, target, q_hat)
    diag = bandit.diagnostics(log.action, log.pscore, target, behavior_dist=log.behavior_dist)
    baseline = float(log.reward.mean())  # the behaviour policy's on-policy value
    return ope_gate.gate(rounds, baseline, diagnostics=diag, **kwargs)


def test_clearly_better_policy_passes():
    log = _uniform_log()
    target = ope_data.softmax(8.0 * log.expected_reward)  # prefers the high-reward actions
    assert log.true_value(target) > log.reward.mean() + 0.05
    result = _judge(log, target)
    assert result.verdict == "pass", result.reason
    assert result.lower_bound is not None and result.lower_bound > result.required
    assert result.estimate == pytest.approx(log.true_value(target), abs=0.02)


def test_clearly_better_policy_passes_with_the_bernstein_bound_on_clipped_ips():
    log = _uniform_log()
    target = ope_data.softmax(8.0 * log.expected_reward)
    rounds = bandit.ips_rounds(log.reward, log.action, log.pscore, target, clip=float(K))
    diag = bandit.diagnostics(log.action, log.pscore, target, behavior_dist=log.behavior_dist)
    result = ope_gate.gate(
        rounds, float(log.reward.mean()), diagnostics=diag, bound="bernstein", value_range=(0.0, float(K))
    )
    assert result.verdict == "pass", result.reason


def test_clearly_worse_policy_fails():
    log = _uniform_log(seed=2)
    target = ope_data.softmax(-8.0 * log.expected_reward)  # prefers the low-reward actions
    result = _judge(log, target)
    assert result.verdict == "fail", result.reason
    assert result.lower_bound < result.required
    assert "below the required" in result.reason


def test_tolerated_regression_passes_with_a_ratio_and_fails_with_a_strict_delta():
    log = _uniform_log(seed=3)
    target = ope_data.softmax(np.zeros((log.n, K)))  # the behaviour policy itself: value equals the baseline
    assert _judge(log, target, min_lower_bound_ratio=0.9).verdict == "pass"
    assert _judge(log, target, delta=0.05).verdict == "fail"


def test_deficient_support_is_refused_even_when_the_estimate_looks_great():
    rng = np.random.default_rng(4)
    n = 50_000
    _, expected = ope_data.make_contexts(n, K, rng)
    behavior = np.tile([0.0, 0.25, 0.25, 0.25, 0.25], (n, 1))  # action 0 is never taken
    log = ope_data.log_bandit(expected, behavior, rng)
    target = np.tile([0.5, 0.0, 0.0, 0.0, 0.5], (n, 1))
    rounds = bandit.ips_rounds(log.reward, log.action, log.pscore, target)
    diag = bandit.diagnostics(log.action, log.pscore, target, behavior_dist=behavior)
    assert diag.unsupported_mass == pytest.approx(0.5)
    result = ope_gate.gate(rounds, baseline_value=0.0, diagnostics=diag)  # even a zero baseline is not enough
    assert result.verdict == "refuse"
    assert "deficient support" in result.reason


def test_heavy_tailed_weights_with_tiny_ess_are_refused():
    rng = np.random.default_rng(5)
    n = 2_000
    _, expected = ope_data.make_contexts(n, K, rng)
    behavior = np.tile([0.0005, 0.2499, 0.25, 0.25, 0.25], (n, 1))  # action 0 is possible but very rare
    log = ope_data.log_bandit(expected, behavior, rng)
    target = np.tile([0.9, 0.025, 0.025, 0.025, 0.025], (n, 1))
    rounds = bandit.ips_rounds(log.reward, log.action, log.pscore, target)
    diag = bandit.diagnostics(log.action, log.pscore, target, behavior_dist=behavior, floor=0.0)  # ESS alone
    assert diag.unsupported_mass == 0.0
    assert diag.ess < 100
    result = ope_gate.gate(rounds, baseline_value=0.0, diagnostics=diag, min_ess=100)
    assert result.verdict == "refuse"
    assert "effective sample size" in result.reason


def test_unknown_support_is_refused_unless_explicitly_waived():
    log = _uniform_log(seed=6)
    target = ope_data.softmax(8.0 * log.expected_reward)
    rounds = bandit.ips_rounds(log.reward, log.action, log.pscore, target)
    diag = bandit.diagnostics(log.action, log.pscore, target)  # no behavior_dist
    baseline = float(log.reward.mean())
    refused = ope_gate.gate(rounds, baseline, diagnostics=diag)
    assert refused.verdict == "refuse" and "support unknown" in refused.reason
    assert ope_gate.gate(rounds, baseline, diagnostics=diag, max_unsupported_mass=None).verdict == "pass"


def test_non_finite_contributions_are_refused():
    diag = Diagnostics(n=3, ess=3.0, ess_ratio=1.0, max_weight=1.0, mean_weight=1.0, unsupported_mass=0.0)
    result = ope_gate.gate(np.array([1.0, np.nan, 1.0]), 0.0, diagnostics=diag, min_ess=1)
    assert result.verdict == "refuse"


def test_result_serialises_with_a_plain_verdict():
    log = _uniform_log(seed=7)
    out = _judge(log, ope_data.softmax(8.0 * log.expected_reward)).as_dict()
    assert out["verdict"] == "pass"
    assert {"reason", "lower_bound", "estimate", "ess", "unsupported_mass", "required"} <= set(out)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_lower_bound_ratio": 0.9, "delta": 0.1}, "not both"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_gate_arguments(kwargs, message):
    diag = Diagnostics(n=3, ess=3.0, ess_ratio=1.0, max_weight=1.0, mean_weight=1.0, unsupported_mass=0.0)
    with pytest.raises(OPEInputError, match=message):
        ope_gate.gate(np.ones(3), 1.0, diagnostics=diag, **kwargs)


def test_ratio_needs_a_positive_baseline():
    diag = Diagnostics(n=3, ess=3.0, ess_ratio=1.0, max_weight=1.0, mean_weight=1.0, unsupported_mass=0.0)
    with pytest.raises(OPEInputError, match="delta="):
        ope_gate.gate(np.ones(3), -1.0, diagnostics=diag, min_lower_bound_ratio=0.9)
