"""The sequential judge: counters to per-interval differences, harm, sufficiency, inconclusive, replay."""

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
KEYS = sequential.SERIES_KEYS


def spec(guardrails: list[dict[str, object]] | None = None, **judge: object) -> api.PolicyRolloutSpec:
    return api.PolicyRolloutSpec.model_validate(
        {
            "policy": {"image": "i", "artifact": "a", "version": "v2"},
            "fallback": {"image": "i", "artifact": "a", "version": "v1"},
            "steps": [{"setWeight": 10}],
            "analysis": {"guardrails": guardrails or [], "judge": {"kind": "sequential", **judge}},
        }
    )


class Counters:
    """Cumulative reward sums and counts of both variants, as Prometheus would read them."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.values = dict.fromkeys(KEYS, 0.0)

    def interval(self, gap: float, n_c: int = 200, n_s: int = 1800, sd: float = 1.0, mean: float = 1.0) -> None:
        self.values["candidate_sum"] += self.rng.normal((mean + gap) * n_c, sd * math.sqrt(n_c))
        self.values["candidate_count"] += n_c
        self.values["stable_sum"] += self.rng.normal(mean * n_s, sd * math.sqrt(n_s))
        self.values["stable_count"] += n_s

    def measurements(self) -> dict[str, Measurement]:
        return {judges.SERIES_PREFIX + k: Measurement(v) for k, v in self.values.items()}


def run(
    s: api.PolicyRolloutSpec, gap: float, intervals: int, seed: int = 0, mean: float = 1.0
) -> list[judges.Judgement]:
    counters, status, out = Counters(seed), api.PolicyRolloutStatus(stable_version="v1"), []
    judge = judges.judge_for(s)
    for _ in range(intervals):
        judgement = judge.judge(s, status, counters.measurements(), T0)
        out.append(judgement)
        status = status.model_copy(update={"judge": judgement.state, "guardrails": judgement.guardrails})
        counters.interval(gap, mean=mean)
    return out


def test_a_clear_regression_rolls_back_after_the_burn_in_naming_the_numbers() -> None:
    judgements = run(spec(minIntervals=3), gap=-0.3, intervals=30)
    first = next(i for i, j in enumerate(judgements) if j.rollback is not None)
    assert 3 <= first < 30
    rollback = judgements[first].rollback
    assert rollback is not None and rollback.reason == "SequentialHarm"
    assert "reward is worse" in rollback.message and "rolling back to v1" in rollback.message
    state = judgements[first].state
    assert state is not None and state.upper is not None and state.upper < 0 and state.estimate < 0
    assert all(j.state is not None and j.state.decision == sequential.COLLECTING for j in judgements[:3])


def test_an_equal_candidate_is_shown_no_worse_and_may_advance_early_only_when_allowed() -> None:
    allowed = run(spec(allowEarlyAdvance=True, minDetectableEffect=0.05), gap=0.0, intervals=60, seed=3)
    assert not any(j.rollback for j in allowed)
    assert any(j.sufficient is not None and j.sufficient.reason == "SequentialNoWorse" for j in allowed)
    held = run(spec(minDetectableEffect=0.05), gap=0.0, intervals=60, seed=3)
    assert all(j.sufficient is None for j in held)
    assert held[-1].state is not None and held[-1].state.decision == sequential.NO_WORSE


def test_a_cost_is_compared_with_the_sign_flipped() -> None:
    s = spec(metric="cost", cost="latency")
    assert {q.template for q in judges.judge_for(s).series(s).values()} == {"cost-sum", "cost-count"}
    assert all(q.params == {"cost": "latency"} for q in judges.judge_for(s).series(s).values())
    judgements = run(s, gap=+0.3, intervals=30)  # the candidate costs more: harm
    assert any(j.rollback is not None and "cost latency is worse" in j.rollback.message for j in judgements)


def test_missing_series_are_inconclusive_and_roll_back_at_the_limit_without_moving_the_statistic() -> None:
    s = spec(inconclusiveLimit=2)
    state, why = sequential.update(s.analysis.judge, None, dict.fromkeys(KEYS, 10.0))
    assert why is None and state.last_raw
    values = dict.fromkeys(KEYS, 20.0) | {"stable_count": None}
    state2, why = sequential.update(s.analysis.judge, state, values)
    assert why is not None and "stable_count" in why and state2.consecutive_inconclusive == 1
    assert state2.last_raw == state.last_raw and state2.intervals == 0
    status = api.PolicyRolloutStatus(judge=state2, stable_version="v1")
    measurements = {judges.SERIES_PREFIX + k: Measurement(None, "prometheus unreachable") for k in KEYS}
    judgement = judges.judge_for(s).judge(s, status, measurements, T0)
    assert judgement.rollback is not None and judgement.rollback.reason == "InconclusiveLimitExceeded"
    assert "prometheus unreachable" in judgement.rollback.message
    assert any(w.reason == "JudgeInconclusive" for w in judgement.warnings)


def test_an_interval_without_candidate_rewards_is_inconclusive() -> None:
    s = spec()
    state, _ = sequential.update(s.analysis.judge, None, dict.fromkeys(KEYS, 10.0))
    state, why = sequential.update(s.analysis.judge, state, dict.fromkeys(KEYS, 10.0) | {"stable_count": 30.0})
    assert why is not None and "candidate variant reported no reward" in why


def test_counter_reset_counts_the_new_value_as_the_increment() -> None:
    s = spec()
    state, _ = sequential.update(
        s.analysis.judge, None, {"candidate_sum": 50, "candidate_count": 100, "stable_sum": 900, "stable_count": 1000}
    )
    state, why = sequential.update(
        s.analysis.judge, state, {"candidate_sum": 5, "candidate_count": 10, "stable_sum": 1000, "stable_count": 1100}
    )
    assert why is None
    assert (state.candidate_sum, state.candidate_count, state.stable_sum, state.stable_count) == (5, 10, 100, 100)
    assert state.estimate == pytest.approx(0.5 - 1.0)


@pytest.mark.parametrize(
    ("before", "after", "mean"),
    [
        ((-50.0, 100.0), (-100.0, 200.0), -0.5),  # negative rewards: the sum falls every interval
        ((30.0, 100.0), (10.0, 200.0), -0.2),  # mixed signs: this interval's rewards were mostly negative
        ((0.0, 100.0), (0.0, 200.0), 0.0),  # zero mean
    ],
)
def test_a_falling_sum_with_a_rising_count_is_an_increment_not_a_reset(
    before: tuple[float, float], after: tuple[float, float], mean: float
) -> None:
    s = spec()
    stable = {"stable_sum": 0.0, "stable_count": 1000.0}
    state, _ = sequential.update(
        s.analysis.judge, None, {"candidate_sum": before[0], "candidate_count": before[1], **stable}
    )
    state, why = sequential.update(
        s.analysis.judge,
        state,
        {"candidate_sum": after[0], "candidate_count": after[1], "stable_sum": 0.0, "stable_count": 1100.0},
    )
    assert why is None
    assert state.candidate_count == after[1] - before[1]
    assert state.candidate_sum / state.candidate_count == pytest.approx(mean)


def test_a_server_restart_mid_stream_restarts_the_counts_and_keeps_the_statistic_right() -> None:
    """Negative rewards, then the candidate's counters restart from 0: the reset comes from the count."""
    judge = spec().analysis.judge
    readings = [(-40, 100, -500, 1000), (-80, 200, -1000, 2000), (-20, 50, -1500, 3000)]  # restarted: 50 new, sum -20
    state, why = None, None
    for c_sum, c_count, s_sum, s_count in readings:
        raw = {"candidate_sum": c_sum, "candidate_count": c_count, "stable_sum": s_sum, "stable_count": s_count}
        state, why = sequential.update(judge, state, raw)
    assert state is not None
    assert why is None
    assert (state.candidate_sum, state.candidate_count) == (-60, 150)
    assert (state.stable_sum, state.stable_count) == (-1000, 2000)
    assert state.estimate == pytest.approx(0.1)  # -0.4 - (-0.5) in both intervals


@pytest.mark.parametrize("mean", [-0.5, 0.0])
def test_false_rollbacks_stay_under_alpha_on_a_a_runs_with_negative_or_zero_mean_rewards(mean: float) -> None:
    """A/A with mean reward -0.5 rolled back 65 % of rollouts when a falling sum counted as a reset."""
    s = spec(alpha=0.05, minDetectableEffect=0.05)
    rolled_back = sum(any(j.rollback for j in run(s, 0.0, 30, seed=seed, mean=mean)) for seed in range(100))
    assert rolled_back / 100 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 100)


def test_negative_costs_are_judged_like_any_cost() -> None:
    """A cost that can be negative (a rebate) falls too; a candidate with a higher cost still rolls back."""
    s = spec(metric="cost", cost="net-cost")
    judgements = run(s, gap=0.3, intervals=30, mean=-0.5)
    assert any(j.rollback is not None and j.rollback.reason == "SequentialHarm" for j in judgements)


def test_replaying_an_analysis_from_status_gives_the_same_state() -> None:
    """Restart safety: the judge depends only on the persisted state and the new counters."""
    s = spec()
    judgements = run(s, gap=-0.05, intervals=12)
    state = judgements[-2].state
    assert state is not None
    revived = api.JudgeStatus.model_validate(state.wire())
    raw = {k: v + 100.0 for k, v in state.last_raw.items()}
    assert sequential.update(s.analysis.judge, revived, raw) == sequential.update(s.analysis.judge, state, raw)


def test_guardrails_are_still_judged_by_threshold_rules() -> None:
    s = spec([{"name": "errors", "query": "x", "condition": "< 0.5"}])
    measurements = {"errors": Measurement(0.9), **Counters().measurements()}
    judgement = judges.judge_for(s).judge(s, api.PolicyRolloutStatus(), measurements, T0)
    assert judgement.rollback is not None and judgement.rollback.reason == "GuardrailBreached"
    assert judgement.state is not None  # the judge still took its first reading


def test_false_rollbacks_stay_under_alpha_on_a_a_runs() -> None:
    """200 A/A rollouts x 40 intervals through the judge itself (the bench does 1,000+)."""
    s = spec(alpha=0.05)
    rolled_back = sum(any(j.rollback for j in run(s, 0.0, 40, seed=seed)) for seed in range(200))
    assert rolled_back / 200 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)
