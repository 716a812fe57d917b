"""Judged shadow: during a shadow step the candidate's would-be decisions are judged by
`analysis.shadowGuardrails`, and a breach rolls back before the candidate serves anyone."""

from __future__ import annotations

import pytest
from rollout_operator import api
from rollout_operator.engine import analysis, timeutil
from rollout_operator.engine.types import Measurement

from tests.operator.engine.engine_harness import FAIL, PASS, Driver, guardrail, make_rollout

P = api.Phase
SHADOW_THEN_CANARY = [{"shadow": {"duration": "5m"}}, {"setWeight": 20}, {"pause": {"duration": "5m"}}]
AGREEMENT = guardrail("shadow-agreement", condition=">= 0.5")  # PASS (0.1) fails it, FAIL (0.9) passes it


def _rollout(**extra: object) -> api.PolicyRollout:
    return make_rollout(SHADOW_THEN_CANARY, guardrails=[guardrail()], shadow_guardrails=[AGREEMENT], **extra)


def _candidate_weights(driver: Driver) -> list[int]:
    return [entry.weight for entry in driver.rollout.status.history if entry.weight is not None]


def test_a_shadow_breach_rolls_back_before_any_traffic_moves() -> None:
    driver = Driver(_rollout(), value=PASS)  # the live guardrail would pass; the shadow one fails
    weights_seen = []
    decision = driver.tick()
    for _ in range(40):
        weights_seen.append(decision.weights.candidate)
        if decision.status.phase is P.ROLLED_BACK:
            break
        decision = driver.tick(30)
    assert decision.status.phase is P.ROLLED_BACK
    assert set(weights_seen) == {0}, "the candidate never served a customer"
    assert "GuardrailBreached" in driver.reasons()
    assert "shadow-agreement" in decision.status.message
    assert decision.status.current_step_index == 0


def test_a_passing_shadow_ends_its_step_and_the_live_guardrails_take_over() -> None:
    driver = Driver(_rollout(), value=FAIL)  # shadow guardrail passes (>= 0.5); the live one would fail
    live = driver.run_until(lambda d: d.status.current_step_index == 1)
    assert "ShadowPassed" in driver.reasons()
    assert [g.name for g in live.status.guardrails] == ["shadow-agreement"]
    assert analysis.judged_guardrails(driver.rollout.spec, driver.rollout.status)[0].name == "error-rate"
    rolled_back = driver.run_until(driver.phase_is(P.ROLLED_BACK))
    assert "error-rate" in rolled_back.status.message, "live guardrails are judged once traffic moves"


def test_a_shadow_step_waits_for_its_guardrails_past_its_duration() -> None:
    driver = Driver(_rollout(), value=None)  # no data: inconclusive
    decision = driver.tick()
    for _ in range(12):  # 6 minutes: past the 5-minute shadow
        decision = driver.tick(30)
        if decision.status.phase is not P.SHADOW:
            break
    assert decision.status.phase in (P.SHADOW, P.PAUSED, P.ROLLED_BACK)
    assert decision.status.current_step_index == 0, "an unjudged shadow never completes"
    assert decision.weights.candidate == 0


def test_an_unjudged_shadow_step_ends_on_its_duration() -> None:
    driver = Driver(make_rollout(SHADOW_THEN_CANARY, guardrails=[guardrail()]), value=PASS)
    driver.run_until(lambda d: d.status.current_step_index == 1)
    assert "StepComplete" in driver.reasons() and "ShadowPassed" not in driver.reasons()
    assert driver.measured == 0, "nothing is measured in a shadow without shadow guardrails"


def test_the_first_live_analysis_waits_a_full_interval_after_the_shadow() -> None:
    driver = Driver(_rollout(interval="1m"), value=FAIL)
    driver.run_until(lambda d: d.status.current_step_index == 1)
    live_since = driver.rollout.status.live_since
    assert live_since is not None
    due = analysis.next_analysis_at(driver.rollout.spec, driver.rollout.status)
    went_live = timeutil.from_iso(live_since)
    assert due is not None and went_live is not None and (due - went_live).total_seconds() >= 60


@pytest.mark.parametrize(
    ("shadow", "live", "message"),
    [
        ([{"name": "error-rate", "query": "x", "condition": "< 1"}], [guardrail()], "unique"),
        ([AGREEMENT, AGREEMENT], [], "unique"),
    ],
)
def test_guardrail_names_are_unique_across_live_and_shadow(
    shadow: list[dict[str, object]], live: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_rollout(SHADOW_THEN_CANARY, guardrails=live, shadow_guardrails=shadow)


def test_measurements_of_the_other_list_are_ignored() -> None:
    rollout = _rollout()
    driver = Driver(rollout, value=None)
    decision = driver.tick()
    decision = driver.tick(60, measurements={"error-rate": Measurement(FAIL), "shadow-agreement": Measurement(0.9)})
    assert decision.status.phase is P.SHADOW
    assert [g.name for g in decision.status.guardrails] == ["shadow-agreement"]
