"""The decisions offline evaluation and training learn from: a decision log read into arrays.

Why a module of its own: `policy-server ope`, `policy-server train` and the demo must agree on
which logged decisions count (rewarded, served to a user, not shadow, with a discrete action)
and on their arrays, so there is one reader for all of them. Decisions meet their rewards through
the reward joiner (`policy_server.join`: window, reward function, default reward or exclusion), the
same rules `policy-server join` applies to big logs. It imports pyarrow only when a log is read:
`policy_server.cli` builds every command's parser in pods that never read a log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from policy_server.ope._checks import OPEError

if TYPE_CHECKING:
    from policy_server.join import JoinOptions

__all__ = ["LoggedData", "load_logged"]


@dataclass(frozen=True)
class LoggedData:
    """n logged decisions as arrays, row i of each array describing decision i."""

    observations: np.ndarray  # float32 (n, *shape)
    actions: np.ndarray  # int64 (n,)
    propensities: np.ndarray  # float64 (n,)
    rewards: np.ndarray  # float64 (n,)
    behavior_dist: np.ndarray | None  # float64 (n, K) when every row logged its probabilities
    n_actions: int
    costs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> float64 (n,), NaN: not reported
    contexts: list[str | None] | None = None  # each decision's request context (JSON), when asked for (fairness)


def load_logged(url: str, obs_shape: Sequence[int] | None = None, options: JoinOptions | None = None,
                *, with_contexts: bool = False) -> LoggedData:
    """The joined (rewarded, or defaulted), served, discrete decisions of the log at `url`, as arrays.

    ``options`` are the join rules; the default is an unbounded window, the first reward of a decision,
    and decisions without a reward left out. ``with_contexts`` also reads each decision's request context.
    """
    import pyarrow.compute as pc

    from policy_server import join

    try:
        table, _ = join.join_log(url, options or join.JoinOptions())
    except (OSError, ValueError) as exc:
        raise OPEError(f"cannot read the decision log at {url!r}: {exc}") from exc
    if table.num_rows:
        served = pc.and_(pc.not_equal(table["variant"], "shadow"), pc.is_valid(table["action_index"]))
        table = table.filter(pc.fill_null(served, False))
    if table.num_rows == 0:
        raise OPEError(
            f"the decision log at {url!r} has no rewarded, served discrete decisions; check the URL, that rewards "
            "were posted (/v1/reward) within the reward window and that the policy has a discrete action space"
        )
    obs_lists = table["observation"].combine_chunks()
    flat = obs_lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    n = table.num_rows
    if flat.size % n:
        raise OPEError("observations in the log have different lengths; evaluate one policy's log at a time")
    observations = flat.reshape(n, -1)
    if obs_shape is not None:
        size = int(np.prod(obs_shape))
        if observations.shape[1] != size:
            raise OPEError(
                f"the log's observations have {observations.shape[1]} features, the policy expects shape "
                f"{list(obs_shape)}; evaluate on a log of the same environment"
            )
        observations = observations.reshape(n, *obs_shape)
    actions = table["action_index"].to_numpy(zero_copy_only=False).astype(np.int64)
    propensities = table["propensity"].to_numpy(zero_copy_only=False).astype(np.float64)
    rewards = table["reward"].to_numpy(zero_copy_only=False).astype(np.float64)
    probs = table["probabilities"]
    behavior = None
    n_actions = int(actions.max()) + 1
    if probs.null_count == 0:
        lengths = pc.list_value_length(probs).to_numpy(zero_copy_only=False)
        if (lengths == lengths[0]).all():
            k = int(lengths[0])
            behavior = probs.combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64)
            behavior = behavior.reshape(n, k)
            n_actions = max(n_actions, k)
    contexts = None
    if with_contexts:
        contexts = table["context_json"].to_pylist() if "context_json" in table.column_names else [None] * n
    return LoggedData(observations, actions, propensities, rewards, behavior, n_actions, _costs(table["costs"]),
                      contexts)


def _costs(column: object) -> dict[str, np.ndarray]:
    """The costs reported with each decision's reward, by name (NaN where one was not reported)."""
    rows = column.to_pylist()  # type: ignore[attr-defined]
    names = sorted({name for row in rows if row for name, _ in row})
    costs = {name: np.full(len(rows), np.nan) for name in names}
    for i, row in enumerate(rows):
        for name, value in row or ():
            if value is not None:
                costs[name][i] = float(value)
    return costs

