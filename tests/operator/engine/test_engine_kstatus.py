"""Ready / Progressing / Degraded conditions for each phase (the table in engine/kstatus.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from engine_harness import T0, make_rollout
from rollout_operator import api
from rollout_operator.engine import context, kstatus, timeutil
from rollout_operator.engine.types import Observations

P = api.Phase
STEPS = [{"setWeight": 10}, {"pause": {}}, {"pause": {"duration": "5m"}}, {"approval": {}}]


def _conditions(phase: P, index: int = 0, inconclusive: bool = False, previous: list | None = None, at=T0) -> dict:
    rollout = make_rollout(STEPS)
    status = api.PolicyRolloutStatus(
        phase=phase,
        current_step_index=index,
        guardrails=[api.GuardrailStatus(name="error-rate", consecutive_inconclusive=int(inconclusive))],
        conditions=previous or [],
        message="because",
    )
    spec = rollout.spec
    if inconclusive:
        spec = make_rollout(STEPS, guardrails=[{"name": "error-rate", "query": "q", "condition": "< 1"}]).spec
    ctx = context.Context(spec=spec, observations=Observations(generation=7), now=at, status=status)
    kstatus.reconcile_conditions(ctx)
    return {c.type: c for c in ctx.status.conditions}


@pytest.mark.parametrize(
    ("phase", "index", "inconclusive", "ready", "progressing", "degraded"),
    [
        (P.PENDING, 0, False, "False", ("True", "Pending"), "False"),
        (P.SHADOW, 0, False, "False", ("True", "Shadow"), "False"),
        (P.PROGRESSING, 0, False, "False", ("True", "Progressing"), "False"),
        (P.PROGRESSING, 4, False, "False", ("True", "Progressing"), "False"),  # promotion
        (P.PAUSED, 1, False, "False", ("False", "WaitingForHuman"), "False"),
        (P.PAUSED, 1, True, "False", ("True", "Paused"), "False"),  # inconclusive resolves by itself
        (P.PAUSED, 2, False, "False", ("True", "Paused"), "False"),
        (P.AWAITING_APPROVAL, 3, False, "False", ("False", "WaitingForHuman"), "False"),
        (P.PROMOTED, 4, False, "True", ("False", "Promoted"), "False"),
        (P.ROLLING_BACK, 0, False, "False", ("True", "RollingBack"), "True"),
        (P.ROLLED_BACK, 0, False, "False", ("False", "RolledBack"), "True"),
        (P.FAILED, 0, False, "False", ("False", "Failed"), "True"),
        (P.ABORTED, 0, False, "False", ("False", "Aborted"), "False"),
    ],
)
def test_condition_table(
    phase: P, index: int, inconclusive: bool, ready: str, progressing: tuple[str, str], degraded: str
) -> None:
    conditions = _conditions(phase, index, inconclusive)
    assert conditions["Ready"].status == ready
    assert (conditions["Progressing"].status, conditions["Progressing"].reason) == progressing
    assert conditions["Degraded"].status == degraded
    assert {c.observed_generation for c in conditions.values()} == {7}
    assert all(c.message == "because" for c in conditions.values())


def test_transition_time_changes_only_when_the_status_flips() -> None:
    first = _conditions(P.PROGRESSING)
    later = T0 + timedelta(minutes=5)
    second = _conditions(P.ROLLING_BACK, previous=list(first.values()), at=later)
    assert second["Ready"].last_transition_time == timeutil.to_iso(T0)  # False -> False
    assert second["Progressing"].last_transition_time == timeutil.to_iso(T0)  # True -> True (reason changed)
    assert second["Degraded"].last_transition_time == timeutil.to_iso(later)  # False -> True
