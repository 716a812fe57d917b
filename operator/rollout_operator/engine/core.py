"""`decide`: one reconcile of a PolicyRollout, as a pure function.

The pipeline is a flat, ordered list of reconcilers (Argo's canary.go style); each may end
the pass early. Passes repeat until nothing moves (a setWeight without guardrails completes
at once, a promote action advances a step, a rollback from weight 0 finishes at once), so the
returned status is a fixed point: deciding again with it at the same `now` and the same
observations changes nothing and emits no events. That is what makes a restarted operator,
or a replayed watch event, harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from rollout_operator import api
from rollout_operator.engine import (
    actions,
    analysis,
    context,
    kstatus,
    lifecycle,
    offline,
    progress,
    steps,
    timeutil,
    training,
)
from rollout_operator.engine.context import Context
from rollout_operator.engine.types import Decision, JobRequest, Observations, Workloads

__all__ = ["PIPELINE", "decide"]

Reconciler = Callable[[Context], bool]

PIPELINE: tuple[Reconciler, ...] = (
    lifecycle.reconcile_stable_policy,
    lifecycle.reconcile_new_rollout,
    actions.reconcile_action,
    lifecycle.reconcile_terminal,
    lifecycle.reconcile_rolling_back,
    progress.reconcile_promotion,
    lifecycle.reconcile_pending,
    lifecycle.reconcile_offline_evaluation,
    progress.reconcile_analysis,
    progress.reconcile_step_completion,
    progress.reconcile_progress_deadline,
)

_NO_CANDIDATE = {api.Phase.PROMOTED, api.Phase.ROLLED_BACK, api.Phase.ABORTED, api.Phase.FAILED}


def _run_pass(ctx: Context) -> None:
    for reconcile in PIPELINE:
        if reconcile(ctx):
            return


def _requeue_after(ctx: Context) -> float | None:
    """Seconds until a timer the engine knows of fires: analysis, step end, deadline.

    0 means an analysis is due now and no measurements came: measure, then decide again.
    None means only the outside world can move the rollout (readiness, weights, a human).
    """
    spec, status, now = ctx.spec, ctx.status, ctx.now
    started = timeutil.from_iso(status.step_started_at)
    moments = []
    if status.phase is api.Phase.PENDING and started is not None:
        moments.append(started + steps.progress_deadline(spec))
    index = status.current_step_index
    if status.phase in (api.Phase.SHADOW, api.Phase.PROGRESSING, api.Phase.PAUSED, api.Phase.AWAITING_APPROVAL):
        if index < len(spec.steps) and started is not None:
            step = spec.steps[index]
            end = steps.natural_end(step, started)
            if end is not None:
                moments.append(end)
            if steps.deadline_applies(step):
                moments.append(started + steps.progress_deadline(spec))
        due = analysis.next_analysis_at(spec, status)
        if due is not None:
            moments.append(due)
    if not moments:
        return None
    return timeutil.seconds_until(min(moments), now)


JOB_POLL_SECONDS = 5.0


def _with_jobs(requeue_after: float | None, jobs: tuple[JobRequest, ...]) -> float | None:
    """A Job's completion changes nothing on the rollout object, so look again while Jobs run."""
    if not jobs:
        return requeue_after
    return JOB_POLL_SECONDS if requeue_after is None else min(requeue_after, JOB_POLL_SECONDS)


def decide(rollout: api.PolicyRollout, observations: Observations, now: datetime) -> Decision:
    """Work out the next status, workloads, weights and events of `rollout` at `now`.

    `observations.measurements` count only when `analysis_due(rollout, now)`; the caller
    measures then. No I/O, no clock: the same inputs always give the same decision.
    Phase `Failed` is entered when the offline gate fails, refuses or its Job fails (`engine.offline`);
    `retry` starts over with a new evaluation. `Decision.jobs` are the Jobs that must exist (ids
    derived from status), `Decision.next_policy` a trained version to roll out (`engine.training`).
    """
    now = timeutil.require_utc(now)
    status = rollout.status.model_copy(deep=True)
    ctx = Context(spec=rollout.spec, observations=observations, now=now, status=status)
    for _ in range(2 * len(rollout.spec.steps) + 8):
        before = ctx.transitions
        _run_pass(ctx)
        if ctx.transitions == before:
            break
    next_policy = training.reconcile(ctx)  # independent of the phase: runs even after the rollout ended
    context.sync_weights(ctx)
    status.observed_generation = observations.generation
    kstatus.reconcile_conditions(ctx)
    assert status.stable_policy is not None  # reconcile_stable_policy always sets it
    candidate = None if status.phase in _NO_CANDIDATE else rollout.spec.policy
    jobs = offline.desired_jobs(status) + training.desired_jobs(rollout.spec, status)
    return Decision(
        status=status,
        workloads=Workloads(stable=status.stable_policy, candidate=candidate),
        weights=context.desired_weights(rollout.spec, status),
        events=tuple(ctx.events),
        requeue_after=_with_jobs(_requeue_after(ctx), jobs),
        jobs=jobs,
        next_policy=next_policy,
    )
