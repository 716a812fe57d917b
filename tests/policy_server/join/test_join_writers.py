"""A rollout's log as a cluster writes it: one directory per variant and one for the router.

Rewards arrive anywhere (a stable pod logs a reward for a candidate decision), the router logs the
decisions it forwards beside the servers' own rows, and shadow mirrors are logged by the router as
``served_by: shadow``. Pointing the joiner at the rollout's log URL must give one row per served
decision with every reward, whichever writer logged what.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from policy_server import join
from policy_server.decision_log import read_decisions, read_rewards
from policy_server.decision_log.schema import DECISION_SCHEMA, REWARD_SCHEMA
from policy_server.join import stream

T0 = 1_780_000_000.0 - 1_780_000_000.0 % 3600


def _decision(rid: str, t: float, variant: str, served_by: str | None, action: int = 1) -> dict[str, Any]:
    return {
        "schema_version": 2, "request_id": rid, "time": t, "policy_version": "v1", "variant": variant,
        "observation": [0.0, 1.0], "action": [float(action)], "action_index": action, "propensity": 0.5,
        "probabilities": [0.5, 0.5], "shield_reasons": [], "latency_ms": 0.1, "served_by": served_by,
        "assignment_probability": None if served_by is None else 0.5,
    }  # fmt: skip


def _reward(rid: str, t: float, value: float, variant: str, received_by: str) -> dict[str, Any]:
    return {"schema_version": 2, "request_id": rid, "time": t, "reward": value, "costs": None, "variant": variant,
            "policy_version": "v1", "decision_time": None, "received_by": received_by, "event_id": None}


def _write(root: Path, writer: str, decisions: list[dict], rewards: list[dict]) -> None:
    for sub, rows, schema in (("decisions", decisions, DECISION_SCHEMA), ("rewards", rewards, REWARD_SCHEMA)):
        if rows:
            (root / writer / sub).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema), root / writer / sub / f"part-0-{writer}.parquet")


@pytest.fixture
def rollout_log(tmp_path: Path) -> str:
    root = tmp_path / "pricing"
    _write(root, "stable",
           [_decision("s1", T0 + 1, "stable", None), _decision("s2", T0 + 2, "stable", None)],
           [_reward("c1", T0 + 30, 2.0, "candidate", "stable")])  # a candidate decision rewarded on a stable pod
    _write(root, "candidate",
           [_decision("c1", T0 + 3, "candidate", None),
            _decision("late-fallback", T0 + 4, "candidate", None)],  # answered after its budget: not served
           [_reward("s1", T0 + 40, 1.0, "stable", "candidate")])
    _write(root, "router",
           [_decision("s1", T0 + 1.001, "stable", "stable"), _decision("c1", T0 + 3.001, "candidate", "candidate"),
            _decision("s2", T0 + 2.001, "stable", "stable"),
            _decision("s2", T0 + 2.002, "candidate", "shadow", action=0),  # the mirror of s2, never served
            _decision("late-fallback", T0 + 4.001, "stable", "fallback")],
           [])  # fmt: skip
    return f"file://{root}"


def test_readers_take_every_writer_directory_under_the_url(rollout_log: str) -> None:
    assert read_decisions(rollout_log).num_rows == 9
    assert sorted(read_rewards(rollout_log).column("request_id").to_pylist()) == ["c1", "s1"]
    assert read_decisions(f"{rollout_log}/stable").num_rows == 2  # one variant's directory alone still works


def test_one_row_per_served_decision_the_routers_copy_and_no_shadow(rollout_log: str) -> None:
    options = join.JoinOptions(default_reward=0.0)
    table, summary = join.join_log(rollout_log, options)
    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["c1", "late-fallback", "s1", "s2"]
    assert rows["s1"]["reward"] == 1.0 and rows["c1"]["reward"] == 2.0  # rewards logged by the other variant
    assert rows["c1"]["served_by"] == "candidate" and rows["c1"]["assignment_probability"] == 0.5
    assert rows["late-fallback"]["served_by"] == "fallback" and rows["late-fallback"]["variant"] == "stable"
    assert rows["s2"]["served_by"] == "stable" and rows["s2"]["action_index"] == 1  # the served answer, not the shadow
    assert summary.total.decisions == 4 and summary.total.rewarded == 2


def test_the_streaming_join_reconciles_writers_the_same_way(rollout_log: str, tmp_path: Path) -> None:
    out = tmp_path / "joined"
    summary = stream.join_to_dataset(rollout_log, f"file://{out}", join.JoinOptions(default_reward=0.0))
    joined = pq.read_table(out).to_pylist()
    assert sorted(r["request_id"] for r in joined) == ["c1", "late-fallback", "s1", "s2"]
    assert summary.total.decisions == 4 and summary.total.rewarded == 2
