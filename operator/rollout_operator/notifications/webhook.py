"""The generic JSON payload: every field of the notification, camelCase, stable for receivers."""

from __future__ import annotations

from typing import Any

from rollout_operator.notifications import base

__all__ = ["JsonFormatter"]

SCHEMA_VERSION = "policy.rollouts.io/notification/v1"


class JsonFormatter:
    name = "json"

    def payload(self, notification: base.Notification) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "event": notification.primary_event.value,
            "events": sorted(e.value for e in notification.events),
            "rollout": {"namespace": notification.namespace, "name": notification.name},
            "phase": notification.phase.value,
            "previousPhase": notification.previous_phase.value,
            "step": notification.step,
            "canaryWeight": notification.weight,
            "reason": notification.reason,
            "message": notification.message,
            "time": notification.time,
            "candidateVersion": notification.candidate_version,
            "stableVersion": notification.stable_version,
        }
