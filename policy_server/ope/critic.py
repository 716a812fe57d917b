"""Critic calibration offline: the logged predicted values against the returns that followed.

Why offline as well as live: the live metrics (docs/metrics.md, ``policy_value_*``) compare a
decision's prediction with *its own* reward, a one-step return. That is the right target for a
bandit policy, or a sequential one with gamma = 0; a sequential Q-function predicts the
*discounted return* ``G_t = r_t + gamma r_{t+1} + ...``, which is only known once the episode is
over. Here the decision log's ``predicted_value`` column (what the server logged with each
decision) is compared with ``G_t`` computed from the joined trajectories
(``policy_server.join.trajectories.step_table``).

A trajectory that ended without a terminal flag (``truncated``: still running, or a step missing
from the join) has an unknown tail, so its steps are left out when gamma > 0 (counted in
``truncatedSteps``); with gamma = 0 every rewarded step counts, episode keys or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from policy_server.ope._checks import OPEError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["critic_calibration", "discounted_returns", "summarize"]


def discounted_returns(rewards: np.ndarray, done: np.ndarray, gamma: float) -> np.ndarray:
    """``G_t`` of each step of consecutive trajectories (rows in step order; ``done`` marks each last step)."""
    out = np.empty(len(rewards), np.float64)
    following = 0.0
    for i in range(len(rewards) - 1, -1, -1):
        following = rewards[i] + (0.0 if done[i] else gamma * following)
        out[i] = following
    return out


def summarize(predicted: np.ndarray, realized: np.ndarray) -> dict[str, Any]:
    """Calibration figures of paired predictions and realised returns (the live metrics' offline twins)."""
    n = len(predicted)
    if n == 0:
        return {"n": 0}
    err = predicted - realized
    mean_realized = float(realized.mean())
    return {
        "n": n,
        "meanPredicted": float(predicted.mean()),
        "meanRealized": mean_realized,
        "bias": float(err.mean()),  # > 0: the critic is optimistic
        "meanAbsError": float(np.abs(err).mean()),
        "rootMeanSquaredError": float(np.sqrt((err * err).mean())),
        "calibrationRatio": float(predicted.mean() / mean_realized) if mean_realized != 0 else None,
    }


def critic_calibration(table: pa.Table, terminal_ids: set[str] | None, gamma: float) -> dict[str, Any]:
    """Compare the logged ``predicted_value`` of joined decisions with their realised (discounted) returns.

    ``table`` is the joined log (``trajectories.load_tables``); raises :class:`OPEError` when it holds
    no prediction to compare.
    """
    import pyarrow.compute as pc

    from policy_server.join import trajectories

    if not 0.0 <= gamma <= 1.0:
        raise OPEError(f"--gamma must be in [0, 1], got {gamma}")
    if "predicted_value" not in table.column_names or table["predicted_value"].null_count == table.num_rows:
        raise OPEError(
            "the log holds no predicted values: they are logged for artifacts with output q_values "
            "(docs/policy-server.md, 'Critic error'); serve such a policy with --log-dir"
        )
    result: dict[str, Any] = {"kind": "critic-calibration", "gamma": gamma}
    if gamma == 0.0:  # one-step returns: every rewarded decision counts, bandit or sequential
        keep = pc.and_(pc.is_valid(table["predicted_value"]), pc.is_valid(table["reward"]))
        if "defaulted" in table.column_names:  # a reward the join made up is no realised return
            keep = pc.and_(keep, pc.invert(pc.fill_null(table["defaulted"], False)))
        rows = table.filter(keep)
        predicted = rows["predicted_value"].to_numpy(zero_copy_only=False).astype(np.float64)
        result.update(summarize(predicted, rows["reward"].to_numpy(zero_copy_only=False).astype(np.float64)))
        return result
    steps = trajectories.step_table(table, terminal_ids)
    if steps.num_rows == 0:
        raise OPEError(
            "gamma > 0 needs trajectories: log decisions with context.episode_id and context.step, "
            "or compare one-step returns with --gamma 0"
        )
    rewards = np.nan_to_num(steps["reward"].to_numpy(zero_copy_only=False).astype(np.float64))
    done = steps["done"].to_numpy(zero_copy_only=False).astype(bool)
    returns = discounted_returns(rewards, done, gamma)
    ids = np.asarray(steps["trajectory_id"].to_pylist(), dtype=object)
    truncated_ids = set(ids[steps["truncated"].to_numpy(zero_copy_only=False).astype(bool)])
    complete = np.fromiter((t not in truncated_ids for t in ids), bool, len(ids))
    predicted = steps["predicted_value"].to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN
    keep = complete & np.isfinite(predicted)
    result.update(summarize(predicted[keep], returns[keep]))
    result["truncatedSteps"] = int((~complete & np.isfinite(predicted)).sum())
    return result
