"""Trajectories as training sees them: padded per-step arrays, flattened into transitions.

The dataset itself is built by the reward joiner (`policy_server.join.trajectories`, issue #19
item 1): `load` reads it from a decision log through `load_trajectories`, or from an `.npz` of the
same arrays (`save_npz`), which is how tests, notebooks and the demo hand training a dataset that
never went through a log. Training reads the agreed attributes only (observations (N, T, d),
actions, propensities, rewards, costs {name: (N, T)}, next_observations, done, mask), so any object
that has them is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from policy_server.errors import PolicyServerError

if TYPE_CHECKING:
    from policy_server.join import JoinOptions

__all__ = ["EpisodeArrays", "TrajectoryLike", "Transitions", "flatten", "load", "save_npz", "split"]


class TrajectoryLike(Protocol):
    observations: np.ndarray
    actions: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray
    costs: dict[str, np.ndarray]
    next_observations: np.ndarray
    done: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class EpisodeArrays:
    """The agreed trajectory arrays (a stand-in for `policy_server.join.trajectories.Trajectories`)."""

    observations: np.ndarray  # float (N, T, d)
    actions: np.ndarray  # int (N, T)
    propensities: np.ndarray  # float (N, T)
    rewards: np.ndarray  # float (N, T)
    next_observations: np.ndarray  # float (N, T, d)
    done: np.ndarray  # bool (N, T)
    mask: np.ndarray  # bool (N, T), True on real steps
    costs: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float (N, T)
    n_actions: int | None = None


@dataclass(frozen=True)
class Transitions:
    """Real steps of every episode as flat float32/int64 arrays, plus the episodes' first states."""

    obs: np.ndarray  # (M, d)
    actions: np.ndarray  # (M,)
    rewards: np.ndarray  # (M,)
    costs: np.ndarray  # (M, C), in the order of `cost_names`
    next_obs: np.ndarray  # (M, d)
    done: np.ndarray  # (M,) float 1.0 on an episode's last step
    initial_obs: np.ndarray  # (N, d)
    n_actions: int


def n_actions_of(data: TrajectoryLike) -> int:
    declared = getattr(data, "n_actions", None)
    # (N, T, K) behaviour probabilities when logged; the joiner's name for them is not settled yet.
    names = ("behavior_probabilities", "behaviour_probabilities", "action_probabilities")
    behaviour = next((getattr(data, n) for n in names if getattr(data, n, None) is not None), None)
    mask = np.asarray(data.mask, dtype=bool)
    seen = int(np.asarray(data.actions)[mask].max()) + 1
    if behaviour is not None:
        seen = max(seen, int(np.asarray(behaviour).shape[-1]))
    return max(seen, int(declared or 0))


def flatten(data: TrajectoryLike, cost_names: list[str]) -> Transitions:
    """The real (masked) steps as transitions; a cost named but absent is a one-line error."""
    mask = np.asarray(data.mask, dtype=bool)
    if not mask.any():
        raise PolicyServerError("the trajectories have no steps; check the log URL and the reward window")
    missing = [name for name in cost_names if name not in data.costs]
    if missing:
        raise PolicyServerError(
            f"cost {missing[0]!r} is not in the trajectories (costs: {sorted(data.costs) or 'none'}); "
            "post it with each reward (`costs` of /v1/reward) or fix --cost"
        )
    n = mask.shape[0]
    obs = np.asarray(data.observations, dtype=np.float32).reshape(n, mask.shape[1], -1)
    nxt = np.asarray(data.next_observations, dtype=np.float32).reshape(obs.shape)
    costs = np.stack([np.nan_to_num(np.asarray(data.costs[c], dtype=np.float32)[mask]) for c in cost_names], axis=1) \
        if cost_names else np.zeros((int(mask.sum()), 0), dtype=np.float32)
    return Transitions(
        obs=obs[mask], actions=np.asarray(data.actions)[mask].astype(np.int64),
        rewards=np.nan_to_num(np.asarray(data.rewards, dtype=np.float32)[mask]), costs=costs,
        next_obs=nxt[mask], done=np.asarray(data.done, dtype=np.float32)[mask],
        initial_obs=obs[mask[:, 0], 0], n_actions=n_actions_of(data),
    )


def split(data: TrajectoryLike, held_out: float, seed: int) -> tuple[EpisodeArrays, EpisodeArrays | None]:
    """Train and held-out episodes (by whole episode, so the held-out OPE sees trajectories it never fit)."""
    n = np.asarray(data.mask).shape[0]
    k = round(n * held_out)
    order = np.random.default_rng(seed).permutation(n)
    parts = [np.sort(order[k:]), np.sort(order[:k])]
    out = [_take(data, idx) for idx in parts]
    return out[0], (out[1] if k > 0 else None)


def _take(data: TrajectoryLike, idx: np.ndarray) -> EpisodeArrays:
    return EpisodeArrays(
        observations=np.asarray(data.observations)[idx], actions=np.asarray(data.actions)[idx],
        propensities=np.asarray(data.propensities)[idx], rewards=np.asarray(data.rewards)[idx],
        next_observations=np.asarray(data.next_observations)[idx], done=np.asarray(data.done)[idx],
        mask=np.asarray(data.mask)[idx], costs={k: np.asarray(v)[idx] for k, v in data.costs.items()},
        n_actions=n_actions_of(data),
    )


_FIELDS = ("observations", "actions", "propensities", "rewards", "next_observations", "done", "mask")


def save_npz(data: TrajectoryLike, path: str | Path) -> None:
    arrays: dict[str, Any] = {name: np.asarray(getattr(data, name)) for name in _FIELDS}
    arrays.update({f"cost.{name}": np.asarray(v) for name, v in data.costs.items()})
    arrays["n_actions"] = np.asarray(n_actions_of(data))
    np.savez(path, **arrays)


def load(logs: str | None, arrays: str | None, options: JoinOptions | None = None) -> TrajectoryLike:
    """Trajectories from a decision log (`--logs`, through the joiner) or from saved arrays (`--trajectory-arrays`)."""
    if arrays is not None:
        try:
            with np.load(arrays.removeprefix("file://")) as z:
                costs = {k.removeprefix("cost."): z[k] for k in z.files if k.startswith("cost.")}
                return EpisodeArrays(**{k: z[k] for k in _FIELDS}, costs=costs, n_actions=int(z["n_actions"]))
        except (OSError, KeyError, ValueError) as exc:
            raise PolicyServerError(
                f"cannot read trajectory arrays {arrays!r} ({exc}); write them with save_npz"
            ) from None
    try:
        from policy_server.join.trajectories import load_trajectories
    except ImportError:
        raise PolicyServerError(
            "this build has no trajectory joiner (policy_server.join.trajectories); pass --trajectory-arrays FILE.npz"
        ) from None
    return load_trajectories(logs, options)  # type: ignore[no-any-return]
