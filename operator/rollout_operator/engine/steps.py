"""What each step means: its phase, its traffic weight, when it ends by itself.

Pure helpers on the spec; the reconcilers in `progress.py` decide *when* to use them.
The weight of a step is the most recent `setWeight` at or before it, so pauses, approvals
and shadows keep the traffic the candidate has already earned and never move it backwards.
Index `len(steps)` is the promotion stage that follows the last step.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from rollout_operator import api

__all__ = [
    "StepKind",
    "deadline_applies",
    "kind_of",
    "natural_end",
    "normal_phase",
    "progress_deadline",
    "step_shadow",
    "step_weight",
    "waits_for_human",
]


class StepKind(enum.StrEnum):
    SHADOW = "shadow"
    SET_WEIGHT = "set_weight"
    PAUSE = "pause"
    APPROVAL = "approval"


_PHASE = {
    StepKind.SHADOW: api.Phase.SHADOW,
    StepKind.SET_WEIGHT: api.Phase.PROGRESSING,
    StepKind.PAUSE: api.Phase.PAUSED,
    StepKind.APPROVAL: api.Phase.AWAITING_APPROVAL,
}


def kind_of(step: api.Step) -> StepKind:
    return StepKind(step.kind)


def step_weight(steps: list[api.Step], index: int) -> int:
    """Candidate weight at `index`: the latest setWeight at or before it, 0 before any."""
    for step in reversed(steps[: index + 1]):
        if step.set_weight is not None:
            return step.set_weight
    return 0


def step_shadow(steps: list[api.Step], index: int) -> bool:
    """Whether the candidate sees mirrored traffic at `index`."""
    return index < len(steps) and steps[index].shadow is not None


def normal_phase(step: api.Step) -> api.Phase:
    """The phase a step shows while nothing is wrong with it."""
    return _PHASE[kind_of(step)]


def waits_for_human(step: api.Step) -> bool:
    """Approvals and pauses without a duration end only by a manual action."""
    kind = kind_of(step)
    return kind is StepKind.APPROVAL or (kind is StepKind.PAUSE and step.pause is not None and not step.pause.duration)


def natural_end(step: api.Step, started: datetime) -> datetime | None:
    """When a timed step (shadow, timed pause) completes by itself; None for the others."""
    if step.shadow is not None:
        return started + api.parse_duration(step.shadow.duration)
    if step.pause is not None and step.pause.duration:
        return started + api.parse_duration(step.pause.duration)
    return None


def deadline_applies(step: api.Step) -> bool:
    """Shadow and setWeight steps must finish within progressDeadline.

    Pauses are exempt: a timed pause ends by itself, an indefinite one and an approval wait
    for humans, and an analysis that stays inconclusive there is bounded by inconclusiveLimit.
    """
    return kind_of(step) in (StepKind.SHADOW, StepKind.SET_WEIGHT)


def progress_deadline(spec: api.PolicyRolloutSpec) -> timedelta:
    return api.parse_duration(spec.progress_deadline)
