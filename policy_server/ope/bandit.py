"""Off-policy estimators for contextual bandits (one decision per round).

The definitions follow Open Bandit Pipeline (obp 0.5.x, `obp/ope/estimators.py`) so that numbers agree with the
reference library to floating-point precision; docs/ope.md lists each formula next to its obp class. Our
`target_dist` is obp's `action_dist` without the position axis.

Each estimator `x` has a companion `x_rounds` returning the per-round contributions (obp's
`_estimate_round_rewards`): the estimate is their mean, and they are what the bootstrap and the high-confidence
bounds in `confidence` consume. Arrays: `reward`, `action`, `pscore` have shape (n,); `target_dist` (the evaluation
policy's probabilities) and `q_hat` (a reward model's predictions) have shape (n, n_actions).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from policy_server.ope import _checks
from policy_server.ope import diagnostics as diag

__all__ = [
    "DEFAULT_SUPPORT_FLOOR",
    "ESTIMATORS",
    "diagnostics",
    "dm",
    "dm_rounds",
    "dr",
    "dr_os",
    "dr_os_rounds",
    "dr_rounds",
    "estimate_rounds",
    "importance_weights",
    "ips",
    "ips_rounds",
    "sndr",
    "sndr_rounds",
    "snips",
    "snips_rounds",
    "support_floor",
    "switch_dr",
    "switch_dr_rounds",
]

_CHUNK_ROWS = 1 << 20  # rows per chunk when a full (n, n_actions) temporary would cost too much memory


def _weights(action: np.ndarray, pscore: np.ndarray, dist: np.ndarray) -> np.ndarray:
    return dist[np.arange(action.shape[0]), action] / pscore


def _model_terms(action: np.ndarray, dist: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (DM value per round, q_hat at the logged action).

    obp computes the DM term with `np.average(q, weights=pi, axis=1)`, i.e. divides by the row sum of pi; we do the
    same (rows sum to 1 up to rounding) without materialising the (n, n_actions) product.
    """
    dm = np.einsum("ij,ij->i", q, dist) / dist.sum(axis=1)
    return dm, q[np.arange(action.shape[0]), action]


def _require_positive_mean(iw: np.ndarray, estimator: str) -> float:
    mean = float(iw.mean())
    if mean <= 0.0:
        raise _checks.OPEInputError(
            f"{estimator} is undefined: every importance weight is 0, i.e. the evaluation policy gives probability 0 "
            "to every logged action. The logs carry no information about this policy; collect data with overlap"
        )
    return mean


def importance_weights(action: object, pscore: object, target_dist: object) -> np.ndarray:
    """w_i = pi_e(a_i | x_i) / pi_b(a_i | x_i), unclipped."""
    act, ps, dist, _, _ = _checks.check_bandit(action, pscore, target_dist)
    return _weights(act, ps, dist)


def ips_rounds(
    reward: object, action: object, pscore: object, target_dist: object, clip: float | None = None
) -> np.ndarray:
    """Per-round IPS contributions min(w_i, clip) * r_i (obp `InverseProbabilityWeighting`, `lambda_` = clip)."""
    act, ps, dist, rew, _ = _checks.check_bandit(action, pscore, target_dist, reward=reward)
    lam = _checks.check_clip(clip, "clip")
    iw = np.minimum(_weights(act, ps, dist), lam)
    return rew * iw


def ips(reward: object, action: object, pscore: object, target_dist: object, clip: float | None = None) -> float:
    """Inverse propensity scoring: unbiased under full support when clip is None; clipping trades bias for variance."""
    return float(ips_rounds(reward, action, pscore, target_dist, clip).mean())


def snips_rounds(reward: object, action: object, pscore: object, target_dist: object) -> np.ndarray:
    """Per-round SNIPS contributions w_i r_i / mean(w) (obp `SelfNormalizedInverseProbabilityWeighting`).

    For a bootstrap of SNIPS, resample the ratio instead: `confidence.bootstrap_ci(w * r, denominator=w)`.
    """
    act, ps, dist, rew, _ = _checks.check_bandit(action, pscore, target_dist, reward=reward)
    iw = _weights(act, ps, dist)
    return rew * iw / _require_positive_mean(iw, "SNIPS")


def snips(reward: object, action: object, pscore: object, target_dist: object) -> float:
    """Self-normalised IPS: sum(w r) / sum(w). Biased but bounded by the reward range, far less variance than IPS."""
    return float(snips_rounds(reward, action, pscore, target_dist).mean())


def dm_rounds(target_dist: object, q_hat: object) -> np.ndarray:
    """Per-round direct-method values sum_a pi_e(a|x_i) q_hat(x_i, a) (obp `DirectMethod`)."""
    dist = _checks.as_float_array(target_dist, "target_dist", 2)
    q = _checks.as_float_array(q_hat, "q_hat", 2)
    if q.shape != dist.shape:
        raise _checks.OPEInputError(f"`q_hat` must have the shape of `target_dist` {dist.shape}, got {q.shape}")
    if dist.shape[0] == 0:
        raise _checks.OPEInputError("no logged decisions: `target_dist` has 0 rows")
    row_sums = dist.sum(axis=1)
    if dist.min() < 0 or not np.allclose(row_sums, 1.0):
        raise _checks.OPEInputError("`target_dist` rows must be probability distributions (non-negative, sum to 1)")
    return np.einsum("ij,ij->i", q, dist) / row_sums


def dm(target_dist: object, q_hat: object) -> float:
    """Direct method: trusts the reward model entirely; low variance, biased by the model's error."""
    return float(dm_rounds(target_dist, q_hat).mean())


def _dr_parts(
    reward: object, action: object, pscore: object, target_dist: object, q_hat: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (weights, DM term, residual r - q_hat at the logged action) shared by the DR family."""
    act, ps, dist, rew, q = _checks.check_bandit(action, pscore, target_dist, reward=reward, q_hat=q_hat)
    iw = _weights(act, ps, dist)
    dm_term, q_factual = _model_terms(act, dist, q)
    return iw, dm_term, rew - q_factual


def dr_rounds(
    reward: object, action: object, pscore: object, target_dist: object, q_hat: object, clip: float | None = None
) -> np.ndarray:
    """Per-round DR contributions (obp `DoublyRobust`, `lambda_` = clip)."""
    lam = _checks.check_clip(clip, "clip")
    iw, dm_term, residual = _dr_parts(reward, action, pscore, target_dist, q_hat)
    return dm_term + np.minimum(iw, lam) * residual


def dr(
    reward: object, action: object, pscore: object, target_dist: object, q_hat: object, clip: float | None = None
) -> float:
    """Doubly robust: DM plus an importance-weighted correction of the model's residual on the logged action."""
    return float(dr_rounds(reward, action, pscore, target_dist, q_hat, clip).mean())


def sndr_rounds(reward: object, action: object, pscore: object, target_dist: object, q_hat: object) -> np.ndarray:
    """Per-round SNDR contributions: DM term + w_i (r_i - q_hat_i) / mean(w) (obp `SelfNormalizedDoublyRobust`)."""
    iw, dm_term, residual = _dr_parts(reward, action, pscore, target_dist, q_hat)
    return dm_term + iw * residual / _require_positive_mean(iw, "SNDR")


def sndr(reward: object, action: object, pscore: object, target_dist: object, q_hat: object) -> float:
    """Self-normalised doubly robust."""
    return float(sndr_rounds(reward, action, pscore, target_dist, q_hat).mean())


def switch_dr_rounds(
    reward: object, action: object, pscore: object, target_dist: object, q_hat: object, tau: float
) -> np.ndarray:
    """Per-round Switch-DR contributions: the correction is kept only where w_i <= tau (obp `SwitchDoublyRobust`)."""
    lam = _checks.check_clip(tau, "tau")
    iw, dm_term, residual = _dr_parts(reward, action, pscore, target_dist, q_hat)
    return dm_term + (iw <= lam) * iw * residual


def switch_dr(reward: object, action: object, pscore: object, target_dist: object, q_hat: object, tau: float) -> float:
    """Switch-DR: falls back to the model on rounds whose weight exceeds tau (tau=inf is DR, tau=0 is DM)."""
    return float(switch_dr_rounds(reward, action, pscore, target_dist, q_hat, tau).mean())


def dr_os_rounds(
    reward: object, action: object, pscore: object, target_dist: object, q_hat: object, lambda_: float
) -> np.ndarray:
    """Per-round DR-OS contributions with shrunk weights lambda w / (w^2 + lambda) (obp `DoublyRobustWithShrinkage`).

    lambda_=inf gives DR. Where w = 0 and lambda_ = 0 obp computes 0/0 = NaN; we use the limit 0 (that round's
    correction is 0 either way), so the two agree everywhere obp is finite.
    """
    lam = _checks.check_clip(lambda_, "lambda_")
    iw, dm_term, residual = _dr_parts(reward, action, pscore, target_dist, q_hat)
    if np.isinf(lam):
        shrunk = iw
    else:
        denom = iw * iw + lam
        shrunk = np.divide(lam * iw, denom, out=np.zeros_like(iw), where=denom > 0)
    return dm_term + shrunk * residual


def dr_os(reward: object, action: object, pscore: object, target_dist: object, q_hat: object, lambda_: float) -> float:
    """DR with optimistic shrinkage (Su et al. 2020): smoothly shrinks large weights instead of cutting them."""
    return float(dr_os_rounds(reward, action, pscore, target_dist, q_hat, lambda_).mean())


DEFAULT_SUPPORT_FLOOR = 0.01  # relative to the uniform probability 1/K: weights up to 100 K count as supported


def support_floor(n_actions: int, relative: float = DEFAULT_SUPPORT_FLOOR) -> float:
    """The absolute behaviour probability below which an action counts as unsupported: relative / K."""
    if not 0.0 <= relative <= 1.0:
        raise _checks.OPEInputError(f"the support floor is a fraction of 1/K in [0, 1], got {relative}")
    return relative / n_actions


def diagnostics(
    action: object,
    pscore: object,
    target_dist: object,
    behavior_dist: object | None = None,
    floor: float | None = None,
) -> diag.Diagnostics:
    """Weight diagnostics: Kish ESS, max and mean weight (with its standard error), and the unsupported mass.

    The unsupported mass (given behavior_dist) is the evaluation policy's probability on actions the behaviour
    policy gives probability below `floor`, averaged over rounds: rewards for those actions were never (or almost
    never) observable, so every estimator above is blind to them. `floor` is absolute; None means
    `support_floor(K)` (1 % of uniform); 0 counts only actions of probability exactly 0.
    """
    act, ps, dist, _, _ = _checks.check_bandit(action, pscore, target_dist)
    iw = _weights(act, ps, dist)
    level = support_floor(dist.shape[1]) if floor is None else float(floor)
    if not 0.0 <= level < 1.0:
        raise _checks.OPEInputError(f"`floor` is a probability in [0, 1), got {floor}")
    unsupported = None
    if behavior_dist is not None:
        beh = _checks.as_float_array(behavior_dist, "behavior_dist", 2)
        if beh.shape != dist.shape:
            raise _checks.OPEInputError(
                f"`behavior_dist` must have the shape of `target_dist` {dist.shape}, got {beh.shape}"
            )
        logged = beh[np.arange(act.shape[0]), act]
        if (logged <= 0).any():
            row = int(np.flatnonzero(logged <= 0)[0])
            raise _checks.OPEInputError(
                f"`behavior_dist` gives probability 0 to the action logged in row {row}: the behaviour distribution "
                "and the log disagree; pass the distribution the logging policy actually sampled from"
            )
        total = 0.0
        for start in range(0, dist.shape[0], _CHUNK_ROWS):
            rows = slice(start, start + _CHUNK_ROWS)
            thin = (beh[rows] <= 0) | (beh[rows] < level)
            total += float(np.where(thin, dist[rows], 0.0).sum())
        unsupported = total / dist.shape[0]
    return diag.summarize_weights(iw, unsupported, level)


# name -> (per-round function, needs q_hat, the keyword parameters it accepts): the names a PolicyRollout's
# offlineEvaluation.estimators list uses.
ESTIMATORS: dict[str, tuple[Callable[..., np.ndarray], bool, tuple[str, ...]]] = {
    "ips": (ips_rounds, False, ("clip",)),
    "snips": (snips_rounds, False, ()),
    "dm": (dm_rounds, True, ()),
    "dr": (dr_rounds, True, ("clip",)),
    "sndr": (sndr_rounds, True, ()),
    "switch_dr": (switch_dr_rounds, True, ("tau",)),
    "dr_os": (dr_os_rounds, True, ("lambda_",)),
}


def estimate_rounds(
    name: str,
    reward: object,
    action: object,
    pscore: object,
    target_dist: object,
    q_hat: object | None = None,
    **params: float | None,
) -> np.ndarray:
    """Per-round contributions of the estimator called `name` (see ESTIMATORS); raises on unknown names."""
    if name not in ESTIMATORS:
        raise _checks.OPEInputError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    fn, needs_model, accepted = ESTIMATORS[name]
    unknown = set(params) - set(accepted)
    if unknown:
        allowed = ", ".join(accepted) or "none"
        raise _checks.OPEInputError(f"estimator {name!r} takes no parameter {sorted(unknown)}; it accepts: {allowed}")
    if name == "switch_dr" and params.get("tau") is None:
        raise _checks.OPEInputError("switch_dr needs tau (the weight above which the correction is dropped)")
    if name == "dr_os" and params.get("lambda_") is None:
        raise _checks.OPEInputError("dr_os needs lambda_ (the shrinkage strength; inf gives DR, 0 gives DM)")
    if needs_model and q_hat is None:
        raise _checks.OPEInputError(f"estimator {name!r} needs q_hat, a reward model's (n, n_actions) predictions")
    if name == "dm":
        return dm_rounds(target_dist, q_hat)
    if needs_model:
        return fn(reward, action, pscore, target_dist, q_hat, **params)
    return fn(reward, action, pscore, target_dist, **params)
