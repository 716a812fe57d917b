"""Staging: the server's micro-batches reach the decision log coalesced, and exactly as served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from policy_server.decision_log.reader import read_decisions
from policy_server.decision_log.writer import DecisionLog
from policy_server.log_staging import DecisionStaging


def micro_batch(start: int, size: int, *, width: int = 3, probabilities: bool = True) -> dict[str, Any]:
    """What the server hands over after one forward pass: ``size`` decisions, ids req-<start>..."""
    rows = np.arange(start, start + size)
    p = np.tile([0.25, 0.5, 0.25], (size, 1))
    return {
        "request_ids": [f"req-{i}" for i in rows],
        "time": 1_700_000_000.0 + start,
        "observations": np.stack([0.5 * rows + k for k in range(width)], axis=1).astype(np.float32),
        "actions": rows % 3,
        "propensities": p[np.arange(size), rows % 3],
        "probabilities": p if probabilities else None,
        "shield_reasons": [("action_mask",) if i % 5 == 0 else () for i in rows],
        "latency_ms": 0.5 + 0.01 * rows,
        "context_json": None if start % 2 else [f'{{"user":{i}}}' for i in rows],
    }


def expected_rows(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for b in batches:
        for i, rid in enumerate(b["request_ids"]):
            out.append(
                {
                    "request_id": rid,
                    "time": b["time"],
                    "observation": b["observations"][i].astype(np.float64).tolist(),
                    "action_index": int(b["actions"][i]),
                    "propensity": float(b["propensities"][i]),
                    "probabilities": None if b["probabilities"] is None else b["probabilities"][i].tolist(),
                    "shield_reasons": list(b["shield_reasons"][i]),
                    "latency_ms": float(b["latency_ms"][i]),
                    "context_json": None if b["context_json"] is None else b["context_json"][i],
                    "policy_version": "v7",
                    "variant": "candidate",
                }
            )
    return out


def logged_rows(table: pa.Table) -> list[dict[str, Any]]:
    keys = ("request_id", "time", "observation", "action_index", "propensity", "probabilities", "shield_reasons",
            "latency_ms", "context_json", "policy_version", "variant")  # fmt: skip
    return [{k: row[k] for k in keys} for row in table.to_pylist()]


def stage_all(log: DecisionLog, batches: list[dict[str, Any]], capacity: int) -> list[dict[str, Any]]:
    """Stage every micro-batch, flush, close the log; the rows it wrote."""
    staging = DecisionStaging(log, policy_version="v7", variant="candidate", capacity=capacity)
    for b in batches:
        staging.add(**b)
    staging.flush()
    log.close()
    return logged_rows(read_decisions(log.url))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[DecisionLog]:
    dlog = DecisionLog(str(tmp_path / "log"), flush_interval_s=60)
    yield dlog
    dlog.close()


def test_staged_micro_batches_are_logged_row_for_row(log: DecisionLog) -> None:
    batches = [micro_batch(start, size) for start, size in zip(range(0, 400, 4), [1, 4, 3, 4] * 25, strict=True)]
    assert stage_all(log, batches, capacity=64) == expected_rows(batches)


def test_a_full_staging_area_goes_to_the_log_without_a_flush(log: DecisionLog) -> None:
    staging = DecisionStaging(log, policy_version="v7", variant="candidate", capacity=10)
    for start in range(0, 12, 4):
        staging.add(**micro_batch(start, 4))
    assert log.buffered == 8  # two batches fit; the third would overflow, so the first two went out
    assert staging.rows == 4
    staging.flush()
    assert log.buffered == 12 and staging.rows == 0


def test_a_change_of_shape_hands_over_what_was_staged_first(log: DecisionLog) -> None:
    batches = [micro_batch(0, 3), micro_batch(3, 2, probabilities=False), micro_batch(5, 2, width=5), micro_batch(7, 1)]
    assert stage_all(log, batches, capacity=1000) == expected_rows(batches)


def test_batches_larger_than_the_staging_area_are_kept_whole(log: DecisionLog) -> None:
    batches = [micro_batch(0, 2), micro_batch(2, 9), micro_batch(11, 1)]
    assert stage_all(log, batches, capacity=4) == expected_rows(batches)


def test_the_callers_arrays_may_change_after_add(log: DecisionLog) -> None:
    staging = DecisionStaging(log, policy_version="v7", variant="candidate", capacity=100)
    b = micro_batch(0, 4)
    expected = expected_rows([b])
    staging.add(**b)
    b["observations"][:] = -9.0
    b["actions"][:] = 0
    staging.flush()
    log.close()
    assert logged_rows(read_decisions(log.url)) == expected


def test_capacity_must_be_positive(log: DecisionLog) -> None:
    with pytest.raises(ValueError, match="capacity"):
        DecisionStaging(log, policy_version="v7", variant="x", capacity=0)


def test_segments_cut_through_a_staged_batch_keep_each_rows_time(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "log"), segment_rows=5, flush_interval_s=60)
    batches = [micro_batch(start, 3) for start in range(0, 21, 3)]
    assert stage_all(log, batches, capacity=64) == expected_rows(batches)
    assert len(list((tmp_path / "log" / "decisions").glob("part-*.parquet"))) == 5  # 21 rows, 5 per segment
