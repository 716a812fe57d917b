"""Drift PSI, the metrics fold, and micro-batch formation (units), plus drift over HTTP."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from policy_server import artifact, batching, drift, metrics
from tests.support.policy_server import Client, metric, parse_metrics, running


def _reference(seed: int = 0) -> list[artifact.FeatureReference]:
    sample = np.random.default_rng(seed).standard_normal((20_000, 2))
    return [artifact.FeatureReference(**r) for r in artifact._reference_stats(sample)]


def test_psi_small_for_same_distribution_large_for_shift() -> None:
    ref = _reference()
    edges, fractions = np.array(ref[0].edges), np.array(ref[0].fractions)
    same = np.random.default_rng(1).standard_normal(5000)
    shifted = same + 1.0
    assert drift.psi(same, edges, fractions) < 0.02
    assert drift.psi(shifted, edges, fractions) > 0.5
    # hand-computed: all mass in the last bin
    p = np.full(10, drift.EPS)
    p[-1] = 1.0
    expected = float(np.sum((p - fractions) * np.log(p / fractions)))
    assert drift.psi(np.full(100, 99.0), edges, fractions) == pytest.approx(expected)


def test_monitor_ring_buffer_and_min_samples() -> None:
    seen = {}
    mon = drift.DriftMonitor(
        _reference(), ["a", "b"], lambda psi, n: seen.update(psi=psi, n=n), window=300, min_samples=50
    )
    mon.add(np.zeros((10, 2), np.float32))
    mon.update()
    assert seen == {"psi": {"a": 0.0, "b": 0.0}, "n": 10}
    rng = np.random.default_rng(2)
    for _ in range(20):  # 1000 rows through a 300-row window: only the last 300 count
        mon.add(np.column_stack([rng.standard_normal(50), rng.standard_normal(50) + 3]).astype(np.float32))
    mon.update()
    assert seen["n"] == 300
    assert seen["psi"]["a"] < 0.1 < 1.0 < seen["psi"]["b"]


def test_metrics_fold_counts_everything() -> None:
    m = metrics.ServerMetrics(variant="v", name="n", version="1", actions=["0", "1", "2"], features=["f"], costs=["c"])
    m.record_batch(np.array([0, 2, 2]), np.array([0.00005, 0.002, 0.3]), {"bounds": 2})
    m.record_batch(np.array([1]), np.array([0.0001]), {})
    m.record_reward(-2.0, {"c": 0.5, "new_cost": 0.0})
    s = parse_metrics(m.render().decode())
    assert [metric(s, "policy_decisions_total", action=a) for a in "012"] == [1, 1, 2]
    assert metric(s, "policy_decision_latency_seconds_bucket", le="0.0001") == 2  # le is inclusive
    assert metric(s, "policy_decision_latency_seconds_bucket", le="0.0025") == 3
    assert metric(s, "policy_decision_latency_seconds_bucket", le="+Inf") == 4
    assert metric(s, "policy_decision_latency_seconds_sum") == pytest.approx(0.30215)
    assert metric(s, "policy_batch_size_count") == 2 and metric(s, "policy_batch_size_sum") == 4
    assert metric(s, "policy_shield_interventions_total", reason="bounds") == 2
    assert metric(s, "policy_reward_sum") == -2.0
    assert metric(s, "policy_constraint_violations_total", cost="c") == 1
    assert metric(s, "policy_constraint_violations_total", cost="new_cost") == 0
    assert metric(s, "policy_cost_count", cost="new_cost") == 1


def test_batcher_groups_one_loop_iteration() -> None:
    async def scenario() -> list[list[int]]:
        loop = asyncio.get_running_loop()
        runs: list[list[int]] = []
        b = batching.MicroBatcher(loop, runs.append, max_batch=4, max_wait_ms=0)
        for i in range(10):  # all submitted before the loop runs again: batches of 4, 4, 2
            b.submit(i)
        await asyncio.sleep(0)
        b.submit(10)  # idle again: runs on the next iteration, alone
        await asyncio.sleep(0)
        return runs

    assert asyncio.run(scenario()) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10]]


def test_batcher_waits_under_load_until_expected() -> None:
    async def scenario() -> tuple[list[list[int]], float]:
        loop = asyncio.get_running_loop()
        runs: list[list[int]] = []
        b = batching.MicroBatcher(loop, runs.append, max_batch=32, max_wait_ms=50, expected=lambda: 3)
        b.submit(0)
        b.submit(1)
        await asyncio.sleep(0)  # first batch (idle server) runs at once: [0, 1]
        t = time.monotonic()
        b.submit(2)  # under load now: wait for up to 3 pending or 50 ms
        b.submit(3)
        await asyncio.sleep(0)
        assert runs == [[0, 1]]
        b.submit(4)  # third pending = expected: runs without waiting for the timer
        await asyncio.sleep(0)
        return runs, time.monotonic() - t

    runs, _ = asyncio.run(scenario())
    assert runs == [[0, 1], [2, 3, 4]]


@pytest.mark.integration
def test_drift_gauges_follow_shifted_traffic(tmp_path) -> None:
    path = artifact.write_example_model(tmp_path / "m")
    with running(path, variant="d", drift_interval_s=0.1) as srv:
        c: Client = srv.client()
        rng = np.random.default_rng(0)
        for _ in range(150):
            obs = rng.standard_normal(8)
            obs[3] += 4.0  # feature f3 drifted
            c.act(obs.tolist())
        deadline = time.monotonic() + 20
        while True:
            m = c.metrics()
            if metric(m, "policy_observation_drift_window_size", variant="d") >= 150:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert metric(m, "policy_observation_drift_psi", variant="d", feature="f3") > 1.0
    assert metric(m, "policy_observation_drift_psi", variant="d", feature="f0") < 0.5
    assert metric(m, "policy_observation_drift_psi_max", variant="d") == metric(
        m, "policy_observation_drift_psi", variant="d", feature="f3"
    )
