"""Which reconciles go first: the controller's priority of a rollout, read from its stored object alone."""

from __future__ import annotations

from typing import Any

import pytest
from rollout_operator import api
from rollout_operator.controller import priority_of
from rollout_operator.workqueue import Priority


def _body(phase: str | None = None, weight: int = 0, shadow: bool = False, action: str | None = None,
          last_action: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"canaryWeight": weight, "shadow": shadow}
    if phase:
        status["phase"] = phase
    if last_action:
        status["lastActionId"] = last_action
    annotations = {api.ANNOTATION_ACTION: action} if action else {}
    return {"metadata": {"name": "r", "namespace": "ns", "annotations": annotations}, "status": status}


@pytest.mark.parametrize(("body", "expected"), [
    (_body("RollingBack", weight=30), Priority.ROLLBACK),
    (_body("Progressing", weight=30, action="abort/7"), Priority.ROLLBACK),
    (_body("Progressing", weight=30), Priority.ANALYSIS),
    (_body("Shadow", shadow=True), Priority.ANALYSIS),
    (_body("Progressing", weight=30, action="abort/7", last_action="7"), Priority.ANALYSIS),  # already acted on
    (_body("Pending"), Priority.ROUTINE),
    (_body(None), Priority.ROUTINE),  # new: no status yet
    (_body("Promoted", weight=100), Priority.ROUTINE),
    (_body("RolledBack", action="abort/7"), Priority.ROUTINE),
], ids=["rolling-back", "abort-pending", "live-traffic", "shadow", "abort-done", "pending", "new", "promoted",
        "rolled-back"])
def test_priority_of(body: dict[str, Any], expected: Priority) -> None:
    assert priority_of(body) is expected
