"""Whole rollouts driven through `decide`, read as the specification of the state machine.

The driver moves the clock, feeds measurements whenever `analysis_due` says so, and lets
the world follow the decisions (see engine_harness.Driver).
"""

from __future__ import annotations

import math

import pytest
from engine_harness import FAIL, PASS, T0, Driver, guardrail, make_rollout, measurements, with_status
from rollout_operator import api, engine
from rollout_operator.engine import timeutil
from rollout_operator.engine.types import EventType, Weights

P = api.Phase
EVERY_KIND = [
    {"shadow": {"duration": "5m"}},
    {"setWeight": 10},
    {"pause": {"duration": "10m"}},
    {"setWeight": 50},
    {"pause": {}},
    {"approval": {}},
    {"setWeight": 100},
]


def _condition(status: api.PolicyRolloutStatus, kind: str) -> api.Condition:
    return next(c for c in status.conditions if c.type == kind)


def test_healthy_rollout_goes_through_every_step_kind_to_promoted() -> None:
    driver = Driver(make_rollout(EVERY_KIND, guardrails=[guardrail()]))
    first = driver.tick()
    assert (first.status.phase, first.weights) == (P.SHADOW, Weights(0, shadow=True))
    assert first.workloads.candidate is not None and first.workloads.candidate.version == "v2"
    assert first.workloads.stable.version == "v1"  # the fallback until promotion

    paused = driver.run_until(lambda d: d.status.current_step_index == 4)
    assert (paused.status.phase, paused.weights.candidate) == (P.PAUSED, 50)
    # An indefinite pause waits for a human, however long.
    assert driver.tick(6 * 3600).status.current_step_index == 4
    assert _condition(driver.status, "Progressing").reason == "WaitingForHuman"

    driver.tick(30, action="promote/1")
    assert (driver.status.phase, driver.status.current_step_index) == (P.AWAITING_APPROVAL, 5)
    driver.tick(3600)
    assert driver.status.phase is P.AWAITING_APPROVAL
    driver.tick(30, action="approve/2")
    assert (driver.status.phase, driver.status.current_step_index, driver.last.weights.candidate) == (
        P.PROGRESSING,
        6,
        100,
    )
    promoting = driver.run_until(lambda d: d.status.current_step_index == len(EVERY_KIND))
    # Promotion: the stable variant takes v2 while the candidate keeps its traffic.
    assert promoting.status.phase is P.PROGRESSING
    assert promoting.weights.candidate == 100
    assert promoting.workloads.stable.version == "v2" and promoting.status.stable_version == "v2"
    assert promoting.workloads.candidate is not None

    done = driver.run_until(driver.phase_is(P.PROMOTED))
    assert done.weights == Weights(0)
    assert done.workloads.candidate is None and done.workloads.stable.version == "v2"
    assert _condition(done.status, "Ready").status == "True"
    assert _condition(done.status, "Degraded").status == "False"
    assert driver.measured > 0
    kinds_seen = [(h.phase, h.step, h.weight) for h in done.status.history]
    assert kinds_seen == [
        (P.PENDING, 0, 0),
        (P.SHADOW, 0, 0),
        (P.PROGRESSING, 1, 10),
        (P.PAUSED, 2, 10),
        (P.PROGRESSING, 3, 50),
        (P.PAUSED, 4, 50),
        (P.AWAITING_APPROVAL, 5, 50),
        (P.PROGRESSING, 6, 100),
        (P.PROGRESSING, 7, 100),
        (P.PROMOTED, 7, 0),
    ]
    assert all(e.type is EventType.NORMAL for e in driver.events)
    # A promoted rollout stays promoted.
    assert driver.tick(3600).events == () and driver.status.phase is P.PROMOTED


def test_set_weight_completes_only_after_a_full_interval_of_passing_analysis() -> None:
    driver = Driver(make_rollout([{"setWeight": 10}, {"setWeight": 20}], guardrails=[guardrail()], interval="2m"))
    driver.tick()
    assert driver.status.live_since == timeutil.to_iso(T0)
    assert not engine.analysis_due(driver.rollout, T0)
    assert driver.tick(119).status.current_step_index == 0  # no analysis yet
    assert engine.analysis_due(driver.rollout, T0 + api.parse_duration("2m"))
    assert driver.tick(1).status.current_step_index == 1  # passed at exactly stepStartedAt + interval
    assert driver.measured == 1


def test_without_guardrails_set_weight_steps_complete_at_once() -> None:
    decision = Driver(make_rollout([{"setWeight": 10}, {"setWeight": 30}, {"pause": {}}])).tick()
    assert (decision.status.phase, decision.status.current_step_index, decision.weights.candidate) == (P.PAUSED, 2, 30)


def test_breach_at_a_middle_step_rolls_back_and_names_the_guardrail() -> None:
    rails = [guardrail("latency-p99", "< 0.5", failureLimit=2), guardrail("error-rate", "< 1")]
    driver = Driver(make_rollout([{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}], guardrails=rails))
    driver.run_until(lambda d: d.status.current_step_index == 1)
    driver.value = FAIL
    driver.run_until(lambda d: d.events != ())
    assert (driver.status.phase, driver.last.weights.candidate) == (P.PROGRESSING, 50)  # 1 of 2 failures
    assert [e.reason for e in driver.last.events] == ["GuardrailFailed"]
    assert "latency-p99" in driver.last.events[0].message and "1/2" in driver.last.events[0].message

    rolling = driver.run_until(driver.phase_is(P.ROLLING_BACK))
    assert rolling.weights == Weights(0)
    assert rolling.workloads.candidate is not None  # removed only once traffic is off it
    assert "latency-p99" in rolling.status.message and "0.9" in rolling.status.message
    assert "< 0.5" in rolling.status.message
    breach = next(e for e in rolling.events if e.reason == "GuardrailBreached")
    assert breach.type is EventType.WARNING and "latency-p99" in breach.message
    assert _condition(rolling.status, "Degraded").status == "True"

    # The data plane has not confirmed yet: stay RollingBack.
    assert driver.tick(10, actual_weights=Weights(50)).status.phase is P.ROLLING_BACK
    assert driver.tick(10, actual_weights=None).status.phase is P.ROLLING_BACK
    done = driver.tick(10)
    assert done.status.phase is P.ROLLED_BACK
    assert done.workloads.candidate is None and done.weights == Weights(0)
    assert "latency-p99" in done.status.message
    ready = _condition(done.status, "Ready")
    assert (ready.status, ready.reason) == ("False", "RolledBack")
    assert _condition(done.status, "Degraded").status == "True"
    assert driver.tick(3600).status.phase is P.ROLLED_BACK  # terminal until a new version or retry


@pytest.mark.parametrize("bad", [None, math.nan, "missing"])
def test_inconclusive_pauses_then_rolls_back_past_the_limit(bad: float | str | None) -> None:
    rollout = make_rollout([{"setWeight": 10}, {"setWeight": 100}], guardrails=[guardrail(inconclusiveLimit=3)])
    driver = Driver(rollout)
    driver.tick()
    overrides = {"measurements": {}} if bad == "missing" else {}
    driver.value = None if bad == "missing" else bad
    seen = []
    for _ in range(10):
        decision = driver.tick(60, **({"measurements": {"other": engine.Measurement(1.0)}} if overrides else {}))
        seen.append((decision.status.phase, decision.weights.candidate))
        if decision.status.phase is not P.PAUSED:
            break
    assert seen[:2] == [(P.PAUSED, 10), (P.PAUSED, 10)]  # paused, never advanced
    assert seen[2][0] is P.ROLLING_BACK
    assert all(phase is not P.PROMOTED for phase, _ in seen)
    assert driver.status.history[-1].reason == "InconclusiveLimitExceeded"
    assert "error-rate" in driver.status.message
    assert "Inconclusive" in driver.reasons()


def test_pass_after_inconclusive_returns_to_the_steps_phase_and_counters_reset() -> None:
    driver = Driver(make_rollout([{"setWeight": 10}, {"approval": {}}], guardrails=[guardrail()]))
    driver.run_until(driver.phase_is(P.AWAITING_APPROVAL))
    driver.value = None
    driver.tick(60)
    assert driver.status.phase is P.PAUSED and driver.status.guardrails[0].consecutive_inconclusive == 1
    driver.value = PASS
    resumed = driver.tick(60)
    assert resumed.status.phase is P.AWAITING_APPROVAL
    assert resumed.status.guardrails[0].consecutive_inconclusive == 0
    assert resumed.status.history[-1].reason == "AnalysisConclusive"


@pytest.mark.parametrize(
    ("steps", "rails", "value", "ready"),
    [
        ([{"setWeight": 10}], [guardrail(inconclusiveLimit=100)], None, True),  # inconclusive-paused setWeight
        ([{"setWeight": 10}], [guardrail(condition="< 0.95", failureLimit=100)], 0.99, True),  # failing, under limit
        ([{"shadow": {"duration": "1h"}}, {"setWeight": 10}], [], PASS, True),  # shadow longer than the deadline
        ([{"setWeight": 10}], [], PASS, False),  # the candidate never became ready
    ],
)
def test_progress_deadline_rolls_back(steps: list, rails: list, value: float | None, ready: bool) -> None:
    driver = Driver(make_rollout(steps, guardrails=rails, deadline="10m"), value=value, candidate_ready=ready)
    # At weight 0 the data plane already agrees, so RollingBack may finish in the same decision.
    rolling = driver.run_until(driver.phase_is(P.ROLLING_BACK, P.ROLLED_BACK), seconds=60)
    assert "ProgressDeadlineExceeded" in [h.reason for h in rolling.status.history]
    assert "progressDeadline 10m" in rolling.status.message
    assert rolling.weights == Weights(0)
    assert driver.now - T0 >= api.parse_duration("10m")
    assert driver.now - T0 <= api.parse_duration("11m")


@pytest.mark.parametrize("step", [{"pause": {}}, {"approval": {}}, {"pause": {"duration": "2h"}}])
def test_pauses_and_approvals_are_exempt_from_the_deadline(step: dict) -> None:
    driver = Driver(make_rollout([{"setWeight": 10}, step, {"setWeight": 20}], guardrails=[guardrail()], deadline="5m"))
    for _ in range(100):
        driver.tick(60)
    assert (driver.status.current_step_index, driver.last.weights.candidate) == (1, 10)
    assert "ProgressDeadlineExceeded" not in driver.reasons()


def test_a_new_version_restarts_the_rollout() -> None:
    driver = Driver(make_rollout([{"setWeight": 10}, {"setWeight": 50}, {"pause": {}}], guardrails=[guardrail()]))
    driver.run_until(driver.phase_is(P.PAUSED))
    assert driver.last.weights.candidate == 50
    v3 = make_rollout(
        [{"setWeight": 10}, {"setWeight": 50}, {"pause": {}}], guardrails=[guardrail()], version="v3", generation=2
    )
    driver.rollout = with_status(v3, driver.status)
    driver.candidate_ready = False
    restarted = driver.tick(5)
    assert (restarted.status.phase, restarted.status.current_step_index, restarted.weights) == (
        P.PENDING,
        0,
        Weights(0),
    )
    assert restarted.status.candidate_version == "v3" and restarted.status.stable_version == "v1"
    assert restarted.status.guardrails == [] and restarted.status.live_since is None
    assert restarted.status.started_at == timeutil.to_iso(driver.now)
    assert restarted.status.observed_generation == 2
    assert restarted.workloads.candidate is not None and restarted.workloads.candidate.version == "v3"
    assert [e.reason for e in restarted.events] == ["RolloutStarted"]
    assert "replacing v2" in restarted.events[0].message
    driver.candidate_ready = True
    assert driver.tick(5).status.current_step_index == 0 and driver.last.weights.candidate == 10


def test_a_new_version_after_promotion_rolls_out_against_the_promoted_stable() -> None:
    driver = Driver(make_rollout([{"setWeight": 100}]))
    driver.run_until(driver.phase_is(P.PROMOTED))
    driver.rollout = with_status(make_rollout([{"setWeight": 100}], version="v3", generation=2), driver.status)
    decision = driver.tick(60, candidate_ready=False)
    assert decision.status.phase is P.PENDING and decision.workloads.stable.version == "v2"
    assert decision.workloads.candidate is not None and decision.workloads.candidate.version == "v3"


def test_a_spec_edit_that_keeps_the_version_keeps_progress() -> None:
    steps = [{"setWeight": 10}, {"pause": {"duration": "1h"}}, {"setWeight": 100}]
    driver = Driver(make_rollout(steps, guardrails=[guardrail()]))
    driver.run_until(driver.phase_is(P.PAUSED))
    before = driver.status
    edited = [{"setWeight": 10}, {"pause": {"duration": "2h"}}, {"setWeight": 60}, {"setWeight": 100}]
    driver.rollout = with_status(make_rollout(edited, guardrails=[guardrail()], generation=2), before)
    decision = driver.tick(1)
    assert decision.events == ()
    assert (decision.status.phase, decision.status.current_step_index) == (P.PAUSED, 1)
    assert decision.status.started_at == before.started_at and decision.status.step_started_at == before.step_started_at
    assert decision.status.observed_generation == 2
    assert {c.observed_generation for c in decision.status.conditions} == {2}


def test_deciding_again_with_the_returned_status_changes_nothing() -> None:
    driver = Driver(make_rollout(EVERY_KIND, guardrails=[guardrail()]))
    for seconds in [0, 60, 240, 60, 60, 600, 60]:
        driver.tick(seconds)
        obs = driver.observations()
        again = engine.decide(driver.rollout, obs, driver.now)
        assert again.events == ()
        assert again.status == driver.status
        assert again.weights == driver.last.weights


@pytest.mark.parametrize(
    ("steps", "rails", "ticks", "expected"),
    [
        ([{"shadow": {"duration": "5m"}}, {"setWeight": 10}], [], [0], 300.0),
        ([{"shadow": {"duration": "5m"}}, {"setWeight": 10}], [], [0, 120], 180.0),
        ([{"setWeight": 10}, {"approval": {}}], [guardrail()], [0], 60.0),  # next analysis
        ([{"setWeight": 10}, {"approval": {}}], [], [0], None),  # waits for a human only
        ([{"setWeight": 100}], [], [0, 60], None),  # promoted
    ],
)
def test_requeue_after_points_at_the_next_timer(steps: list, rails: list, ticks: list, expected: float | None) -> None:
    driver = Driver(make_rollout(steps, guardrails=rails, deadline="1h"))
    for seconds in ticks:
        decision = driver.tick(seconds)
    assert decision.requeue_after == expected


def test_history_keeps_the_last_fifty_entries() -> None:
    driver = Driver(make_rollout([{"setWeight": 10}, {"approval": {}}], guardrails=[guardrail(inconclusiveLimit=100)]))
    driver.run_until(driver.phase_is(P.AWAITING_APPROVAL))
    for i in range(80):
        driver.value = None if i % 2 == 0 else PASS
        driver.tick(60)
    history = driver.status.history
    assert len(history) == 50
    assert history[-1].phase is driver.status.phase and history[-1].time == timeutil.to_iso(driver.now)
    assert history[0].time > timeutil.to_iso(T0)


def test_measurements_count_only_when_an_analysis_is_due() -> None:
    driver = Driver(make_rollout([{"setWeight": 10}, {"setWeight": 100}], guardrails=[guardrail()]))
    driver.tick()
    early = driver.tick(10, measurements=measurements(driver.rollout, FAIL))
    assert early.status.phase is P.PROGRESSING and early.status.guardrails == []
