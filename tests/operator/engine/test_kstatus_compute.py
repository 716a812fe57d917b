"""Our conditions read by kstatus's own rules (tests/support/kstatus.py): what Flux will conclude."""

from __future__ import annotations

import pytest
from rollout_operator import api

from tests.support import kstatus

P = api.Phase


@pytest.mark.parametrize(("phase", "step", "expected"), [
    (P.PENDING, None, kstatus.IN_PROGRESS),
    (P.OFFLINE_EVALUATION, None, kstatus.IN_PROGRESS),
    (P.SHADOW, None, kstatus.IN_PROGRESS),
    (P.PROGRESSING, None, kstatus.IN_PROGRESS),
    (P.PAUSED, 2, kstatus.IN_PROGRESS),  # a timed pause
    (P.PAUSED, 1, kstatus.IN_PROGRESS),  # waiting for `promote`: not failed, not done
    (P.AWAITING_APPROVAL, None, kstatus.IN_PROGRESS),
    (P.PROMOTED, None, kstatus.CURRENT),
    (P.ROLLING_BACK, None, kstatus.FAILED),
    (P.ROLLED_BACK, None, kstatus.FAILED),
    (P.FAILED, None, kstatus.FAILED),
    (P.ABORTED, None, kstatus.FAILED),
])
def test_each_phase_computes_to_the_expected_kstatus(phase: P, step: int | None, expected: str) -> None:
    result = kstatus.compute(kstatus.sample(phase, step, message=f"{phase.value} message"))
    assert result.status == expected
    if expected != kstatus.CURRENT:
        assert result.message == f"{phase.value} message", "the engine's message is what users see"


def test_a_spec_change_not_yet_observed_is_in_progress_even_when_promoted() -> None:
    stale = kstatus.sample(P.PROMOTED, generation=4, observed=3)
    result = kstatus.compute(stale)
    assert result.status == kstatus.IN_PROGRESS and "generation is 4" in result.message
    assert all(c["observedGeneration"] == 3 for c in stale["status"]["conditions"])


def test_deletion_is_terminating() -> None:
    obj = kstatus.sample(P.PROGRESSING)
    obj["metadata"]["deletionTimestamp"] = "2026-11-23T00:00:00Z"
    assert kstatus.compute(obj).status == kstatus.TERMINATING


def test_at_most_one_abnormal_condition_is_true() -> None:
    """kstatus takes the first true one: Reconciling and Stalled must never both be True."""
    for phase in P:
        for step in (0, 1, 2, 3):
            conditions = {c["type"]: c["status"] for c in kstatus.sample(phase, step)["status"]["conditions"]}
            assert not (conditions["Reconciling"] == "True" and conditions["Stalled"] == "True"), phase
            assert conditions["Ready"] == ("True" if phase is P.PROMOTED else "False")


@pytest.mark.parametrize(("conditions", "expected"), [
    ([], kstatus.CURRENT),
    ([{"type": "Ready", "status": "Unknown"}], kstatus.IN_PROGRESS),
    ([{"type": "Stalled", "status": "True", "reason": "x"}, {"type": "Ready", "status": "True"}], kstatus.FAILED),
    ([{"type": "Reconciling", "status": "True", "reason": "x"}, {"type": "Ready", "status": "True"}],
     kstatus.IN_PROGRESS),
])
def test_the_rules_themselves(conditions: list[dict[str, str]], expected: str) -> None:
    obj = {"kind": "X", "metadata": {"generation": 1}, "status": {"observedGeneration": 1, "conditions": conditions}}
    assert kstatus.compute(obj).status == expected
