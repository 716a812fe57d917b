"""The sequential judge under dependence: batch means keep autocorrelated interval means from faking evidence."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from rollout_operator import api
from rollout_operator.engine import judges
from rollout_operator.engine.judges import sequential
from rollout_operator.engine.types import Measurement

T0 = datetime(2026, 1, 1, tzinfo=UTC)
N_C, N_S = 200, 1800


def spec(sticky: bool = False, **judge: object) -> api.PolicyRolloutSpec:
    return api.PolicyRolloutSpec.model_validate(
        {
            "policy": {"image": "i", "artifact": "a", "version": "v2"},
            "fallback": {"image": "i", "artifact": "a", "version": "v1"},
            "steps": [{"setWeight": 10}],
            "traffic": {"stickyKey": "x-user"} if sticky else {},
            "analysis": {"judge": {"kind": "sequential", "alpha": 0.05, **judge}},
        }
    )


def sticky_means(rng: np.random.Generator, intervals: int, phi: float, n: int) -> np.ndarray:
    """Interval mean rewards of one variant whose callers stay: AR(1) around 1 with the sampling sd 1/sqrt(n)."""
    noise = rng.normal(0.0, 1.0 / math.sqrt(n), intervals)
    out = np.empty(intervals)
    out[0] = noise[0]
    for t in range(1, intervals):
        out[t] = phi * out[t - 1] + math.sqrt(1 - phi * phi) * noise[t]
    return 1.0 + out


def rolls_back(s: api.PolicyRolloutSpec, phi: float, intervals: int, seed: int) -> bool:
    """One A/A rollout: both variants equal, each with its own autocorrelated interval means."""
    rng = np.random.default_rng(seed)
    cand, stab = sticky_means(rng, intervals, phi, N_C), sticky_means(rng, intervals, phi, N_S)
    judge, status = judges.judge_for(s), api.PolicyRolloutStatus(stable_version="v1")
    values = dict.fromkeys(sequential.SERIES_KEYS, 0.0)
    for t in range(intervals + 1):
        measurements = {judges.SERIES_PREFIX + k: Measurement(v) for k, v in values.items()}
        judgement = judge.judge(s, status, measurements, T0)
        if judgement.rollback is not None:
            return True
        status = status.model_copy(update={"judge": judgement.state})
        if t < intervals:
            values["candidate_sum"] += N_C * cand[t]
            values["candidate_count"] += N_C
            values["stable_sum"] += N_S * stab[t]
            values["stable_count"] += N_S
    return False


def test_sticky_traffic_batches_twenty_intervals_unless_the_spec_says_otherwise() -> None:
    assert sequential.batch_intervals(spec()) == 1
    assert sequential.batch_intervals(spec(sticky=True)) == sequential.STICKY_BATCH == 20
    assert sequential.batch_intervals(spec(sticky=True, batchIntervals=4)) == 4
    assert sequential.batch_intervals(spec(batchIntervals=7)) == 7


def test_a_batch_enters_the_test_as_one_weighted_mean_and_decisions_come_at_batch_ends() -> None:
    s = spec(batchIntervals=3, minIntervals=2, minSamples=1)
    state, _ = sequential.update(s.analysis.judge, None, dict.fromkeys(sequential.SERIES_KEYS, 0.0), batch=3)
    assert state.batch_intervals == 3
    diffs, counts = [0.3, -0.1, 0.1, 0.2, 0.0, 0.4], [(100, 300), (50, 150), (100, 100), (80, 240), (60, 60), (90, 90)]
    totals = dict.fromkeys(sequential.SERIES_KEYS, 0.0)
    for i, (d, (n_c, n_s)) in enumerate(zip(diffs, counts, strict=True), start=1):
        totals["candidate_sum"] += n_c * (1.0 + d)
        totals["candidate_count"] += n_c
        totals["stable_sum"] += n_s * 1.0
        totals["stable_count"] += n_s
        state, why = sequential.update(s.analysis.judge, state, totals)
        assert why is None and state.batches == i // 3 and state.open_intervals == i % 3
        if i < 6:
            assert state.decision == sequential.COLLECTING and state.lower is None
    weights = [1 / (1 / n_c + 1 / n_s) for n_c, n_s in counts]
    batch_w = [sum(weights[:3]), sum(weights[3:])]
    batch_d = [np.dot(weights[:3], diffs[:3]) / batch_w[0], np.dot(weights[3:], diffs[3:]) / batch_w[1]]
    assert state.weight_sum == pytest.approx(sum(batch_w))
    assert state.weighted_diff_sum == pytest.approx(np.dot(batch_w, batch_d))
    assert state.weighted_diff_sq_sum == pytest.approx(np.dot(batch_w, np.square(batch_d)))
    assert state.decision != sequential.COLLECTING and state.lower is not None
    assert "2 batches of 3" in (state.message or "")
    decided = state.model_copy()
    totals = {k: v + 100.0 for k, v in totals.items()}
    state, _ = sequential.update(s.analysis.judge, state, totals)  # one interval into batch 3: nothing re-decided
    assert (state.decision, state.lower, state.upper) == (decided.decision, decided.lower, decided.upper)
    assert "batch 3 open (1/3 intervals)" in (state.message or "")


def test_one_interval_per_batch_is_the_per_interval_test() -> None:
    s = spec(minIntervals=2, minSamples=1)
    state, _ = sequential.update(s.analysis.judge, None, dict.fromkeys(sequential.SERIES_KEYS, 0.0))
    state, _ = sequential.update(
        s.analysis.judge, state, {"candidate_sum": 120, "candidate_count": 100, "stable_sum": 300, "stable_count": 300}
    )
    assert state.batches == 1 and state.weighted_diff_sq_sum == pytest.approx(75 * 0.2**2)


def test_autocorrelated_sticky_traffic_fakes_evidence_without_batches_and_not_with_them() -> None:
    """A/A, phi = 0.9 per variant: per-interval looks roll back most rollouts; batch means stay near alpha."""
    runs, intervals = 150, 100
    unbatched = sum(rolls_back(spec(batchIntervals=1), 0.9, intervals, seed) for seed in range(runs)) / runs
    batched = sum(rolls_back(spec(sticky=True), 0.9, intervals, seed) for seed in range(runs)) / runs
    assert unbatched > 0.25
    assert batched <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)


def test_batches_still_catch_a_clear_regression_under_sticky_traffic() -> None:
    s = spec(sticky=True, minDetectableEffect=0.05)
    rng = np.random.default_rng(7)
    cand = sticky_means(rng, 120, 0.5, N_C) - 0.3
    stab = sticky_means(rng, 120, 0.5, N_S)
    judge, status = judges.judge_for(s), api.PolicyRolloutStatus(stable_version="v1")
    values = dict.fromkeys(sequential.SERIES_KEYS, 0.0)
    first = None
    for t in range(121):
        judgement = judge.judge(s, status, {judges.SERIES_PREFIX + k: Measurement(v) for k, v in values.items()}, T0)
        if judgement.rollback is not None:
            first = t
            assert judgement.rollback.reason == "SequentialHarm" and "batches of 20" in judgement.rollback.message
            break
        status = status.model_copy(update={"judge": judgement.state})
        if t < 120:
            values["candidate_sum"] += N_C * cand[t]
            values["candidate_count"] += N_C
            values["stable_sum"] += N_S * stab[t]
            values["stable_count"] += N_S
    assert first is not None and first % 20 == 0  # decided at the end of a batch
