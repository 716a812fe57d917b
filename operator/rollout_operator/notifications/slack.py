"""A Slack incoming-webhook payload (`text` plus one coloured attachment).

`text` alone is what Slack-compatible receivers (Mattermost, Rocket.Chat, Teams' Slack
connector) all render; the attachment adds the details where supported.
"""

from __future__ import annotations

from typing import Any

from rollout_operator import api
from rollout_operator.notifications import base

__all__ = ["SlackFormatter"]

_COLOURS = {
    api.NotificationEvent.ROLLBACK: "danger",
    api.NotificationEvent.APPROVAL: "warning",
    api.NotificationEvent.PHASE: "good",
}
_ICONS = {
    api.NotificationEvent.ROLLBACK: ":rotating_light:",
    api.NotificationEvent.APPROVAL: ":raised_hand:",
    api.NotificationEvent.PHASE: ":arrow_right:",
}


class SlackFormatter:
    name = "slack"

    def payload(self, notification: base.Notification) -> dict[str, Any]:
        event = notification.primary_event
        who = f"{notification.namespace}/{notification.name}"
        if event is api.NotificationEvent.ROLLBACK:
            headline = f"PolicyRollout {who} is rolling back: {notification.message}"
        elif event is api.NotificationEvent.APPROVAL:
            headline = (f"PolicyRollout {who} waits for a human ({notification.phase.value}): "
                        f"`kubectl policyrollout promote {notification.name} -n {notification.namespace}`")
        else:
            headline = f"PolicyRollout {who}: {notification.previous_phase.value} → {notification.phase.value}"
        fields = [
            {"title": "Phase", "value": notification.phase.value, "short": True},
            {"title": "Candidate weight", "value": f"{notification.weight}%", "short": True},
            {"title": "Reason", "value": notification.reason, "short": True},
        ]
        if notification.candidate_version:
            fields.append({"title": "Candidate", "value": notification.candidate_version, "short": True})
        return {
            "text": f"{_ICONS[event]} {headline}",
            "attachments": [{
                "color": _COLOURS[event],
                "fallback": headline,
                "text": notification.message,
                "fields": fields,
                "ts": notification.time,
            }],
        }
