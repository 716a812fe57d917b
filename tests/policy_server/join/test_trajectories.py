"""Trajectories from the joined log (policy_server/join/trajectories.py): the rules of docs/decision-log.md.

Specified: steps ordered by ``step`` whatever the log order; episodes split at a terminal flag (from the
decision's context or from a reward) and at a step gap; ``done`` on each trajectory's last step, whose next
observation is its own; ``truncated`` when no terminal flag ended it; padding has propensity 1 and mask False;
costs are 0 where not reported; bandit and shadow rows are left out; ``policy-server join --trajectories``
writes one Parquet row per step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from policy_server.decision_log.schema import DECISION_SCHEMA, REWARD_SCHEMA
from policy_server.join import JoinOptions, join_tables
from policy_server.join.trajectories import TrajectoryError, build_trajectories, load_trajectories, terminal_rewards


def _decision(rid: str, t: float, episode: str | None, step: int | None, action: int, *,
              terminal: bool | None = None, variant: str = "stable") -> dict:
    return {"schema_version": 2, "request_id": rid, "time": t, "policy_version": "v1", "variant": variant,
            "observation": [float(t), -float(t)], "action": [float(action)], "action_index": action,
            "propensity": 0.25 + 0.5 * action, "probabilities": [0.75, 0.25] if action == 0 else [0.25, 0.75],
            "shield_reasons": [], "latency_ms": 0.1, "episode_id": episode, "step": step, "terminal": terminal}


def _reward(rid: str, t: float, reward: float, *, costs: dict | None = None, terminal: bool | None = None) -> dict:
    return {"schema_version": 2, "request_id": rid, "time": t, "reward": reward,
            "costs": list(costs.items()) if costs else None, "terminal": terminal}


def _tables(decisions: list[dict], rewards: list[dict]) -> tuple[pa.Table, pa.Table]:
    return pa.Table.from_pylist(decisions, DECISION_SCHEMA), pa.Table.from_pylist(rewards, REWARD_SCHEMA)


def _log() -> tuple[pa.Table, pa.Table]:
    """Episode a: steps 0-2 logged out of order, step 1 flagged terminal by its reward, so a splits into
    a#0 (steps 0-1) and a#1 (step 2, truncated); episode b: steps 0, 1, 3 (a gap), b's step 1 terminal in
    its context; a bandit row and a shadow row beside them."""
    decisions = [
        _decision("a2", 3.0, "a", 2, 1),
        _decision("a0", 1.0, "a", 0, 0),
        _decision("a1", 2.0, "a", 1, 1),
        _decision("b0", 1.5, "b", 0, 1),
        _decision("b1", 2.5, "b", 1, 0, terminal=True),
        _decision("b3", 4.5, "b", 3, 0),
        _decision("bandit", 1.0, None, None, 0),
        _decision("shadow", 1.0, "a", 0, 0, variant="shadow"),
    ]
    rewards = [
        _reward("a0", 5.0, 1.0, costs={"risk": 0.5}),
        _reward("a1", 5.0, 2.0, terminal=True),
        _reward("a2", 5.0, 3.0),
        _reward("b0", 5.0, 10.0, costs={"risk": 1.0}),
        _reward("b1", 5.0, 20.0),
        _reward("b3", 5.0, 40.0),
        _reward("bandit", 5.0, 9.0),
    ]
    return _tables(decisions, rewards)


def test_episodes_are_ordered_split_at_terminals_and_gaps_and_padded() -> None:
    decisions, rewards = _log()
    joined, _ = join_tables(decisions, rewards, JoinOptions(default_reward=0.0))
    traj = build_trajectories(joined, terminal_rewards(rewards))
    assert traj.ids == ["a#0", "a#1", "b#0", "b#1"]
    assert traj.mask.tolist() == [[True, True], [True, False], [True, True], [True, False]]
    assert traj.rewards.tolist() == [[1.0, 2.0], [3.0, 0.0], [10.0, 20.0], [40.0, 0.0]]
    assert traj.steps.tolist() == [[0, 1], [2, -1], [0, 1], [3, -1]]
    assert traj.actions.tolist() == [[0, 1], [1, 0], [1, 0], [0, 0]]
    assert traj.propensities.tolist() == [[0.25, 0.75], [0.75, 1.0], [0.75, 0.25], [0.25, 1.0]]
    assert traj.done.tolist() == [[False, True], [True, False], [False, True], [True, False]]
    assert traj.truncated.tolist() == [False, True, False, True]
    assert traj.observations.shape == (4, 2, 2) and traj.observations[0, :, 0].tolist() == [1.0, 2.0]
    assert traj.next_observations[0, :, 0].tolist() == [2.0, 2.0]  # the last step's next observation is its own
    assert traj.costs["risk"].tolist() == [[0.5, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    assert traj.cost_reported["risk"].tolist() == [[True, False], [False, False], [True, False], [False, False]]
    assert traj.behavior_probabilities is not None and traj.behavior_probabilities.shape == (4, 2, 2)
    assert traj.behavior_probabilities[0, 1].tolist() == [0.25, 0.75]
    assert traj.n_actions == 2 and traj.horizon == 2 and traj.lengths.tolist() == [2, 1, 2, 1]


def test_a_bandit_log_has_no_trajectories_and_says_how_to_fix_it() -> None:
    decisions, rewards = _tables([_decision("x", 1.0, None, None, 0)], [_reward("x", 2.0, 1.0)])
    joined, _ = join_tables(decisions, rewards, JoinOptions())
    with pytest.raises(TrajectoryError, match=r"context\.episode_id and context\.step"):
        build_trajectories(joined)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    decisions, rewards = _log()
    for name, table in (("decisions", decisions), ("rewards", rewards)):
        (tmp_path / "log" / name).mkdir(parents=True)
        pq.write_table(table, tmp_path / "log" / name / "part-0000.parquet")
    return tmp_path / "log"


def test_load_trajectories_reads_a_log_directory(log_dir: Path) -> None:
    traj = load_trajectories(str(log_dir))
    assert traj.ids == ["a#0", "a#1", "b#0", "b#1"]
    assert np.array_equal(traj.rewards.sum(axis=1), [3.0, 3.0, 30.0, 40.0])


def test_join_cli_writes_one_row_per_step(log_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "steps"
    proc = subprocess.run(
        [sys.executable, "-m", "policy_server.cli", "join", "--logs", str(log_dir), "--out", str(out),
         "--trajectories", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["trajectories"] == 4 and summary["steps"] == 6 and summary["truncated"] == 2
    rows = pq.read_table(out).sort_by([("trajectory_id", "ascending"), ("step", "ascending")]).to_pylist()
    assert [(r["trajectory_id"], r["step"], r["done"]) for r in rows] == [
        ("a#0", 0, False), ("a#0", 1, True), ("a#1", 2, True), ("b#0", 0, False), ("b#0", 1, True), ("b#1", 3, True)]
    assert rows[0]["next_observation"] == rows[1]["observation"] and rows[0]["episode_id"] == "a"


def test_join_cli_refuses_a_shard_for_trajectories(log_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "policy_server.cli", "join", "--logs", str(log_dir), "--out", str(tmp_path / "o"),
         "--trajectories", "--shard", "0/2"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "drop --shard" in proc.stderr and proc.stderr.count("\n") == 1
