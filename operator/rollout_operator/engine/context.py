"""The reconcile context and the only functions that move a rollout between states.

Like Argo's `rolloutContext`: what was observed, plus the status under construction. Every
phase or step change goes through `transition`, so each one is recorded once in history,
announced once as an Event and leaves the weights consistent with the new state.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from rollout_operator import api
from rollout_operator.engine import analysis, lineage, steps, timeutil
from rollout_operator.engine.types import Event, EventType, Observations, Weights

__all__ = [
    "HISTORY_LIMIT",
    "Context",
    "advance",
    "desired_weights",
    "enter_step",
    "is_promoting",
    "restart",
    "roll_back",
    "start_promotion",
    "step_phase",
    "sync_weights",
    "transition",
    "warn",
]

HISTORY_LIMIT = 50
_ZERO_WEIGHT_PHASES = {
    api.Phase.PENDING,
    api.Phase.OFFLINE_EVALUATION,
    api.Phase.PROMOTED,
    api.Phase.ROLLING_BACK,
    api.Phase.ROLLED_BACK,
    api.Phase.ABORTED,
    api.Phase.FAILED,
}


@dataclasses.dataclass
class Context:
    spec: api.PolicyRolloutSpec
    observations: Observations
    now: datetime
    status: api.PolicyRolloutStatus
    events: list[Event] = dataclasses.field(default_factory=list)
    transitions: int = 0

    @property
    def version(self) -> str:
        return self.spec.policy.version


def desired_weights(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> Weights:
    """The split that the phase and step call for; 0 whenever the candidate must not serve."""
    if status.phase in _ZERO_WEIGHT_PHASES:
        return Weights(candidate=0)
    index = status.current_step_index
    if index >= len(spec.steps):
        # Promotion keeps the weight the candidate had (promote-full must not jump it to 100).
        return Weights(candidate=min(status.canary_weight, steps.step_weight(spec.steps, index)))
    return Weights(candidate=steps.step_weight(spec.steps, index), shadow=steps.step_shadow(spec.steps, index))


def sync_weights(ctx: Context) -> None:
    """Mirror the desired weights into status and note when the candidate first went live."""
    weights = desired_weights(ctx.spec, ctx.status)
    ctx.status.canary_weight = weights.candidate
    ctx.status.shadow = weights.shadow
    if weights.candidate > 0 and ctx.status.live_since is None:
        ctx.status.live_since = timeutil.to_iso(ctx.now)


def is_promoting(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> bool:
    """Past the last step and not finished: the stable variant is being replaced."""
    return status.current_step_index >= len(spec.steps) and status.phase is api.Phase.PROGRESSING


def step_phase(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus, index: int) -> api.Phase:
    """A step's phase: its normal one, or Paused while any guardrail is inconclusive."""
    if index >= len(spec.steps):
        return api.Phase.PROGRESSING
    if analysis.inconclusive_guardrails(spec, status):
        return api.Phase.PAUSED
    return steps.normal_phase(spec.steps[index])


def _event_type(phase: api.Phase, warning: bool) -> EventType:
    if warning or phase in (api.Phase.ROLLING_BACK, api.Phase.ROLLED_BACK, api.Phase.FAILED):
        return EventType.WARNING
    return EventType.NORMAL


def transition(
    ctx: Context,
    phase: api.Phase,
    reason: str,
    message: str,
    *,
    step: int | None = None,
    new_step: bool = False,
    force: bool = False,
    warning: bool = False,
) -> None:
    """Move to `phase` (and `step`); record history and an Event. No-op when nothing changes."""
    status = ctx.status
    index = status.current_step_index if step is None else step
    if not (force or new_step) and phase == status.phase and index == status.current_step_index:
        return
    status.phase = phase
    status.current_step_index = index
    if new_step or force:
        status.step_started_at = timeutil.to_iso(ctx.now)
    status.message = message
    sync_weights(ctx)
    status.history.append(
        api.HistoryEntry(
            time=timeutil.to_iso(ctx.now),
            phase=phase,
            step=index,
            weight=status.canary_weight,
            reason=reason,
            message=message,
        )
    )
    del status.history[:-HISTORY_LIMIT]
    ctx.events.append(Event(_event_type(phase, warning), reason, message))
    ctx.transitions += 1


def warn(ctx: Context, reason: str, message: str) -> None:
    """A Warning event that changes no state (ignored actions, failing measurements)."""
    ctx.events.append(Event(EventType.WARNING, reason, message))


def enter_step(ctx: Context, index: int, reason: str, message: str) -> None:
    step = ctx.spec.steps[index]
    detail = f"step {index + 1}/{len(ctx.spec.steps)} ({steps.kind_of(step)}): {message}"
    phase = step_phase(ctx.spec, ctx.status, index)
    paused_by_analysis = phase is api.Phase.PAUSED and steps.normal_phase(step) is not api.Phase.PAUSED
    transition(ctx, phase, reason, detail, step=index, new_step=True, warning=paused_by_analysis)


def start_promotion(ctx: Context, reason: str, message: str) -> None:
    """Past the last step: the stable variant takes the candidate's policy, traffic stays put.

    The candidate keeps the weight it had earned (100 after a final `setWeight: 100`); once
    the stable variant runs the same policy, traffic returns to it and the candidate goes.
    """
    ctx.status.stable_policy = api.PolicySpec.model_validate(ctx.spec.policy.model_dump())
    ctx.status.stable_version = ctx.version
    ctx.status.revisions.append(
        lineage.revision(ctx.spec, ctx.status, ctx.status.stable_policy, timeutil.to_iso(ctx.now))
    )
    del ctx.status.revisions[: -api.REVISION_LIMIT]
    transition(
        ctx,
        api.Phase.PROGRESSING,
        reason,
        f"{message}; promoting {ctx.version}: the stable variant now runs it, traffic returns to stable once ready",
        step=len(ctx.spec.steps),
        new_step=True,
    )


def advance(ctx: Context, reason: str, message: str) -> None:
    """The current step is complete: enter the next one, or promotion after the last."""
    following = ctx.status.current_step_index + 1
    if following >= len(ctx.spec.steps):
        start_promotion(ctx, reason, message)
    else:
        enter_step(ctx, following, reason, message)


def roll_back(ctx: Context, reason: str, message: str) -> None:
    transition(ctx, api.Phase.ROLLING_BACK, reason, message, warning=True)


def restart(ctx: Context, reason: str, message: str) -> None:
    """Begin a rollout of `spec.policy` from scratch (new version or `retry`)."""
    status = ctx.status
    status.candidate_version = ctx.version
    status.started_at = timeutil.to_iso(ctx.now)
    status.live_since = None
    status.last_analysis_at = None
    status.guardrails = []
    status.judge = None
    transition(ctx, api.Phase.PENDING, reason, message, step=0, force=True)
