"""Local mode's API server stand-in: the rollout's status and its events, kept in memory and on disk.

`status.json` is rewritten after every status patch (merge-patch semantics, as the Kubernetes
API applies them) and `events.jsonl` gets one line per event, so a run can be inspected after
the fact exactly like `kubectl get -o yaml` and `kubectl get events` would show it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollout_operator import api
from rollout_operator.engine import types

__all__ = ["LocalStore", "RecordedEvent"]


@dataclasses.dataclass(frozen=True)
class RecordedEvent:
    time: float
    rollout: str
    type: str
    reason: str
    message: str


class LocalStore:
    def __init__(self, workdir: Path, on_event: Callable[[RecordedEvent], None] | None = None) -> None:
        self.workdir = workdir
        self.statuses: dict[str, dict[str, Any]] = {}
        self.events: list[RecordedEvent] = []
        self.on_event = on_event
        workdir.mkdir(parents=True, exist_ok=True)

    def status_of(self, rollout: api.PolicyRollout) -> api.PolicyRolloutStatus:
        return api.PolicyRolloutStatus.model_validate(self.statuses.get(rollout.metadata.name, {}))

    def write_status(self, rollout: api.PolicyRollout, patch: dict[str, Any]) -> None:
        status = self.statuses.setdefault(rollout.metadata.name, {})
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        (self.workdir / f"{rollout.metadata.name}.status.json").write_text(json.dumps(status, indent=2))

    def record_event(self, rollout: api.PolicyRollout, event: types.Event) -> None:
        recorded = RecordedEvent(time.time(), rollout.metadata.name, event.type.value, event.reason, event.message)
        self.events.append(recorded)
        with open(self.workdir / "events.jsonl", "a") as out:
            out.write(json.dumps(dataclasses.asdict(recorded)) + "\n")
        if self.on_event is not None:
            self.on_event(recorded)
