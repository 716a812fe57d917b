"""Trajectory OPE: PDIS, weighted PDIS, per-decision doubly robust and fitted-Q evaluation, with bootstrap bounds.

Why a module of its own: the trajectory gate (`trajectory_gate`) and training's held-out report need the
same four estimators on :class:`policy_server.join.trajectories.Trajectories`, with intervals that resample
whole trajectories (steps of one trajectory are dependent; trajectories are independent). The formulas are
scope-rl's (`PerDecisionImportanceSampling`, `SelfNormalizedPDIS`, `DoublyRobust`, `FittedQEvaluation`),
with w_{0:t} = prod_{k<=t} pi_e(a_k | s_k) / pi_b(a_k | s_k) and padded steps contributing nothing:

- PDIS:  (1/n) sum_i sum_t gamma^t w_{0:t} r_t
- WPDIS: sum_t gamma^t sum_i w^i_{0:t} r^i_t / sum_i w^i_{0:t}
- DR:    (1/n) sum_i sum_t gamma^t [w_{0:t} (r_t - Q(s_t, a_t)) + w_{0:t-1} V(s_t)],  V(s) = sum_a pi_e(a|s) Q(s, a)
- FQE:   (1/n) sum_i V_0(s^i_0)

Q is fitted backwards in time (finite horizon, one Q_t per position t): Q_t(s, a) regresses
r_t + gamma (1 - done_t) V_{t+1}(s_{t+1}) by ridge least squares on [1, s] per action, which is exact
(tabular) for one-hot states. DR cross-fits it (two folds by trajectory), so a trajectory's Q never saw it.
A cost is estimated like the reward, with the cost as the per-step signal (`signal`).

`hcope_lower_bound` is Thomas, Theocharous & Ghavamzadeh (2015)'s high-confidence bound (their Theorem 1, one
clipping level chosen on a fifth of the trajectories): it holds at its level whatever the weights do, given
the rewards' range, and is much looser than the bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policy_server.ope import confidence
from policy_server.ope._checks import OPEInputError, check_gamma

__all__ = [
    "ESTIMATORS",
    "Estimate",
    "Inputs",
    "dr",
    "estimate",
    "fitted_q",
    "fqe",
    "hcope_lower_bound",
    "pdis",
    "step_weights",
    "trajectory_weights",
    "wpdis",
]

ESTIMATORS = ("pdis", "wpdis", "dr", "fqe")
DEFAULT_RIDGE = 1e-6


@dataclass(frozen=True)
class Inputs:
    """What every estimator reads: N trajectories padded to T steps, K actions, d features."""

    observations: np.ndarray  # (N, T, d)
    actions: np.ndarray  # int (N, T)
    propensities: np.ndarray  # (N, T), 1 on padding
    target: np.ndarray  # (N, T, K): pi_e(. | s_t)
    done: np.ndarray  # bool (N, T)
    mask: np.ndarray  # bool (N, T)

    def __post_init__(self) -> None:
        n, t = self.mask.shape
        for name in ("actions", "propensities", "done"):
            if getattr(self, name).shape != (n, t):
                raise OPEInputError(f"`{name}` must have shape {(n, t)} like `mask`, got {getattr(self, name).shape}")
        if self.target.shape[:2] != (n, t) or self.observations.shape[:2] != (n, t):
            raise OPEInputError(f"`target` and `observations` must start with shape {(n, t)}")
        if (self.propensities[self.mask] <= 0).any():
            raise OPEInputError("a logged propensity is 0 or negative: the log's propensities cannot be right")

    def take(self, rows: np.ndarray) -> Inputs:
        return Inputs(self.observations[rows], self.actions[rows], self.propensities[rows], self.target[rows],
                      self.done[rows], self.mask[rows])


def _discounts(gamma: float, horizon: int) -> np.ndarray:
    return check_gamma(gamma) ** np.arange(horizon)


def step_weights(x: Inputs) -> np.ndarray:
    """w_{0:t} (N, T): cumulative importance weights; unchanged across padding."""
    logged = np.take_along_axis(x.target, x.actions[..., None], axis=2)[..., 0]
    ratio = np.where(x.mask, logged / np.where(x.mask, x.propensities, 1.0), 1.0)
    return np.cumprod(ratio, axis=1)


def trajectory_weights(x: Inputs) -> np.ndarray:
    """W_i = w_{0:T-1} (N,): each trajectory's whole importance weight (for the Kish ESS)."""
    return step_weights(x)[:, -1]


def pdis(x: Inputs, signal: np.ndarray, gamma: float) -> np.ndarray:
    """Per-trajectory PDIS returns (their mean is the estimate)."""
    w = step_weights(x)
    return (np.where(x.mask, w * signal, 0.0)) @ _discounts(gamma, w.shape[1])


def wpdis(x: Inputs, signal: np.ndarray, gamma: float) -> float:
    """Weighted PDIS: each step's weights normalised over the trajectories that reach it."""
    w = np.where(x.mask, step_weights(x), 0.0)
    numerator = (w * signal).sum(axis=0)
    denominator = w.sum(axis=0)
    per_step = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    return float(per_step @ _discounts(gamma, w.shape[1]))


def _features(obs: np.ndarray) -> np.ndarray:
    flat = obs.reshape(*obs.shape[:2], -1).astype(np.float64)
    return np.concatenate([np.ones((*flat.shape[:2], 1)), flat], axis=2)


def fitted_q(x: Inputs, signal: np.ndarray, gamma: float, *, fit_rows: np.ndarray | None = None,
             ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Q_t(s_t, .) (N, T, K) at every logged state, fitted backwards on the trajectories ``fit_rows`` (default all).

    Where an action was never taken at a position, its Q_t is the mean target of that position.
    """
    gamma = check_gamma(gamma)
    phi = _features(x.observations)
    n, horizon, k = x.target.shape
    rows = np.arange(n) if fit_rows is None else fit_rows
    q = np.zeros((n, horizon, k))
    v_next = np.zeros(n)  # V_{t+1}(s_{t+1}) of every trajectory
    eye = ridge * np.eye(phi.shape[2])
    for t in range(horizon - 1, -1, -1):
        target = signal[:, t] + gamma * np.where(x.done[:, t], 0.0, v_next)
        real = rows[x.mask[rows, t]]
        fallback = float(target[real].mean()) if real.size else 0.0
        for a in range(k):
            taken = real[x.actions[real, t] == a]
            if taken.size == 0:
                q[:, t, a] = fallback
                continue
            f = phi[taken, t]
            coef = np.linalg.solve(f.T @ f + eye, f.T @ target[taken])
            q[:, t, a] = phi[:, t] @ coef
        v_next = (x.target[:, t] * q[:, t]).sum(axis=1)
    return q


def fqe(x: Inputs, signal: np.ndarray, gamma: float, *, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Per-trajectory V_0(s_0) under the fitted Q (their mean is the FQE estimate)."""
    q = fitted_q(x, signal, gamma, ridge=ridge)
    return (x.target[:, 0] * q[:, 0]).sum(axis=1)


def _cross_fitted_q(x: Inputs, signal: np.ndarray, gamma: float, ridge: float, seed: int) -> np.ndarray:
    n = x.mask.shape[0]
    if n < 4:
        return fitted_q(x, signal, gamma, ridge=ridge)
    fold = np.random.default_rng(seed).permutation(n) % 2
    q = np.zeros(x.target.shape)
    for f in (0, 1):
        fitted = fitted_q(x, signal, gamma, fit_rows=np.flatnonzero(fold != f), ridge=ridge)
        q[fold == f] = fitted[fold == f]
    return q


def dr(x: Inputs, signal: np.ndarray, gamma: float, *, q: np.ndarray | None = None, ridge: float = DEFAULT_RIDGE,
       seed: int = 0) -> np.ndarray:
    """Per-trajectory per-decision DR returns; ``q`` (N, T, K) is cross-fitted when not given."""
    if q is None:
        q = _cross_fitted_q(x, signal, gamma, ridge, seed)
    w = step_weights(x)
    w_prev = np.concatenate([np.ones((w.shape[0], 1)), w[:, :-1]], axis=1)
    q_logged = np.take_along_axis(q, x.actions[..., None], axis=2)[..., 0]
    v = (x.target * q).sum(axis=2)
    terms = np.where(x.mask, w * (signal - q_logged) + w_prev * v, 0.0)
    return terms @ _discounts(gamma, w.shape[1])


@dataclass(frozen=True)
class Estimate:
    """One estimator's value and its bootstrap distribution's bounds at the given confidence."""

    estimator: str
    value: float
    ci_low: float  # two-sided interval at `confidence`
    ci_high: float
    lower_bound: float  # one-sided lower bound at `confidence`
    upper_bound: float  # one-sided upper bound at `confidence`


def _per_trajectory(name: str, x: Inputs, signal: np.ndarray, gamma: float, seed: int) -> np.ndarray | None:
    if name == "pdis":
        return pdis(x, signal, gamma)
    if name == "dr":
        return dr(x, signal, gamma, seed=seed)
    return None


def _function(name: str, x: Inputs, signal: np.ndarray, gamma: float, seed: int) -> Callable[[np.ndarray], float]:
    """The estimator on a resample of trajectories (FQE and DR refit their Q on it)."""
    if name == "wpdis":
        return lambda rows: wpdis(x.take(rows), signal[rows], gamma)
    if name == "fqe":
        return lambda rows: float(fqe(x.take(rows), signal[rows], gamma).mean())
    if name == "dr":
        return lambda rows: float(dr(x.take(rows), signal[rows], gamma, seed=seed).mean())
    raise OPEInputError(f"unknown trajectory estimator {name!r}; choose from {', '.join(ESTIMATORS)}")


def estimate(name: str, x: Inputs, signal: np.ndarray, gamma: float, *, confidence_level: float = 0.95,
             n_resamples: int = 200, seed: int = 0) -> Estimate:
    """One estimator with bootstrap-by-trajectory bounds (PDIS resamples its per-trajectory returns; WPDIS,
    DR and FQE are recomputed on each resample, DR and FQE refitting their Q)."""
    if name not in ESTIMATORS:
        raise OPEInputError(f"unknown trajectory estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
    alpha = 1.0 - confidence_level
    rng = np.random.default_rng(seed)
    n = x.mask.shape[0]
    rounds = _per_trajectory(name, x, signal, gamma, seed)
    if name == "pdis":
        assert rounds is not None
        value = float(rounds.mean())
        reps = confidence.bootstrap_estimates(rounds, n_resamples, rng)
    else:
        fn = _function(name, x, signal, gamma, seed)
        value = float(rounds.mean()) if rounds is not None else fn(np.arange(n))
        reps = np.array([fn(rng.integers(0, n, size=n)) for _ in range(n_resamples)])
    reps = reps[np.isfinite(reps)]
    lo2, hi2, lo1, hi1 = np.percentile(reps, [50 * alpha, 100 - 50 * alpha, 100 * alpha, 100 - 100 * alpha])
    return Estimate(name, value, float(lo2), float(hi2), float(lo1), float(hi1))


def _thomas_bound(y: np.ndarray, c: float, n: int, log_term: float) -> float:
    """Theorem 1 of Thomas et al. (2015) with one threshold c: mean(Y) - 7 c ln(2/d) / (3 (n-1)) - sqrt(ln(2/d)
    var(Y) / (n-1)), var the biased sample variance of Y = min(X, c) (n may differ from len(y) when predicting)."""
    return float(y.mean() - 7.0 * c * log_term / (3.0 * (n - 1)) - np.sqrt(log_term * y.var() / (n - 1)))


def hcope_lower_bound(x: Inputs, signal: np.ndarray, gamma: float, signal_range: tuple[float, float], *,
                      confidence_level: float = 0.95, split: float = 0.2, seed: int = 0) -> float:
    """A lower bound on the discounted return holding with probability ``confidence_level`` for rewards within
    ``signal_range``: trajectory-wise importance sampling X_i = W_i (G_i - G_min) >= 0 (G_min: the least return
    any trajectory can have), clipped at a level c picked on a random ``split`` of the trajectories to maximise
    the bound predicted for the rest, which then gives the bound (Thomas et al. 2015)."""
    gamma = check_gamma(gamma)
    lo, hi = signal_range
    if not hi > lo:
        raise OPEInputError(f"the reward range must be LO,HI with HI > LO, got {signal_range}")
    n = x.mask.shape[0]
    if n < 10:
        return float("-inf")
    discounts = gamma ** np.arange(x.mask.shape[1])
    returns = np.where(x.mask, signal, 0.0) @ discounts
    g_min = float(min(lo, 0.0) * discounts.sum())
    weights = trajectory_weights(x)
    xs = weights * np.maximum(returns - g_min, 0.0)
    log_term = float(np.log(2.0 / (1.0 - confidence_level)))
    order = np.random.default_rng(seed).permutation(n)
    m = max(2, int(split * n))
    pre, post = xs[order[:m]], xs[order[m:]]
    levels = np.unique(np.quantile(pre, np.linspace(0.5, 1.0, 26)))
    levels = levels[levels > 0] if (levels > 0).any() else np.array([1.0])
    c = max(levels, key=lambda level: _thomas_bound(np.minimum(pre, level), level, post.size, log_term))
    return g_min + _thomas_bound(np.minimum(post, c), float(c), post.size, log_term)
