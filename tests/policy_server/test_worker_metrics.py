"""/metrics of several workers (policy_server/worker_metrics.py): one answer sums them all.

Counters, histograms and summaries add up across live and dead workers; gauges come from live
workers only (summed where they count things, the largest otherwise); a scrape writes the
answering worker's own fresh snapshot first, so no value it served can later go down.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from policy_server import metrics, worker_metrics
from tests.support.policy_server import metric, parse_metrics


def _worker(actions: list[int], latencies: list[float], *, backlog: int = 0, age: float = 0.0) -> str:
    m = metrics.ServerMetrics(variant="v", name="n", version="1", actions=["0", "1"], features=["f"])
    m.register_log_health(lambda: metrics.LogHealth({"wal": 1}, backlog, age))
    m.record_batch(np.array(actions, dtype=np.int64), np.array(latencies), {"action_mask": len(actions)})
    m.record_reward(1.5, None)
    m.set_drift({"f": 0.1 * len(actions)}, window=len(actions))
    return m.render().decode()


def test_counters_histograms_and_summaries_add_up_across_workers() -> None:
    a = _worker([0, 1, 1], [0.0002, 0.002, 0.02])
    b = _worker([1], [0.002])
    merged = parse_metrics(worker_metrics.merge([(a, True), (b, True)]).decode())
    assert metric(merged, "policy_decisions_total", action="0") == 1
    assert metric(merged, "policy_decisions_total", action="1") == 3
    assert metric(merged, "policy_decision_latency_seconds_count") == 4
    assert metric(merged, "policy_decision_latency_seconds_bucket", le="0.0025") == 3
    assert metric(merged, "policy_decision_latency_seconds_bucket", le="+Inf") == 4
    assert metric(merged, "policy_reward_count") == 2
    assert metric(merged, "policy_reward_sum") == 3.0
    assert metric(merged, "policy_shield_interventions_total", reason="action_mask") == 4
    assert metric(merged, "policy_decision_log_errors_total", stage="wal") == 2


def test_gauges_are_summed_when_they_count_and_maximised_otherwise() -> None:
    a = _worker([0, 1, 1], [0.001] * 3, backlog=10, age=2.0)
    b = _worker([1], [0.001], backlog=5, age=7.0)
    merged = parse_metrics(worker_metrics.merge([(a, True), (b, True)]).decode())
    assert metric(merged, "policy_decision_log_backlog_rows") == 15
    assert metric(merged, "policy_observation_drift_window_size") == 4
    assert metric(merged, "policy_decision_log_oldest_unflushed_age_seconds") == 7.0
    assert metric(merged, "policy_observation_drift_psi", feature="f") == pytest.approx(0.3)
    assert metric(merged, "policy_info", version="1") == 1


def test_a_dead_worker_keeps_its_counters_and_loses_its_gauges() -> None:
    live = _worker([0], [0.001], backlog=1)
    dead = _worker([1, 1], [0.001] * 2, backlog=100)
    merged = parse_metrics(worker_metrics.merge([(live, True), (dead, False)]).decode())
    assert metric(merged, "policy_decisions_total", action="1") == 2
    assert metric(merged, "policy_decision_latency_seconds_count") == 3
    assert metric(merged, "policy_decision_log_backlog_rows") == 1


def test_a_scrape_includes_the_answering_workers_fresh_counts_and_the_others_snapshots(tmp_path) -> None:
    (tmp_path / "live-1.prom").write_text(_worker([1], [0.001]))
    (tmp_path / "dead-2.prom").write_text(_worker([1, 1], [0.001] * 2))
    own = worker_metrics.SharedMetrics(tmp_path)
    merged = parse_metrics(own.scrape(_worker([0, 0], [0.001] * 2).encode()).decode())
    assert metric(merged, "policy_decisions_total", action="0") == 2
    assert metric(merged, "policy_decisions_total", action="1") == 3
    assert (tmp_path / f"live-{os.getpid()}.prom").exists()  # what this scrape served is on disk for the next one


def test_the_supervisor_marks_a_dead_worker_without_losing_its_file(tmp_path) -> None:
    (tmp_path / "live-7.prom").write_text(_worker([1], [0.001], backlog=3))
    worker_metrics.mark_dead(tmp_path, 7)
    worker_metrics.mark_dead(tmp_path, 8)  # no file (died before its first snapshot): nothing to do
    assert [p.name for p in tmp_path.iterdir()] == ["dead-7.prom"]
    merged = parse_metrics(worker_metrics.merge(worker_metrics.read_snapshots(tmp_path)).decode())
    assert metric(merged, "policy_decisions_total", action="1") == 1
    assert "policy_decision_log_backlog_rows" not in "".join(merged)
