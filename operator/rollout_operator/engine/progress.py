"""Reconcilers that move a live rollout through its steps: analysis, completion, deadline, promotion."""

from __future__ import annotations

from rollout_operator import api
from rollout_operator.engine import analysis, context, judges, steps, timeutil
from rollout_operator.engine.context import Context
from rollout_operator.engine.steps import StepKind

__all__ = [
    "reconcile_analysis",
    "reconcile_progress_deadline",
    "reconcile_promotion",
    "reconcile_step_completion",
]


def reconcile_promotion(ctx: Context) -> bool:
    """Finish once the stable variant runs the promoted version and is ready."""
    if not context.is_promoting(ctx.spec, ctx.status):
        return False
    obs = ctx.observations
    if obs.stable_running_version == ctx.version and obs.stable_ready:
        context.transition(
            ctx,
            api.Phase.PROMOTED,
            "Promoted",
            f"{ctx.version} promoted: the stable variant runs it and serves all traffic",
        )
    else:
        ctx.status.message = f"promoting {ctx.version}: waiting for the stable variant to run it and be ready"
    return True


def reconcile_analysis(ctx: Context) -> bool:
    """Judge the measurements the caller took (only when an analysis is due) with the spec's judge."""
    status = ctx.status
    measurements = ctx.observations.measurements
    if not measurements or not analysis.is_due(ctx.spec, status, ctx.now):
        return False
    judgement = judges.judge_at(ctx.spec, status).judge(ctx.spec, status, measurements, ctx.now)
    status.guardrails = judgement.guardrails
    status.judge = judgement.state
    status.last_analysis_at = timeutil.to_iso(ctx.now)
    for finding in judgement.warnings:
        context.warn(ctx, finding.reason, finding.message)
    if judgement.rollback is not None:
        context.roll_back(ctx, judgement.rollback.reason, judgement.rollback.message)
        return True
    index = status.current_step_index
    phase = context.step_phase(ctx.spec, status, index)
    if judgement.inconclusive:
        names = ", ".join(judgement.inconclusive)
        context.transition(
            ctx,
            phase,
            "Inconclusive",
            f"paused: guardrail(s) {names} inconclusive (no usable value); holding the weight",
            warning=True,
        )
        return False
    context.transition(ctx, phase, "AnalysisConclusive", "guardrails measurable again; resuming the step")
    if judgement.sufficient is not None and _may_end_early(ctx, judgement):
        context.advance(ctx, judgement.sufficient.reason, f"{judgement.sufficient.message}; ending the pause early")
        return True
    return False


def _may_end_early(ctx: Context, judgement: judges.Judgement) -> bool:
    """A timed pause may end early on sufficient evidence, after a full interval at its weight.

    Untimed pauses and approvals wait for a human whatever the evidence; setWeight steps already
    end after one passing interval.
    """
    index = ctx.status.current_step_index
    step = ctx.spec.steps[index] if index < len(ctx.spec.steps) else None
    if step is None or step.pause is None or step.pause.duration is None:
        return False
    threshold = analysis.step_pass_threshold(ctx.spec, ctx.status)
    if threshold is None or ctx.now < threshold:
        return False
    return all(g.verdict is api.Verdict.PASS for g in judgement.guardrails)


def _completion(ctx: Context) -> tuple[str, str] | None:
    """(reason, message) when the current step is complete by itself, else None."""
    status = ctx.status
    step = ctx.spec.steps[status.current_step_index]
    started = timeutil.from_iso(status.step_started_at)
    assert started is not None
    kind = steps.kind_of(step)
    if kind is StepKind.SET_WEIGHT:
        if not analysis.has_analysis(ctx.spec) or status.canary_weight == 0:
            return "StepComplete", f"weight {status.canary_weight} set (no guardrails to wait for)"
        threshold = analysis.step_pass_threshold(ctx.spec, status)
        if threshold is not None and analysis.passed_since(ctx.spec, status, threshold):
            return "AnalysisPassed", f"all guardrails passed at weight {status.canary_weight}"
        return None
    end = steps.natural_end(step, started)
    if end is not None and ctx.now >= end:
        if step.shadow is not None:
            return _shadow_completion(ctx, step.shadow)
        assert step.pause is not None  # natural_end: only shadow steps and timed pauses end by themselves
        return "StepComplete", f"pause of {step.pause.duration} ended"
    return None


def _shadow_completion(ctx: Context, shadow: api.ShadowStep) -> tuple[str, str] | None:
    """A shadow step with shadow guardrails ends only once they all passed over a full interval of shadow
    traffic: a candidate is never trusted with customers on a shadow nobody looked at."""
    if not analysis.is_shadowing(ctx.spec, ctx.status):
        return "StepComplete", f"shadow of {shadow.duration} ended"
    threshold = analysis.step_pass_threshold(ctx.spec, ctx.status)
    if threshold is None or not analysis.passed_since(ctx.spec, ctx.status, threshold):
        return None
    return "ShadowPassed", f"shadow of {shadow.duration} ended and every shadow guardrail passed"


def reconcile_step_completion(ctx: Context) -> bool:
    """Advance when the current step is done; never while a guardrail is inconclusive."""
    status = ctx.status
    if status.current_step_index >= len(ctx.spec.steps):
        return False
    if analysis.inconclusive_guardrails(ctx.spec, status):
        return False
    done = _completion(ctx)
    if done is not None:
        context.advance(ctx, *done)
    return False


def reconcile_progress_deadline(ctx: Context) -> bool:
    """Roll back a shadow or setWeight step that did not complete within progressDeadline."""
    status = ctx.status
    if status.current_step_index >= len(ctx.spec.steps):
        return False
    step = ctx.spec.steps[status.current_step_index]
    started = timeutil.from_iso(status.step_started_at)
    if not steps.deadline_applies(step) or started is None:
        return False
    if ctx.now >= started + steps.progress_deadline(ctx.spec):
        context.roll_back(
            ctx,
            "ProgressDeadlineExceeded",
            f"step {status.current_step_index + 1} ({steps.kind_of(step)}) did not complete within progressDeadline "
            f"{ctx.spec.progress_deadline}; rolling back to {status.stable_version}",
        )
        return True
    return False
