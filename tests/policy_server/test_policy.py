"""Exploration rules: exact propensities, masks, bounds, coupling and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policy_server import artifact, policy
from policy_server.artifact import Exploration


def _policy(tmp_path: Path, exploration: dict, kind: str = "discrete", fmt: str = "torchscript") -> policy.Policy:
    out = artifact.write_example_model(tmp_path / "m", kind=kind, format=fmt, exploration=exploration)
    return policy.Policy.from_artifact(artifact.load_artifact(str(out)))


def _softmax(x: np.ndarray, t: float) -> np.ndarray:
    z = np.exp((x - x.max(axis=1, keepdims=True)) / t)
    return z / z.sum(axis=1, keepdims=True)


def test_greedy_ties_lowest_index() -> None:
    raw = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    p = policy.discrete_probabilities(raw, Exploration(kind="greedy"), None)
    assert p.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]


def test_epsilon_greedy_probabilities_with_mask() -> None:
    raw = np.array([[0.0, 5.0, 1.0, 2.0]])
    mask = np.array([[True, False, True, True]])
    p = policy.discrete_probabilities(raw, Exploration(kind="epsilon_greedy", epsilon=0.3), mask)
    assert np.allclose(p, [[0.1, 0.0, 0.1, 0.8]])


def test_softmax_mask_renormalises() -> None:
    raw = np.array([[0.5, 1.0, -1.0]])
    p = policy.discrete_probabilities(
        raw, Exploration(kind="softmax", temperature=2.0), np.array([[True, False, True]])
    )
    expected = _softmax(raw[:, [0, 2]], 2.0)[0]
    assert np.allclose(p[0], [expected[0], 0.0, expected[1]])


def test_sample_never_picks_zero_probability() -> None:
    p = np.array([[0.0, 0.5, 0.0, 0.5]] * 1000)
    u = np.linspace(0, 1, 1000, endpoint=False)
    a = policy.sample_discrete(p, u)
    assert set(a.tolist()) == {1, 3}


@pytest.mark.parametrize(
    "exploration",
    [{"kind": "greedy"}, {"kind": "epsilon_greedy", "epsilon": 0.2}, {"kind": "softmax", "temperature": 0.7}],
)
def test_propensity_matches_empirical_frequency(tmp_path: Path, exploration: dict) -> None:
    pol = _policy(tmp_path, exploration)
    obs = np.tile(np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32), (20_000, 1))
    d = pol.decide(obs, np.random.default_rng(0))
    raw = pol.forward(obs[:1]).astype(np.float64)
    expected = policy.discrete_probabilities(raw, Exploration(**exploration), None)[0]
    if exploration["kind"] == "softmax":
        assert np.allclose(expected, _softmax(raw, 0.7)[0])
    freq = np.bincount(d.actions, minlength=4) / len(d.actions)
    assert np.allclose(freq, expected, atol=0.015)
    assert np.allclose(d.propensities, expected[d.actions])
    assert np.allclose(d.probabilities, expected)


def test_same_rng_same_decisions(tmp_path: Path) -> None:
    pol = _policy(tmp_path, {"kind": "softmax"})
    obs = np.random.default_rng(2).standard_normal((64, 8)).astype(np.float32)
    a = pol.decide(obs, np.random.default_rng(7))
    b = pol.decide(obs, np.random.default_rng(7))
    assert np.array_equal(a.actions, b.actions) and np.array_equal(a.propensities, b.propensities)


def test_mask_coupling_reports_unconstrained_action(tmp_path: Path) -> None:
    pol = _policy(tmp_path, {"kind": "greedy"})
    obs = np.random.default_rng(3).standard_normal((50, 8)).astype(np.float32)
    free = pol.decide(obs, np.random.default_rng(0))
    masks = np.ones((50, 4), dtype=bool)
    masks[np.arange(50), free.actions] = False  # forbid whatever greedy picks
    d = pol.decide(obs, np.random.default_rng(0), masks)
    assert np.array_equal(d.unconstrained_actions, free.actions)
    assert not np.any(d.actions == free.actions)
    assert np.all(d.propensities == 1.0)


def test_all_masked_row_rejected(tmp_path: Path) -> None:
    pol = _policy(tmp_path, {"kind": "greedy"})
    with pytest.raises(ValueError, match="allows no action"):
        pol.decide(np.zeros((1, 8), np.float32), np.random.default_rng(0), np.zeros((1, 4), bool))


def test_non_finite_output_flagged(tmp_path: Path) -> None:
    pol = _policy(tmp_path, {"kind": "softmax"})
    raw = np.array([[np.nan, 1, 2, 3], [0, 1, 2, 3]], dtype=np.float32)
    d = pol.choose(raw, np.random.default_rng(0))
    assert d.finite.tolist() == [False, True]
    assert np.all(np.isfinite(d.propensities))


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_continuous_greedy_is_mean(tmp_path: Path, fmt: str) -> None:
    pol = _policy(tmp_path, {"kind": "greedy"}, kind="continuous", fmt=fmt)
    obs = np.random.default_rng(4).standard_normal((10, 8)).astype(np.float32)
    d = pol.decide(obs, np.random.default_rng(0))
    assert d.actions.dtype == np.float32 and d.actions.shape == (10, 4)
    assert np.allclose(d.actions, pol.forward(obs))
    assert np.all(d.propensities == 1.0) and d.probabilities is None


def test_continuous_gaussian_density(tmp_path: Path) -> None:
    pol = _policy(tmp_path, {"kind": "gaussian"}, kind="continuous")
    obs = np.random.default_rng(5).standard_normal((2000, 8)).astype(np.float32)
    d = pol.decide(obs, np.random.default_rng(0), low=np.full(4, -10.0), high=np.full(4, 10.0))
    mean = pol.forward(obs).astype(np.float64)
    std = np.exp(-1.0)
    dens = np.prod(np.exp(-0.5 * ((d.actions - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi)), axis=1)
    assert np.allclose(d.propensities, dens, rtol=1e-4)
    # residuals are N(0, std): the sampler matches the density it reports
    assert abs(np.std(d.actions - mean) - std) < 0.01


def test_continuous_clip_uses_tail_mass() -> None:
    mean = np.array([[0.0]])
    std = np.array([1.0])
    lo, hi = np.array([[-0.5]]), np.array([[0.5]])
    lp = policy.gaussian_log_propensity(np.array([[2.0]]), mean, std, lo, hi)
    from math import erfc, log, sqrt

    assert np.isclose(lp[0], log(0.5 * erfc(0.5 / sqrt(2))))  # P(x >= 0.5)
