"""Reconcilers for a rollout's life outside the steps: start, wait, roll back, finish.

Each `reconcile_*` takes the context and returns True to end this pass early, the way
Argo's canary.go reconcilers return early; `core.decide` runs them in a fixed order.
"""

from __future__ import annotations

from rollout_operator import api
from rollout_operator.engine import context, lineage, offline, steps, timeutil
from rollout_operator.engine.context import Context

__all__ = [
    "reconcile_new_rollout",
    "reconcile_offline_evaluation",
    "reconcile_pending",
    "reconcile_rolling_back",
    "reconcile_stable_policy",
    "reconcile_terminal",
]


def reconcile_stable_policy(ctx: Context) -> bool:
    """Until a candidate is promoted the stable variant runs the fallback."""
    if ctx.status.stable_policy is None:
        ctx.status.stable_policy = api.PolicySpec.model_validate(ctx.spec.fallback.model_dump())
    if ctx.status.stable_version is None:
        ctx.status.stable_version = ctx.status.stable_policy.version
    return False


def reconcile_new_rollout(ctx: Context) -> bool:
    """A new policy version starts over; other spec edits keep the progress made."""
    status = ctx.status
    if status.candidate_version == ctx.version:
        return False
    previous = status.candidate_version
    if previous is None:
        message = f"rollout of {ctx.version} started; stable runs {status.stable_version}"
    elif status.phase.terminal:
        message = f"rollout of {ctx.version} started after {previous} ended {status.phase}"
    else:
        message = f"rollout of {ctx.version} started, replacing {previous} at step {status.current_step_index + 1}"
    context.restart(ctx, "RolloutStarted", message)
    return False


def reconcile_terminal(ctx: Context) -> bool:
    """Promoted, RolledBack, Aborted, Failed stay put until a new version or `retry`."""
    return ctx.status.phase.terminal


def reconcile_rolling_back(ctx: Context) -> bool:
    """Wait until the data plane confirms the candidate gets no traffic, then finish."""
    if ctx.status.phase is not api.Phase.ROLLING_BACK:
        return False
    actual = ctx.observations.actual_weights
    if actual is not None and actual.candidate == 0:
        cause = ctx.status.message or "rollback requested"
        context.transition(
            ctx, api.Phase.ROLLED_BACK, "RolledBack", f"rolled back to {ctx.status.stable_version}: {cause}"
        )
    return True


def reconcile_pending(ctx: Context) -> bool:
    """Wait for the candidate workload to be ready, then enter the first stage."""
    status = ctx.status
    if status.phase is not api.Phase.PENDING:
        return False
    refusal = lineage.refusal(ctx.spec, status)
    if refusal is not None:
        context.transition(ctx, api.Phase.FAILED, "LineageMissing", f"{refusal}; the candidate got no traffic",
                           warning=True)
        return True
    if ctx.observations.candidate_ready:
        if offline.wanted(ctx):
            offline.start(ctx)
            return True
        context.enter_step(ctx, 0, "CandidateReady", f"candidate {ctx.version} is ready")
        return False
    started = timeutil.from_iso(status.step_started_at)
    if started is not None and ctx.now >= started + steps.progress_deadline(ctx.spec):
        context.roll_back(
            ctx,
            "ProgressDeadlineExceeded",
            f"candidate {ctx.version} was not ready within progressDeadline {ctx.spec.progress_deadline}; "
            "check its pods (image, artifact path, resources)",
        )
        return True
    status.message = f"waiting for candidate {ctx.version} to become ready"
    return True


def reconcile_offline_evaluation(ctx: Context) -> bool:
    """The OfflineEvaluation phase (off-policy evaluation before any traffic): see `engine.offline`."""
    return offline.reconcile(ctx)
