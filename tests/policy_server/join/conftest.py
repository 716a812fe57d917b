"""Hand-built decision logs for the joiner's tests: several writers, segments as the server writes them.

``log`` gives a :class:`LogBuilder`; each writer's rows go to its own segments under ``decisions/`` and
``rewards/`` (as replicas write them), and rewards can be written in the schema-1 layout (no attribution).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from policy_server.decision_log.schema import DECISION_SCHEMA, REWARD_SCHEMA

T0 = 1_780_000_000.0 - 1_780_000_000.0 % 3600  # an hour boundary
REWARD_SCHEMA_V1 = pa.schema([REWARD_SCHEMA.field(n) for n in ("schema_version", "request_id", "time", "reward",
                                                                 "costs")])


class LogBuilder:
    """Decisions and reward rows by writer; ``write()`` puts them on disk, one segment per (writer, group)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.decisions: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        self.rewards: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
        self.times: dict[str, float] = {}

    def decision(self, rid: str, t: float, *, variant: str = "stable", writer: str = "w1", segment: int = 0) -> None:
        self.times[rid] = t
        self.decisions[(writer, segment)].append({
            "schema_version": 2, "request_id": rid, "time": t, "policy_version": "v1", "variant": variant,
            "observation": [t - T0, 1.0], "action": [1.0], "action_index": 1, "propensity": 0.5,
            "probabilities": [0.5, 0.5], "shield_reasons": [], "latency_ms": 0.1, "served_by": writer,
        })

    def reward(self, rid: str, t: float, reward: float, *, event: str | None = None,
               costs: dict[str, float] | None = None, writer: str = "w2", segment: int = 0, schema: int = 2,
               decision_time: float | None = None) -> None:
        row: dict[str, Any] = {"schema_version": schema, "request_id": rid, "time": t, "reward": reward,
                               "costs": list(costs.items()) if costs else None}
        if schema == 2:
            known = self.times.get(rid)
            row |= {"event_id": event, "variant": None, "received_by": writer, "policy_version": "v1",
                    "decision_time": decision_time if decision_time is not None else
                    (None if known is None else round(known, 3))}
        self.rewards[(writer, segment, schema)].append(row)

    def write(self) -> str:
        (self.root / "decisions").mkdir(parents=True, exist_ok=True)
        (self.root / "rewards").mkdir(parents=True, exist_ok=True)
        for (writer, segment), rows in self.decisions.items():
            table = pa.Table.from_pylist(rows, DECISION_SCHEMA)
            pq.write_table(table, self.root / "decisions" / f"part-{segment:04d}-{writer}.parquet")
        for (writer, segment, schema), rows in self.rewards.items():
            table = pa.Table.from_pylist(rows, REWARD_SCHEMA if schema == 2 else REWARD_SCHEMA_V1)
            pq.write_table(table, self.root / "rewards" / f"part-{segment:04d}-{writer}-v{schema}.parquet")
        return str(self.root)


@pytest.fixture
def log(tmp_path: Path) -> LogBuilder:
    return LogBuilder(tmp_path / "log")
