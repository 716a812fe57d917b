"""Trajectories from the joined decision log: per-step arrays of episodes, for sequential OPE and training.

Why a module of its own: the trajectory gate (`policy-server ope --trajectories`), constrained
training and `policy-server join --trajectories` must agree on what an episode is. The rules
(docs/decision-log.md, "Trajectories"):

* a step is a joined, served, discrete decision with an ``episode_id`` and a ``step`` (bandit rows
  are left out); steps of one episode are ordered by ``step`` (then time);
* an episode is split into separate trajectories at a terminal flag (the decision's
  ``context.terminal`` or a reward's ``terminal``) and at a gap in its step numbers (a step missing
  from the join, e.g. with ``--exclude-unrewarded``); a repeated step number splits as well;
* a trajectory's last step is ``done``: its next observation is its own (nothing follows it), and
  ``truncated`` says it ended without a terminal flag (an episode still running, or a gap);
* a cost not reported at a step counts 0 there (``cost_reported`` says where one was).

Arrays are padded to the longest trajectory (``mask`` False on padding); padded steps have
propensity 1, action 0 and reward 0, so cumulative importance weights stop changing there.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from policy_server.join.window import JoinOptions

__all__ = ["Trajectories", "TrajectoryError", "build_trajectories", "load_trajectories", "step_table"]


class TrajectoryError(ValueError):
    """The log holds no usable trajectories; the message says what to fix."""


@dataclass(frozen=True)
class Trajectories:
    """N trajectories padded to T steps; d observation features, K actions."""

    ids: list[str]  # N trajectory ids: the episode id, with "#k" for the k-th piece of a split episode
    observations: np.ndarray  # float32 (N, T, d)
    actions: np.ndarray  # int64 (N, T)
    propensities: np.ndarray  # float64 (N, T): the logger's probability of the logged action
    behavior_probabilities: np.ndarray | None  # float64 (N, T, K) when every step logged them
    rewards: np.ndarray  # float64 (N, T)
    costs: dict[str, np.ndarray]  # name -> float64 (N, T), 0 where not reported
    next_observations: np.ndarray  # float32 (N, T, d)
    done: np.ndarray  # bool (N, T): the trajectory's last step
    mask: np.ndarray  # bool (N, T): a real step (False on padding)
    truncated: np.ndarray  # bool (N,): ended without a terminal flag
    n_actions: int
    steps: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))  # int64 (N, T), -1 on padding
    cost_reported: dict[str, np.ndarray] = field(default_factory=dict)  # name -> bool (N, T)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def horizon(self) -> int:
        return int(self.mask.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(axis=1)


def _steps(table: pa.Table, terminal_ids: set[str] | None) -> pa.Table:
    """The sequential steps of a joined table, sorted, with ``terminal`` from decisions or rewards."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "episode_id" not in table.column_names:
        raise TrajectoryError("the log has no episode_id column (written before trajectories); log with episode keys")
    keep = pc.and_(pc.is_valid(table["episode_id"]), pc.is_valid(table["step"]))
    keep = pc.and_(keep, pc.is_valid(table["action_index"]))
    keep = pc.and_(keep, pc.not_equal(table["variant"], "shadow"))
    table = table.filter(pc.fill_null(keep, False))
    terminal = pc.fill_null(table["terminal"], False)
    if terminal_ids:
        terminal = pc.or_(terminal, pc.is_in(table["request_id"], value_set=pa.array(sorted(terminal_ids))))
    table = table.set_column(table.schema.get_field_index("terminal"), "terminal", terminal)
    return table.sort_by([("episode_id", "ascending"), ("step", "ascending"), ("time", "ascending")])


def _segments(episodes: np.ndarray, steps: np.ndarray, terminal: np.ndarray) -> np.ndarray:
    """Segment number of each sorted step: new at another episode, a step gap or repeat, or after a terminal."""
    new = np.ones(len(steps), bool)
    if len(steps) > 1:
        new[1:] = (episodes[1:] != episodes[:-1]) | (steps[1:] != steps[:-1] + 1) | terminal[:-1]
    return np.cumsum(new) - 1


def step_table(table: pa.Table, terminal_ids: set[str] | None = None) -> pa.Table:
    """One row per step of the sorted trajectories: the joined columns plus ``trajectory_id``, ``position``,
    ``next_observation``, ``done`` and ``truncated`` (what `policy-server join --trajectories` writes)."""
    import pyarrow as pa

    steps = _steps(table, terminal_ids)
    n = steps.num_rows
    episodes = np.asarray(steps["episode_id"].to_pylist(), dtype=object)
    step = steps["step"].to_numpy(zero_copy_only=False)
    terminal = steps["terminal"].to_numpy(zero_copy_only=False).astype(bool)
    seg = _segments(episodes, step, terminal)
    last = np.ones(n, bool)
    last[:-1] = seg[1:] != seg[:-1]
    first = np.ones(n, bool)
    first[1:] = seg[1:] != seg[:-1]
    starts = np.flatnonzero(first)
    position = np.arange(n) - starts[seg]
    pieces = collections.Counter(episodes[starts])
    seen: collections.Counter[str] = collections.Counter()
    names = []
    for episode in episodes[starts]:
        names.append(f"{episode}#{seen[episode]}" if pieces[episode] > 1 else str(episode))
        seen[episode] += 1
    ids = [names[s] for s in seg]
    following = np.where(last, np.arange(n), np.arange(n) + 1)
    out = steps.append_column("trajectory_id", pa.array(ids, pa.string()))
    out = out.append_column("position", pa.array(position.astype(np.int64)))
    out = out.append_column("next_observation", steps["observation"].take(pa.array(following)))
    out = out.append_column("done", pa.array(last))
    return out.append_column("truncated", pa.array(last & ~terminal))


def build_trajectories(table: pa.Table, terminal_ids: set[str] | None = None) -> Trajectories:
    """Trajectories from a joined table (``join_tables``/``join_log`` output); see the module docstring."""
    import pyarrow.compute as pc

    rows = step_table(table, terminal_ids)
    if rows.num_rows == 0:
        raise TrajectoryError(
            "the log has no joined decisions with context.episode_id and context.step; send them with /v1/act "
            "(docs/policy-server.md) or evaluate it as a bandit log (without --trajectories)"
        )
    ids_col = rows["trajectory_id"].to_pylist()
    ids = list(dict.fromkeys(ids_col))
    index = {t: i for i, t in enumerate(ids)}
    seg = np.fromiter((index[t] for t in ids_col), np.int64, len(ids_col))
    pos = rows["position"].to_numpy()
    n, horizon = len(ids), int(pos.max()) + 1
    obs = _floats(rows["observation"], rows.num_rows)
    nxt = _floats(rows["next_observation"], rows.num_rows)
    if nxt.shape[1] != obs.shape[1]:
        raise TrajectoryError("observations in the log have different lengths; build trajectories of one environment")
    d = obs.shape[1]

    def padded(values: np.ndarray, fill: float | int | bool, dtype: type) -> np.ndarray:
        out = np.full((n, horizon, *values.shape[1:]), fill, dtype)
        out[seg, pos] = values
        return out

    actions = rows["action_index"].to_numpy(zero_copy_only=False).astype(np.int64)
    probs = rows["probabilities"]
    behavior, k = None, int(actions.max()) + 1
    if probs.null_count == 0:
        lengths = pc.list_value_length(probs).to_numpy(zero_copy_only=False)
        if (lengths == lengths[0]).all() and lengths[0] >= k:
            k = int(lengths[0])
            flat = probs.combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64)
            behavior = padded(flat.reshape(-1, k), 1.0 / k, np.float64)
    costs, reported = _costs(rows["costs"].to_pylist(), seg, pos, (n, horizon))
    done = rows["done"].to_numpy(zero_copy_only=False)
    truncated = np.zeros(n, bool)
    truncated[seg[done]] = rows["truncated"].to_numpy(zero_copy_only=False)[done]
    return Trajectories(
        ids=ids,
        observations=padded(obs, 0.0, np.float32).reshape(n, horizon, d),
        actions=padded(actions, 0, np.int64),
        propensities=padded(rows["propensity"].to_numpy(zero_copy_only=False), 1.0, np.float64),
        behavior_probabilities=behavior,
        rewards=padded(rows["reward"].to_numpy(zero_copy_only=False), 0.0, np.float64),
        costs=costs,
        next_observations=padded(nxt, 0.0, np.float32).reshape(n, horizon, d),
        done=padded(done, False, bool),
        mask=padded(np.ones(len(seg), bool), False, bool),
        truncated=truncated,
        n_actions=k,
        steps=padded(rows["step"].to_numpy(zero_copy_only=False), -1, np.int64),
        cost_reported=reported,
    )


def _floats(column: pa.ChunkedArray, rows: int) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if flat.size % rows:
        raise TrajectoryError("observations in the log have different lengths; build trajectories of one environment")
    return flat.reshape(rows, -1)


def _costs(
    rows: list[list[tuple[str, float]] | None], seg: np.ndarray, pos: np.ndarray, shape: tuple[int, int]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    costs: dict[str, np.ndarray] = {}
    reported: dict[str, np.ndarray] = {}
    for i, row in enumerate(rows):
        for name, value in row or ():
            if value is None:
                continue
            if name not in costs:
                costs[name], reported[name] = np.zeros(shape), np.zeros(shape, bool)
            costs[name][seg[i], pos[i]] = float(value)
            reported[name][seg[i], pos[i]] = True
    return costs, reported


def terminal_rewards(rewards: pa.Table) -> set[str]:
    """Request ids whose reward said ``terminal: true`` (the episode ended at that decision)."""
    import pyarrow.compute as pc

    if "terminal" not in rewards.column_names or rewards.num_rows == 0:
        return set()
    flagged = rewards.filter(pc.fill_null(rewards["terminal"], False))
    return set(flagged["request_id"].to_pylist())


def load_tables(url: str, options: JoinOptions | None = None) -> tuple[pa.Table, set[str]]:
    """The joined table of the log at ``url`` and its terminal reward ids (for ``build_trajectories``)."""
    from policy_server import join
    from policy_server.decision_log import reader

    options = options or join.JoinOptions(default_reward=0.0)
    decisions = reader.read_decisions(url)
    rewards = reader.read_rewards(url)
    table, _ = join.join_tables(decisions, rewards, options)
    return table, terminal_rewards(rewards)


def load_trajectories(url: str, options: JoinOptions | None = None) -> Trajectories:
    """The trajectories of the log at ``url`` in memory; default join: unbounded window, first reward, a step
    without a reward counts 0 (``JoinOptions(default_reward=0.0)``)."""
    table, terminal_ids = load_tables(url, options)
    return build_trajectories(table, terminal_ids)
