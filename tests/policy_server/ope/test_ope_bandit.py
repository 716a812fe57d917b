"""Bandit estimators: agreement with obp's formulas, unbiasedness on known truth, diagnostics, input errors.

The reference implementations below transcribe obp 0.5.x's `_estimate_round_rewards` formulas into plain loops
(one round at a time, no numpy vector tricks) so that a vectorisation slip in the library shows up as a mismatch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from policy_server.ope import OPEInputError, bandit
from tests.support import ope_data


def _fixture(seed: int = 7, n: int = 300, k: int = 5):
    rng = np.random.default_rng(seed)
    _, expected = ope_data.make_contexts(n, k, rng)
    behavior = ope_data.softmax(rng.normal(size=(n, k)))
    log = ope_data.log_bandit(expected, behavior, rng)
    target = ope_data.softmax(2.0 * rng.normal(size=(n, k)))
    q_hat = np.clip(expected + rng.normal(scale=0.2, size=(n, k)), 0, 1)
    return log, target, q_hat


# --- loop-based references of obp's formulas ---------------------------------------------------------------------


def ref_weight(log, target, i):
    return target[i][log.action[i]] / log.pscore[i]


def ref_dm_round(target, q_hat, i):
    num = sum(q_hat[i][a] * target[i][a] for a in range(len(target[i])))
    return num / sum(target[i])  # np.average(q, weights=pi) divides by the weights' sum


def ref_ips(log, target, lam=math.inf):
    return sum(min(ref_weight(log, target, i), lam) * log.reward[i] for i in range(log.n)) / log.n


def ref_snips(log, target):
    w = [ref_weight(log, target, i) for i in range(log.n)]
    mean_w = sum(w) / log.n
    return sum(w[i] * log.reward[i] / mean_w for i in range(log.n)) / log.n


def ref_dm(target, q_hat):
    return sum(ref_dm_round(target, q_hat, i) for i in range(len(target))) / len(target)


def ref_dr_family(log, target, q_hat, transform, self_normalise=False):
    w = [ref_weight(log, target, i) for i in range(log.n)]
    mean_w = sum(w) / log.n
    total = 0.0
    for i in range(log.n):
        residual = log.reward[i] - q_hat[i][log.action[i]]
        correction = transform(w[i]) * residual
        if self_normalise:
            correction /= mean_w
        total += ref_dm_round(target, q_hat, i) + correction
    return total / log.n


@pytest.mark.parametrize("clip", [None, 0.5, 2.0, 10.0])
def test_ips_matches_obp_formula(clip):
    log, target, _ = _fixture()
    lam = math.inf if clip is None else clip
    got = bandit.ips(log.reward, log.action, log.pscore, target, clip=clip)
    assert got == pytest.approx(ref_ips(log, target, lam), abs=1e-9)


def test_snips_and_dm_match_obp_formulas():
    log, target, q_hat = _fixture(seed=3)
    assert bandit.snips(log.reward, log.action, log.pscore, target) == pytest.approx(ref_snips(log, target), abs=1e-9)
    assert bandit.dm(target, q_hat) == pytest.approx(ref_dm(target, q_hat), abs=1e-9)


@pytest.mark.parametrize("clip", [None, 1.0, 3.0])
def test_dr_matches_obp_formula(clip):
    log, target, q_hat = _fixture(seed=11)
    lam = math.inf if clip is None else clip
    expected = ref_dr_family(log, target, q_hat, lambda w: min(w, lam))
    got = bandit.dr(log.reward, log.action, log.pscore, target, q_hat, clip=clip)
    assert got == pytest.approx(expected, abs=1e-9)


def test_sndr_matches_obp_formula():
    log, target, q_hat = _fixture(seed=12)
    expected = ref_dr_family(log, target, q_hat, lambda w: w, self_normalise=True)
    assert bandit.sndr(log.reward, log.action, log.pscore, target, q_hat) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("tau", [0.0, 0.8, 2.5, math.inf])
def test_switch_dr_matches_obp_formula(tau):
    log, target, q_hat = _fixture(seed=13)
    expected = ref_dr_family(log, target, q_hat, lambda w: w * (1 if w <= tau else 0))
    got = bandit.switch_dr(log.reward, log.action, log.pscore, target, q_hat, tau=tau)
    assert got == pytest.approx(expected, abs=1e-9)


def test_switch_dr_keeps_the_correction_at_exactly_tau():
    """obp switches on w <= tau: a round whose weight equals tau keeps its correction."""
    log, target, q_hat = _fixture(seed=16)
    tau = ref_weight(log, target, 0)
    expected = ref_dr_family(log, target, q_hat, lambda w: w * (1 if w <= tau else 0))
    got = bandit.switch_dr(log.reward, log.action, log.pscore, target, q_hat, tau=tau)
    assert got == pytest.approx(expected, abs=1e-9)
    dropped = ref_dr_family(log, target, q_hat, lambda w: w * (1 if w < tau else 0))
    assert abs(expected - dropped) > 1e-6  # the boundary round matters, so the test can tell < from <=


@pytest.mark.parametrize("lam", [0.1, 1.0, 5.0, math.inf])
def test_dr_os_matches_obp_formula(lam):
    log, target, q_hat = _fixture(seed=14)
    expected = ref_dr_family(log, target, q_hat, lambda w: w if math.isinf(lam) else lam * w / (w * w + lam))
    got = bandit.dr_os(log.reward, log.action, log.pscore, target, q_hat, lambda_=lam)
    assert got == pytest.approx(expected, abs=1e-9)


def test_limits_of_the_dr_variants():
    """Switch-DR with tau=0 and DR-OS with lambda=0 reduce to DM; clip=inf equals DR; a perfect model makes DR = DM."""
    log, target, q_hat = _fixture(seed=15)
    args = (log.reward, log.action, log.pscore, target, q_hat)
    dm = bandit.dm(target, q_hat)
    assert bandit.switch_dr(*args, tau=0.0) == pytest.approx(dm, abs=1e-12)
    assert bandit.dr_os(*args, lambda_=0.0) == pytest.approx(dm, abs=1e-12)
    assert bandit.dr(*args) == pytest.approx(bandit.switch_dr(*args, tau=math.inf), abs=1e-12)
    rounds = bandit.dr_rounds(*args)
    assert rounds.shape == (log.n,)
    assert rounds.mean() == pytest.approx(bandit.dr(*args), abs=1e-12)


def test_ips_and_dr_are_unbiased_under_uniform_logging():
    """Over independent logs, IPS and DR (with a biased model) land within a few standard errors of the truth."""
    n, k = 20_000, 6
    ips_errors, dr_errors = [], []
    for seed in range(5):
        log, x = ope_data.uniform_logged(n, k, seed)
        target = ope_data.softmax(3.0 * x[:, :1] * np.linspace(-1, 1, k)[None, :])
        truth = log.true_value(target)
        q_hat = np.clip(log.expected_reward + 0.15, 0, 1)  # a model that is wrong by a constant
        ips_rounds = bandit.ips_rounds(log.reward, log.action, log.pscore, target)
        dr_rounds = bandit.dr_rounds(log.reward, log.action, log.pscore, target, q_hat)
        ips_errors.append((ips_rounds.mean() - truth) / (ips_rounds.std(ddof=1) / math.sqrt(n)))
        dr_errors.append((dr_rounds.mean() - truth) / (dr_rounds.std(ddof=1) / math.sqrt(n)))
        # the biased model alone misses the truth by far more than DR does
        assert abs(bandit.dm(target, q_hat) - truth) > 0.1
    # each z-score is within 4 standard errors, and their average is centred (no systematic bias)
    assert max(abs(z) for z in ips_errors) < 4
    assert max(abs(z) for z in dr_errors) < 4
    assert abs(np.mean(ips_errors)) < 4 / math.sqrt(5)
    assert abs(np.mean(dr_errors)) < 4 / math.sqrt(5)


def test_diagnostics_report_weights_and_support():
    log, target, _ = _fixture(seed=21, n=500)
    diag = bandit.diagnostics(log.action, log.pscore, target, behavior_dist=log.behavior_dist)
    w = np.array([ref_weight(log, target, i) for i in range(log.n)])
    assert diag.n == log.n
    assert diag.ess == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-12)
    assert diag.max_weight == pytest.approx(w.max())
    assert diag.mean_weight == pytest.approx(w.mean())
    assert diag.unsupported_mass == 0.0
    assert bandit.diagnostics(log.action, log.pscore, target).unsupported_mass is None


def test_deficient_support_is_measured():
    """The behaviour policy never takes action 0; the target gives it 30 % in every round."""
    rng = np.random.default_rng(5)
    n, k = 1000, 4
    behavior = np.tile([0.0, 1 / 3, 1 / 3, 1 / 3], (n, 1))
    _, expected = ope_data.make_contexts(n, k, rng)
    log = ope_data.log_bandit(expected, behavior, rng)
    assert (log.action != 0).all()
    target = np.tile([0.3, 0.2, 0.2, 0.3], (n, 1))
    diag = bandit.diagnostics(log.action, log.pscore, target, behavior_dist=behavior)
    assert diag.unsupported_mass == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pscore": np.zeros(3)}, "pscore"),
        ({"action": np.array([0, 1, 7])}, "action"),
        ({"action": np.array([0.0, 1.0, 1.0])}, "integer"),
        ({"target_dist": np.full((3, 2), 0.4)}, "sum to 1"),
        ({"reward": np.array([1.0, np.nan, 0.0])}, "NaN"),
        ({"reward": np.ones(4)}, "shape"),
        ({"clip": -1.0}, "clip"),
    ],
)
def test_bad_inputs_say_what_is_wrong(kwargs, message):
    args = {
        "reward": np.array([1.0, 0.0, 1.0]),
        "action": np.array([0, 1, 1]),
        "pscore": np.full(3, 0.5),
        "target_dist": np.full((3, 2), 0.5),
    }
    args.update(kwargs)
    with pytest.raises(OPEInputError, match=message):
        bandit.ips(**args)


def test_snips_refuses_when_every_weight_is_zero():
    with pytest.raises(OPEInputError, match="probability 0"):
        bandit.snips(np.ones(2), np.array([0, 0]), np.full(2, 0.5), np.array([[0.0, 1.0], [0.0, 1.0]]))


@pytest.mark.parametrize(
    ("name", "params", "direct"),
    [
        ("ips", {"clip": 2.0}, lambda log, t, q: bandit.ips_rounds(log.reward, log.action, log.pscore, t, clip=2.0)),
        ("snips", {}, lambda log, t, q: bandit.snips_rounds(log.reward, log.action, log.pscore, t)),
        ("dm", {}, lambda log, t, q: bandit.dm_rounds(t, q)),
        ("dr", {}, lambda log, t, q: bandit.dr_rounds(log.reward, log.action, log.pscore, t, q)),
        ("sndr", {}, lambda log, t, q: bandit.sndr_rounds(log.reward, log.action, log.pscore, t, q)),
        (
            "switch_dr",
            {"tau": 1.5},
            lambda log, t, q: bandit.switch_dr_rounds(log.reward, log.action, log.pscore, t, q, 1.5),
        ),
        (
            "dr_os",
            {"lambda_": 2.0},
            lambda log, t, q: bandit.dr_os_rounds(log.reward, log.action, log.pscore, t, q, 2.0),
        ),
    ],
)
def test_estimators_by_name(name, params, direct):
    log, target, q_hat = _fixture(seed=30)
    got = bandit.estimate_rounds(name, log.reward, log.action, log.pscore, target, q_hat, **params)
    np.testing.assert_array_equal(got, direct(log, target, q_hat))


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("magic", {}, "unknown estimator"),
        ("snips", {"clip": 1.0}, "takes no parameter"),
        ("dr", {"q_hat": None}, "needs q_hat"),
        ("switch_dr", {}, "needs tau"),
        ("dr_os", {}, "needs lambda_"),
    ],
)
def test_estimators_by_name_reject_bad_requests(name, kwargs, message):
    log, target, q_hat = _fixture(seed=31, n=20)
    args = {"q_hat": q_hat, **kwargs}
    with pytest.raises(OPEInputError, match=message):
        bandit.estimate_rounds(name, log.reward, log.action, log.pscore, target, **args)
