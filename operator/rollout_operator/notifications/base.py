"""What a notification says, how a payload is built from it, and where it goes."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from rollout_operator import api

__all__ = ["Formatter", "Notification", "Target"]


@dataclasses.dataclass(frozen=True)
class Notification:
    """One change worth telling a human about.

    `events` are the subscription names it matches (`api.NotificationEvent`): a rollback is
    also a phase change, so it matches both `rollback` and `phase`, and a target subscribed to
    either receives it once.
    """

    events: frozenset[api.NotificationEvent]
    namespace: str
    name: str
    phase: api.Phase
    previous_phase: api.Phase
    step: int | None
    weight: int
    reason: str
    message: str
    time: str
    candidate_version: str | None = None
    stable_version: str | None = None

    @property
    def primary_event(self) -> api.NotificationEvent:
        """The most specific event, for titles: rollback, then approval, then phase."""
        for event in (api.NotificationEvent.ROLLBACK, api.NotificationEvent.APPROVAL):
            if event in self.events:
                return event
        return api.NotificationEvent.PHASE


class Formatter(Protocol):
    """Builds the JSON body a receiver expects."""

    name: str

    def payload(self, notification: Notification) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Target:
    """A receiver: URL, payload format and the events it wants."""

    url: str
    format: api.NotificationFormat = api.NotificationFormat.JSON
    events: frozenset[api.NotificationEvent] = frozenset(api.NotificationEvent)

    def wants(self, notification: Notification) -> bool:
        return bool(self.events & notification.events)

    @classmethod
    def from_spec(cls, spec: api.NotificationSpec) -> Target:
        return cls(url=spec.url, format=spec.format, events=frozenset(spec.events))
