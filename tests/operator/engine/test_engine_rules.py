"""Pure rules of the engine: guardrail conditions, action parsing, step weights, timestamps."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from engine_harness import make_rollout
from rollout_operator import api, engine
from rollout_operator.engine import steps, timeutil
from rollout_operator.engine.types import ManualAction


@pytest.mark.parametrize(
    ("value", "condition", "expected"),
    [
        (0.001, "< 0.01", True),
        (0.01, "< 0.01", False),
        (0.01, "<= 0.01", True),
        (0.96, ">= 0.95", True),
        (0.94, ">= 0.95", False),
        (1.0, "> 0.5", True),
        (3.0, "== 3", True),
        (3.0, "!= 3", False),
        (-2.0, "< -1", True),
        (2e-4, "<1e-3", True),
        (150.0, "  <  .2e3 ", True),
        (math.nan, "!= 1", False),  # NaN never passes, whatever the operator
        (math.inf, "< 1e308", False),
    ],
)
def test_evaluate_condition(value: float, condition: str, expected: bool) -> None:
    assert engine.evaluate_condition(value, condition) is expected


@pytest.mark.parametrize("condition", ["", "0.1", "<", "=< 1", "< abc", "< 1 2", "~ 1"])
def test_evaluate_condition_rejects_malformed_with_a_hint(condition: str) -> None:
    with pytest.raises(ValueError, match=r"invalid guardrail condition .*e\.g\. '< 0\.01'"):
        engine.evaluate_condition(1.0, condition)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("promote/1", ManualAction("promote", "1")),
        ("promote-full/abc-123", ManualAction("promote-full", "abc-123")),
        (" approve / 7 ", ManualAction("approve", "7")),
        ("retry/2026-01-01T00:00:00Z/x", ManualAction("retry", "2026-01-01T00:00:00Z/x")),
        ("promote", ManualAction("", "promote")),  # no id: reported as malformed, once
        ("/5", ManualAction("", "/5")),
        ("abort/", ManualAction("", "abort/")),
    ],
)
def test_parse_action(text: str | None, expected: ManualAction | None) -> None:
    assert engine.parse_action(text) == expected


STEPS = [{"shadow": {"duration": "1m"}}, {"setWeight": 5}, {"pause": {}}, {"setWeight": 25}, {"approval": {}}]


@pytest.mark.parametrize(
    ("index", "weight", "shadow"),
    [(0, 0, True), (1, 5, False), (2, 5, False), (3, 25, False), (4, 25, False), (5, 25, False)],
)
def test_step_weight_is_the_latest_set_weight(index: int, weight: int, shadow: bool) -> None:
    spec_steps = make_rollout(STEPS).spec.steps
    assert steps.step_weight(spec_steps, index) == weight
    assert steps.step_shadow(spec_steps, index) is shadow


@pytest.mark.parametrize(
    ("step", "human", "deadline"),
    [
        ({"shadow": {"duration": "1m"}}, False, True),
        ({"setWeight": 5}, False, True),
        ({"pause": {"duration": "1m"}}, False, False),
        ({"pause": {}}, True, False),
        ({"approval": {}}, True, False),
    ],
)
def test_which_steps_wait_for_humans_and_which_have_a_deadline(step: dict, human: bool, deadline: bool) -> None:
    (parsed,) = make_rollout([step]).spec.steps
    assert steps.waits_for_human(parsed) is human
    assert steps.deadline_applies(parsed) is deadline


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_timestamps_round_trip_exactly(moment: datetime) -> None:
    text = timeutil.to_iso(moment)
    assert text.endswith("Z")
    assert timeutil.from_iso(text) == moment


def test_naive_now_is_refused() -> None:
    rollout = make_rollout([{"setWeight": 10}])
    with pytest.raises(ValueError, match="timezone-aware"):
        engine.decide(rollout, engine.Observations(generation=1), datetime(2026, 1, 1))


_LIVE = {"liveSince": "2026-01-01T12:00:00Z", "stepStartedAt": "2026-01-01T12:00:00Z"}


@pytest.mark.parametrize(
    ("status", "minutes", "due"),
    [
        ({"phase": "Progressing", "currentStepIndex": 0, "canaryWeight": 10, **_LIVE}, 1, True),
        ({"phase": "Progressing", "currentStepIndex": 0, "canaryWeight": 10, **_LIVE}, 0.5, False),
        ({"phase": "Paused", "currentStepIndex": 1, "canaryWeight": 10, **_LIVE}, 1, True),
        ({"phase": "AwaitingApproval", "currentStepIndex": 2, "canaryWeight": 10, **_LIVE}, 1, True),
        # one interval after the last analysis, not after going live
        (
            {"phase": "Progressing", "canaryWeight": 10, "lastAnalysisAt": "2026-01-01T12:05:00Z", **_LIVE},
            5.5,
            False,
        ),
        ({"phase": "Progressing", "canaryWeight": 10, "lastAnalysisAt": "2026-01-01T12:05:00Z", **_LIVE}, 6, True),
        ({"phase": "Progressing", "canaryWeight": 0}, 10, False),  # not live: nothing to measure
        ({"phase": "Shadow", "canaryWeight": 0, "shadow": True}, 10, False),
        ({"phase": "Pending"}, 10, False),
        ({"phase": "RollingBack", "canaryWeight": 0, **_LIVE}, 10, False),
        ({"phase": "Progressing", "currentStepIndex": 3, "canaryWeight": 10, **_LIVE}, 10, False),  # promoting
        ({"phase": "Promoted", "currentStepIndex": 3, **_LIVE}, 10, False),
    ],
)
def test_analysis_due(status: dict, minutes: float, due: bool) -> None:
    rollout = make_rollout(
        [{"setWeight": 10}, {"pause": {}}, {"approval": {}}],
        guardrails=[{"name": "errors", "query": "q", "condition": "< 1"}],
    )
    rollout = rollout.model_copy(update={"status": api.PolicyRolloutStatus.model_validate(status)})
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=minutes)
    assert engine.analysis_due(rollout, now) is due


def test_analysis_is_never_due_without_guardrails() -> None:
    rollout = make_rollout([{"setWeight": 10}])
    status = api.PolicyRolloutStatus.model_validate({"phase": "Progressing", "canaryWeight": 10, **_LIVE})
    rollout = rollout.model_copy(update={"status": status})
    assert not engine.analysis_due(rollout, datetime(2026, 1, 2, tzinfo=UTC))
