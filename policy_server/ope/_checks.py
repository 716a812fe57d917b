"""Input checks shared by the estimators, and the errors offline evaluation raises.

OPE numbers decide whether a policy reaches production, so bad inputs must stop loudly with a message that
says which array is wrong and how to fix it, instead of producing a plausible-looking NaN.
"""

from __future__ import annotations

import numpy as np

from policy_server.errors import PolicyServerError

__all__ = [
    "OPEError",
    "OPEInputError",
    "as_float_array",
    "check_bandit",
    "check_clip",
    "check_episodes",
    "check_gamma",
]


class OPEError(PolicyServerError):
    """The evaluation cannot run; the message says what is wrong and how to fix it.

    Raised for a whole evaluation (an unreadable log, an artifact that cannot be evaluated, an
    unknown estimator); `policy-server ope` and `train` exit with code 2 on it.
    """


class OPEInputError(PolicyServerError, ValueError):
    """The arrays handed to an estimator cannot describe logged decisions (wrong shape, range or type)."""


def as_float_array(x: object, name: str, ndim: int) -> np.ndarray:
    """Return `x` as a float64 array of `ndim` dimensions without copying when it already is one."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise OPEInputError(f"`{name}` must be {ndim}-dimensional, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr.ravel()))[0])
        raise OPEInputError(f"`{name}` contains NaN or infinity (first at flat index {bad}); drop or repair those rows")
    return arr


def check_clip(value: float | None, name: str) -> float:
    """Turn an optional clipping threshold into a float (None means no clipping, i.e. infinity)."""
    if value is None:
        return float(np.inf)
    value = float(value)
    if np.isnan(value) or value < 0:
        raise OPEInputError(f"`{name}` must be a non-negative number or None (no clipping), got {value}")
    return value


def check_bandit(
    action: object,
    pscore: object,
    target_dist: object,
    reward: object | None = None,
    q_hat: object | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Validate logged bandit feedback and return (action, pscore, target_dist, reward, q_hat) as arrays."""
    dist = as_float_array(target_dist, "target_dist", 2)
    n, n_actions = dist.shape
    if n == 0:
        raise OPEInputError("no logged decisions: `target_dist` has 0 rows")
    if dist.min() < 0:
        raise OPEInputError("`target_dist` has negative entries; pass the evaluation policy's action probabilities")
    row_sums = dist.sum(axis=1)
    if not np.allclose(row_sums, 1.0):
        bad = int(np.flatnonzero(~np.isclose(row_sums, 1.0))[0])
        raise OPEInputError(
            f"`target_dist` rows must sum to 1 (row {bad} sums to {row_sums[bad]:.6g}); normalise the evaluation "
            "policy's probabilities over all actions"
        )
    act = np.asarray(action)
    if act.shape != (n,):
        raise OPEInputError(f"`action` must have shape ({n},) to match `target_dist`, got {act.shape}")
    if not np.issubdtype(act.dtype, np.integer):
        raise OPEInputError(f"`action` must hold integer action indices, got dtype {act.dtype}")
    if act.min() < 0 or act.max() >= n_actions:
        raise OPEInputError(
            f"`action` values must lie in [0, {n_actions}) (the columns of `target_dist`), "
            f"got range [{act.min()}, {act.max()}]"
        )
    ps = as_float_array(pscore, "pscore", 1)
    if ps.shape != (n,):
        raise OPEInputError(f"`pscore` must have shape ({n},) to match `target_dist`, got {ps.shape}")
    if ps.min() <= 0 or ps.max() > 1 + 1e-9:
        raise OPEInputError(
            f"`pscore` must be the behaviour policy's probability of the logged action, in (0, 1]; got range "
            f"[{ps.min():.6g}, {ps.max():.6g}]. A 0 means the log is corrupt: that action could not have been taken"
        )
    rew = None
    if reward is not None:
        rew = as_float_array(reward, "reward", 1)
        if rew.shape != (n,):
            raise OPEInputError(f"`reward` must have shape ({n},) to match `target_dist`, got {rew.shape}")
    q = None
    if q_hat is not None:
        q = as_float_array(q_hat, "q_hat", 2)
        if q.shape != dist.shape:
            raise OPEInputError(
                f"`q_hat` must have the shape of `target_dist` {dist.shape} (one predicted reward per action), "
                f"got {q.shape}"
            )
    return act, ps, dist, rew, q


def check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0:
        raise OPEInputError(f"`gamma` (discount) must lie in [0, 1], got {gamma}")
    return gamma


def check_episodes(
    pscore: object,
    target_prob: object,
    mask: object | None,
    **others: object,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Validate (n_episodes, horizon) arrays; return pscore, target_prob, a boolean mask and the other arrays.

    Padded steps (mask False) are neutralised here: ratio 1 and every other array 0, so the estimators need no
    special cases for variable-length episodes.
    """
    ps = as_float_array(pscore, "pscore", 2)
    tp = as_float_array(target_prob, "target_prob", 2)
    if tp.shape != ps.shape:
        raise OPEInputError(f"`target_prob` must have the shape of `pscore` {ps.shape}, got {tp.shape}")
    if ps.shape[0] == 0 or ps.shape[1] == 0:
        raise OPEInputError(f"need at least one episode of at least one step, got shape {ps.shape}")
    if mask is None:
        m = np.ones(ps.shape, dtype=bool)
    else:
        m = np.asarray(mask).astype(bool)
        if m.shape != ps.shape:
            raise OPEInputError(f"`mask` must have the shape of `pscore` {ps.shape}, got {m.shape}")
    if (ps[m] <= 0).any() or (ps[m] > 1 + 1e-9).any():
        raise OPEInputError("`pscore` must lie in (0, 1] on every real step (use pscore=1 or `mask` for padding)")
    if (tp[m] < 0).any() or (tp[m] > 1 + 1e-9).any():
        raise OPEInputError("`target_prob` must lie in [0, 1] on every real step (use target_prob=1 for padding)")
    ps = np.where(m, ps, 1.0)
    tp = np.where(m, tp, 1.0)
    out: dict[str, np.ndarray] = {}
    for name, value in others.items():
        arr = as_float_array(value, name, 2)
        if arr.shape != ps.shape:
            raise OPEInputError(f"`{name}` must have the shape of `pscore` {ps.shape}, got {arr.shape}")
        out[name] = np.where(m, arr, 0.0)
    return ps, tp, m, out
