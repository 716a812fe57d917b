"""Manual actions from the `policy.rollouts.io/action` annotation ("<verb>/<id>")."""

from __future__ import annotations

import pytest
from engine_harness import FAIL, Driver, guardrail, make_rollout
from rollout_operator import api, engine
from rollout_operator.engine.types import EventType, Weights

P = api.Phase
STEPS = [
    {"shadow": {"duration": "1h"}},
    {"setWeight": 10},
    {"pause": {}},
    {"setWeight": 40},
    {"approval": {}},
    {"setWeight": 100},
]


def _driver_at(index: int) -> Driver:
    """A rollout sitting at step `index` (guardrails pass but the steps wait for time or humans)."""
    driver = Driver(make_rollout(STEPS, guardrails=[guardrail()], deadline="2h"))
    driver.tick()
    for n in range(index):
        driver.tick(1, action=f"promote/setup-{n}")
    assert driver.status.current_step_index == index
    return driver


@pytest.mark.parametrize(
    ("index", "phase_before", "phase_after", "weight_after"),
    [
        (0, P.SHADOW, P.PROGRESSING, 10),  # shadow ends early
        (1, P.PROGRESSING, P.PAUSED, 10),  # setWeight completes without waiting for analysis
        (2, P.PAUSED, P.PROGRESSING, 40),  # indefinite pause resumes
        (4, P.AWAITING_APPROVAL, P.PROGRESSING, 100),  # promote also approves
    ],
)
def test_promote_completes_the_current_step(index: int, phase_before: P, phase_after: P, weight_after: int) -> None:
    driver = _driver_at(index)
    assert driver.status.phase is phase_before
    decision = driver.tick(1, action="promote/a")
    assert (decision.status.phase, decision.status.current_step_index) == (phase_after, index + 1)
    assert decision.weights.candidate == weight_after
    assert decision.status.last_action_id == "a"
    assert decision.status.history[-1].reason == "ManualPromote"


def test_an_action_id_is_applied_once() -> None:
    driver = _driver_at(2)
    driver.tick(1, action="promote/same")
    assert driver.status.current_step_index == 3
    again = driver.tick(1, action="promote/same")  # the annotation is still there
    assert again.status.current_step_index == 3 and again.events == ()


def test_promote_full_skips_the_remaining_steps() -> None:
    driver = _driver_at(1)
    decision = driver.tick(1, action="promote-full/b")
    assert (decision.status.phase, decision.status.current_step_index) == (P.PROGRESSING, len(STEPS))
    assert decision.weights.candidate == 10  # traffic stays put while stable takes the new policy
    assert decision.workloads.stable.version == "v2"
    done = driver.tick(1)
    assert done.status.phase is P.PROMOTED and done.weights == Weights(0) and done.workloads.candidate is None


def test_approve_completes_an_approval() -> None:
    driver = _driver_at(4)
    decision = driver.tick(1, action="approve/c")
    assert decision.status.current_step_index == 5 and decision.status.history[-1].reason == "Approved"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_approve_elsewhere_is_ignored_with_a_warning(index: int) -> None:
    driver = _driver_at(index)
    before = driver.status
    decision = driver.tick(0, action="approve/d")
    assert (decision.status.phase, decision.status.current_step_index) == (before.phase, index)
    assert [(e.type, e.reason) for e in decision.events] == [(EventType.WARNING, "ActionIgnored")]
    assert "not an approval" in decision.events[0].message
    assert decision.status.history == before.history


@pytest.mark.parametrize("index", [0, 1, 2, 4])
def test_abort_stops_the_candidate_at_once(index: int) -> None:
    driver = _driver_at(index)
    decision = driver.tick(1, action="abort/e")
    assert decision.status.phase is P.ABORTED
    assert decision.weights == Weights(0) and decision.workloads.candidate is None
    assert decision.workloads.stable.version == "v1"
    degraded = next(c for c in decision.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("False", "Aborted")
    assert driver.tick(3600).status.phase is P.ABORTED


def test_abort_during_promotion_is_refused() -> None:
    driver = _driver_at(5)
    driver.stable_ready = False
    driver.tick(1, action="promote/f")
    assert driver.status.current_step_index == len(STEPS)
    decision = driver.tick(1, action="abort/g")
    assert decision.status.phase is P.PROGRESSING
    assert decision.events[0].reason == "ActionIgnored" and "promotion" in decision.events[0].message


@pytest.mark.parametrize("end", ["abort", "rollback"])
def test_retry_restarts_an_ended_rollout_from_the_first_step(end: str) -> None:
    driver = _driver_at(1)
    if end == "abort":
        driver.tick(1, action="abort/h")
    else:
        driver.value = FAIL
        driver.run_until(driver.phase_is(P.ROLLED_BACK))
    driver.value = 0.0
    decision = driver.tick(1, action="retry/i")
    assert (decision.status.phase, decision.status.current_step_index) == (P.SHADOW, 0)  # candidate already ready
    assert decision.status.guardrails == [] and decision.weights == Weights(0, shadow=True)
    assert [h.reason for h in decision.status.history[-2:]] == ["Retry", "CandidateReady"]
    assert decision.workloads.candidate is not None


@pytest.mark.parametrize("index", [0, 2])
def test_retry_of_a_running_rollout_is_refused(index: int) -> None:
    driver = _driver_at(index)
    decision = driver.tick(1, action="retry/j")
    assert decision.status.current_step_index == index
    assert decision.events[0].reason == "ActionIgnored" and "retry" in decision.events[0].message


@pytest.mark.parametrize("value", ["rollback/1", "Promote/1", "promote", "/x"])
def test_invalid_actions_warn_and_change_nothing_else(value: str) -> None:
    driver = _driver_at(2)
    before = driver.status
    decision = driver.tick(0, action=value)
    assert [(e.type, e.reason) for e in decision.events] == [(EventType.WARNING, "InvalidAction")]
    assert "'<verb>/<id>'" in decision.events[0].message
    assert decision.status.model_copy(update={"last_action_id": before.last_action_id}) == before
    assert driver.tick(0, action=value).events == ()  # reported once
    assert engine.parse_action(value) is not None
