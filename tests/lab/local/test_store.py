"""Local mode's status store: merge-patch semantics like the API server's, events kept in order and on disk."""

from __future__ import annotations

import json
from pathlib import Path

from rollout_lab.local import store
from rollout_operator import api
from rollout_operator.engine import types


def _rollout(name: str = "r") -> api.PolicyRollout:
    return api.PolicyRollout.model_validate({
        "metadata": {"name": name},
        "spec": {"policy": {"image": "i", "artifact": "/a", "version": "v2"},
                 "fallback": {"image": "i", "artifact": "/f", "version": "v1"},
                 "steps": [{"setWeight": 10}], "allowPromotionWithoutAnalysis": True},
    })


def test_status_patches_merge_and_none_deletes(tmp_path: Path) -> None:
    s = store.LocalStore(tmp_path)
    rollout = _rollout()
    assert s.status_of(rollout).phase is api.Phase.PENDING
    s.write_status(rollout, {"phase": "Progressing", "canaryWeight": 10, "message": "going"})
    s.write_status(rollout, {"canaryWeight": 20, "message": None})
    status = s.status_of(rollout)
    assert status.phase is api.Phase.PROGRESSING and status.canary_weight == 20 and status.message is None
    on_disk = json.loads((tmp_path / "r.status.json").read_text())
    assert on_disk == {"phase": "Progressing", "canaryWeight": 20}
    assert s.status_of(_rollout("other")).phase is api.Phase.PENDING  # rollouts do not share status


def test_events_are_recorded_in_order_and_reported(tmp_path: Path) -> None:
    seen: list[store.RecordedEvent] = []
    s = store.LocalStore(tmp_path, on_event=seen.append)
    rollout = _rollout()
    s.record_event(rollout, types.Event(types.EventType.NORMAL, "StepComplete", "one"))
    s.record_event(rollout, types.Event(types.EventType.WARNING, "GuardrailBreached", "two"))
    assert [e.reason for e in s.events] == ["StepComplete", "GuardrailBreached"] == [e.reason for e in seen]
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["type"], e["message"]) for e in lines] == [("Normal", "one"), ("Warning", "two")]
