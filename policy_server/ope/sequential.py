"""Off-policy estimators for episodes (sequential decisions).

Arrays have shape (n_episodes, horizon). `pscore[i, t]` is the behaviour policy's probability of the action logged at
step t, `target_prob[i, t]` the evaluation policy's probability of that same action. Shorter episodes are padded with
pscore = target_prob = 1 and reward = 0, or described by `mask` (True on real steps); padded steps then contribute
nothing and leave the cumulative weights unchanged, as in an absorbing terminal state.

With rho_{0:t} = prod_{k<=t} target_prob / pscore:

- PDIS (Precup et al. 2000): mean_i sum_t gamma^t rho_{i,0:t} r_{i,t}; unbiased, high variance.
- WPDIS: sum_t gamma^t (sum_i rho_{i,0:t} r_{i,t}) / (sum_i rho_{i,0:t}); biased, consistent, much lower variance.
- DR (Jiang & Li 2016): mean_i sum_t gamma^t [rho_{i,0:t} (r_{i,t} - q_hat_{i,t}) + rho_{i,0:t-1} v_hat_{i,t}],
  with q_hat_{i,t} = Q(s_t, a_t) at the logged action and v_hat_{i,t} = sum_a pi_e(a | s_t) Q(s_t, a).

For long horizons the products of ratios explode; use `fqe` (fitted-Q evaluation) there.
"""

from __future__ import annotations

import numpy as np

from policy_server.ope import _checks
from policy_server.ope import diagnostics as diag

__all__ = [
    "cumulative_weights",
    "diagnostics",
    "dr_sequential",
    "dr_sequential_episodes",
    "pdis",
    "pdis_episodes",
    "wpdis",
]


def _discounts(gamma: float, horizon: int) -> np.ndarray:
    return _checks.check_gamma(gamma) ** np.arange(horizon)


def cumulative_weights(pscore: object, target_prob: object, mask: object | None = None) -> np.ndarray:
    """rho_{i,0:t} for every episode and step, shape (n_episodes, horizon)."""
    ps, tp, _, _ = _checks.check_episodes(pscore, target_prob, mask)
    return np.cumprod(tp / ps, axis=1)


def pdis_episodes(
    reward: object, pscore: object, target_prob: object, gamma: float, mask: object | None = None
) -> np.ndarray:
    """Per-episode PDIS returns; their mean is `pdis` and they are what confidence bounds consume."""
    ps, tp, _, arrays = _checks.check_episodes(pscore, target_prob, mask, reward=reward)
    rho = np.cumprod(tp / ps, axis=1)
    return (rho * arrays["reward"]) @ _discounts(gamma, ps.shape[1])


def pdis(reward: object, pscore: object, target_prob: object, gamma: float, mask: object | None = None) -> float:
    """Per-decision importance sampling estimate of the discounted return."""
    return float(pdis_episodes(reward, pscore, target_prob, gamma, mask).mean())


def wpdis(reward: object, pscore: object, target_prob: object, gamma: float, mask: object | None = None) -> float:
    """Weighted per-decision IS: each step's weights normalised across episodes (steps with all-zero weights add 0)."""
    ps, tp, _, arrays = _checks.check_episodes(pscore, target_prob, mask, reward=reward)
    rho = np.cumprod(tp / ps, axis=1)
    numer = (rho * arrays["reward"]).sum(axis=0)
    denom = rho.sum(axis=0)
    per_step = np.divide(numer, denom, out=np.zeros_like(numer), where=denom > 0)
    return float(per_step @ _discounts(gamma, ps.shape[1]))


def dr_sequential_episodes(
    reward: object,
    pscore: object,
    target_prob: object,
    q_hat: object,
    v_hat: object,
    gamma: float,
    mask: object | None = None,
) -> np.ndarray:
    """Per-episode doubly robust returns (Jiang & Li 2016, unrolled form of their recursion)."""
    ps, tp, _, arrays = _checks.check_episodes(pscore, target_prob, mask, reward=reward, q_hat=q_hat, v_hat=v_hat)
    rho = np.cumprod(tp / ps, axis=1)
    rho_prev = np.concatenate([np.ones((rho.shape[0], 1)), rho[:, :-1]], axis=1)
    terms = rho * (arrays["reward"] - arrays["q_hat"]) + rho_prev * arrays["v_hat"]
    return terms @ _discounts(gamma, ps.shape[1])


def dr_sequential(
    reward: object,
    pscore: object,
    target_prob: object,
    q_hat: object,
    v_hat: object,
    gamma: float,
    mask: object | None = None,
) -> float:
    """Doubly robust estimate for episodes: unbiased like PDIS, with variance reduced by a value model."""
    return float(dr_sequential_episodes(reward, pscore, target_prob, q_hat, v_hat, gamma, mask).mean())


def diagnostics(
    pscore: object,
    target_prob: object,
    mask: object | None = None,
    target_dist: object | None = None,
    behavior_dist: object | None = None,
) -> diag.Diagnostics:
    """Diagnostics of the whole-trajectory weights rho_{0:H-1}.

    Given both full distributions (shape (n_episodes, horizon, n_actions)), `unsupported_mass` is the evaluation
    policy's probability on actions with behaviour probability 0, averaged over real steps.
    """
    ps, tp, m, _ = _checks.check_episodes(pscore, target_prob, mask)
    weights = np.prod(tp / ps, axis=1)
    unsupported = None
    if (target_dist is None) != (behavior_dist is None):
        raise _checks.OPEInputError("pass both target_dist and behavior_dist to check support, or neither")
    if target_dist is not None:
        tgt = _checks.as_float_array(target_dist, "target_dist", 3)
        beh = _checks.as_float_array(behavior_dist, "behavior_dist", 3)
        if tgt.shape != beh.shape or tgt.shape[:2] != ps.shape:
            raise _checks.OPEInputError(
                f"target_dist and behavior_dist must both have shape {ps.shape} + (n_actions,), "
                f"got {tgt.shape} and {beh.shape}"
            )
        per_step = np.where(beh == 0, tgt, 0.0).sum(axis=2)
        unsupported = float(per_step[m].mean())
    return diag.summarize_weights(weights, unsupported)
