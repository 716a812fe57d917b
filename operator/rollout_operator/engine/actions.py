"""Manual actions: `promote`, `promote-full`, `approve`, `abort`, `retry`.

A human sets the `policy.rollouts.io/action` annotation to "<verb>/<id>". Each id acts
once (status.lastActionId remembers it), so the annotation may stay on the object and a
restarted operator does not apply it twice. An action that does not fit the current
state is refused with a Warning event that says why and changes nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from rollout_operator import api
from rollout_operator.engine import context, steps
from rollout_operator.engine.context import Context
from rollout_operator.engine.types import ManualAction

__all__ = ["VERBS", "parse_action", "reconcile_action"]

_STEP_PHASES = {api.Phase.SHADOW, api.Phase.PROGRESSING, api.Phase.PAUSED, api.Phase.AWAITING_APPROVAL}
_RETRYABLE = {api.Phase.ROLLED_BACK, api.Phase.ABORTED, api.Phase.FAILED}


def parse_action(annotation_value: str | None) -> ManualAction | None:
    """Read "<verb>/<id>".

    A malformed value becomes an action with an empty verb and the whole text as its id, so
    the engine reports it once (as an Event) instead of failing every reconcile.
    """
    if annotation_value is None or not annotation_value.strip():
        return None
    text = annotation_value.strip()
    verb, sep, ident = text.partition("/")
    if not sep or not verb.strip() or not ident.strip():
        return ManualAction(verb="", id=text)
    return ManualAction(verb=verb.strip(), id=ident.strip())


def _at_step(ctx: Context) -> bool:
    return ctx.status.phase in _STEP_PHASES and ctx.status.current_step_index < len(ctx.spec.steps)


def _refuse(ctx: Context, action: ManualAction, why: str) -> None:
    context.warn(ctx, "ActionIgnored", f"action {action.verb}/{action.id} ignored: {why}")


def _promote(ctx: Context, action: ManualAction) -> None:
    if not _at_step(ctx):
        _refuse(ctx, action, f"the rollout is {ctx.status.phase}, not at a step; promote applies to a running step")
        return
    context.advance(ctx, "ManualPromote", f"step {ctx.status.current_step_index + 1} promoted by action {action.id}")


def _promote_full(ctx: Context, action: ManualAction) -> None:
    if not (_at_step(ctx) or ctx.status.phase is api.Phase.PENDING):
        _refuse(ctx, action, f"the rollout is {ctx.status.phase}; promote-full applies to a rollout in progress")
        return
    context.start_promotion(ctx, "ManualFullPromote", f"remaining steps skipped by action {action.id}")


def _approve(ctx: Context, action: ManualAction) -> None:
    index = ctx.status.current_step_index
    if not _at_step(ctx) or steps.kind_of(ctx.spec.steps[index]) is not steps.StepKind.APPROVAL:
        _refuse(ctx, action, "the current step is not an approval; use promote to skip a pause or other step")
        return
    context.advance(ctx, "Approved", f"step {index + 1} approved by action {action.id}")


def _abort(ctx: Context, action: ManualAction) -> None:
    if ctx.status.phase.terminal:
        _refuse(ctx, action, f"the rollout already ended ({ctx.status.phase})")
        return
    if context.is_promoting(ctx.spec, ctx.status):
        _refuse(ctx, action, "promotion is under way; apply a new policy version to replace it")
        return
    context.transition(
        ctx,
        api.Phase.ABORTED,
        "Aborted",
        f"aborted by action {action.id}; all traffic back on {ctx.status.stable_version}",
        warning=True,
    )


def _retry(ctx: Context, action: ManualAction) -> None:
    if ctx.status.phase not in _RETRYABLE:
        _refuse(ctx, action, f"retry restarts a RolledBack, Aborted or Failed rollout; this one is {ctx.status.phase}")
        return
    context.restart(ctx, "Retry", f"rollout of {ctx.version} restarted from step 1 by action {action.id}")


_HANDLERS: dict[str, Callable[[Context, ManualAction], None]] = {
    "promote": _promote,
    "promote-full": _promote_full,
    "approve": _approve,
    "abort": _abort,
    "retry": _retry,
}
VERBS = tuple(_HANDLERS)


def reconcile_action(ctx: Context) -> bool:
    """Apply a new manual action once; remember its id whatever the outcome."""
    action = ctx.observations.action
    if action is None or action.id == ctx.status.last_action_id:
        return False
    ctx.status.last_action_id = action.id
    handler = _HANDLERS.get(action.verb)
    if handler is None:
        what = (
            f"unknown action {action.verb!r} (id {action.id!r})" if action.verb else f"malformed action {action.id!r}"
        )
        context.warn(
            ctx,
            "InvalidAction",
            f"{what}: set {api.ANNOTATION_ACTION} to '<verb>/<id>' with verb one of {', '.join(VERBS)}",
        )
        return False
    handler(ctx, action)
    return False
