"""Retraining Jobs: on a cron schedule and on demand, at most one Job per trigger.

A trigger is `manual/<id>` (the `policy.rollouts.io/train` annotation, each id once: the last
one handled is kept in `status.lastTrainId`) or `schedule/<slot>` (the latest cron slot before
`now` that is newer than `status.lastScheduledAt`; missed slots collapse into one, as a
CronJob's do). Each trigger becomes a `status.trainingJobs` entry whose Job id is a hash of the
trigger, so the Job name is the same after any restart and creating it twice is impossible.
The first time a schedule is seen only its latest slot is remembered: nothing fires for the past.

Pure: `now` is given, croniter only does calendar arithmetic.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from typing import Any

import pydantic
from croniter import croniter

from rollout_operator import api
from rollout_operator.engine import timeutil
from rollout_operator.engine.context import Context
from rollout_operator.engine.types import Event, EventType, JobKind, JobObservation, JobRequest, JobState

__all__ = ["desired_jobs", "job_id", "latest_slot", "reconcile", "version_of"]

_ACTIVE = ("Pending", "Running")


def job_id(trigger: str) -> str:
    return hashlib.sha256(trigger.encode()).hexdigest()[:10]


def version_of(ident: str) -> str:
    """The artifact version a training Job produces (the rollout's next candidate version)."""
    return f"train-{ident}"


def latest_slot(schedule: str, now: datetime) -> datetime:
    """The most recent slot of `schedule` strictly before `now` (UTC)."""
    return croniter(schedule, timeutil.require_utc(now)).get_prev(datetime)


def desired_jobs(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> tuple[JobRequest, ...]:
    if spec.training is None:
        return ()
    return tuple(
        JobRequest(JobKind.TRAINING, entry.job_id, version=entry.version or version_of(entry.job_id))
        for entry in status.training_jobs
        if entry.phase in _ACTIVE
    )


def _event(ctx: Context, kind: EventType, reason: str, message: str) -> None:
    ctx.events.append(Event(kind, reason, message))


def _request(ctx: Context, trigger: str, why: str) -> None:
    ident = job_id(trigger)
    if any(entry.job_id == ident for entry in ctx.status.training_jobs):
        return
    entry = api.TrainingJobStatus(job_id=ident, trigger=trigger, created_at=timeutil.to_iso(ctx.now),
                                  version=version_of(ident))
    ctx.status.training_jobs.append(entry)
    _event(ctx, EventType.NORMAL, "TrainingRequested", f"training Job {ident} ({why}) will produce {entry.version}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _update(ctx: Context, entry: api.TrainingJobStatus, observed: JobObservation | None) -> None:
    if observed is None:
        if entry.phase == "Running":  # it existed and is gone before it finished: deleted by someone
            entry.phase = "Failed"
            entry.completed_at = timeutil.to_iso(ctx.now)
            entry.message = "the Job disappeared before it finished (deleted?); trigger training again"
            _event(ctx, EventType.WARNING, "TrainingFailed", f"training Job {entry.job_id}: {entry.message}")
        return
    if observed.state is JobState.RUNNING:
        entry.phase = "Running"
        return
    entry.completed_at = timeutil.to_iso(ctx.now)
    result = observed.result or {}
    if observed.state is JobState.FAILED:
        entry.phase = "Failed"
        error = result.get("error")
        entry.message = f"{observed.message or 'the Job failed'}" + (f": {error}" if isinstance(error, str) else "")
        _event(ctx, EventType.WARNING, "TrainingFailed", f"training Job {entry.job_id} failed: {entry.message}")
        return
    artifact, version = result.get("artifact"), result.get("version")
    if not isinstance(artifact, str) or not isinstance(version, str):
        entry.phase = "Failed"
        entry.message = ("the Job succeeded but reported no artifact in its termination message; run "
                         "`policy-server train --write-result /dev/termination-log`")
        _event(ctx, EventType.WARNING, "TrainingFailed", f"training Job {entry.job_id}: {entry.message}")
        return
    entry.phase = "Succeeded"
    entry.artifact, entry.version = artifact, version
    reported = result.get("ope")
    ope: dict[str, object] = reported if isinstance(reported, dict) else {}
    verdict = ope.get("verdict")
    entry.estimate = _number(ope.get("estimate"))
    entry.baseline_value = _number(ope.get("baselineValue"))
    entry.verdict = verdict if isinstance(verdict, str) else None
    entry.lineage, problem = _lineage(result.get("lineage"))
    entry.message = f"trained {version} at {artifact}" + (f" ({problem})" if problem else "")
    if entry.estimate is not None and entry.baseline_value is not None:
        entry.message += f" (OPE estimate {entry.estimate:.4g} vs behaviour {entry.baseline_value:.4g})"
    _event(ctx, EventType.NORMAL, "TrainingSucceeded", f"training Job {entry.job_id}: {entry.message}")


def _lineage(reported: object) -> tuple[api.Lineage | None, str | None]:
    """The lineage the Job reported, or None and why not (a trainer without lineage, or a newer schema)."""
    if reported is None:  # a custom command, or a trainer older than lineage
        return None, None
    try:
        return api.Lineage.model_validate(reported, strict=False), None
    except pydantic.ValidationError as exc:
        return None, f"its lineage is unreadable here ({exc.error_count()} problems): see the artifact's manifest"


def _next_policy(spec: api.PolicyRolloutSpec, entry: api.TrainingJobStatus) -> api.PolicySpec | None:
    """autoRollout: the candidate to roll out next, unless the trainer's own gate said no."""
    assert spec.training is not None
    if not spec.training.auto_rollout or entry.verdict in ("fail", "refuse"):
        return None
    if entry.version == spec.policy.version:
        return None
    # lineage=None: the trained version's lineage is its Job's (status.trainingJobs), not the previous version's
    return spec.policy.model_copy(update={"artifact": entry.artifact, "version": entry.version, "lineage": None})


def reconcile(ctx: Context) -> api.PolicySpec | None:
    """Track training Jobs, start new ones for new triggers; return the next candidate (autoRollout) if any."""
    spec = ctx.spec.training
    if spec is None:
        return None
    status = ctx.status
    next_policy = None
    for entry in status.training_jobs:
        if entry.phase in _ACTIVE:
            _update(ctx, entry, ctx.observations.jobs.get(entry.job_id))
            if entry.phase == "Succeeded":
                next_policy = _next_policy(ctx.spec, entry) or next_policy
    request = ctx.observations.train_request
    if request and request != status.last_train_id:
        status.last_train_id = request
        _request(ctx, f"manual/{request}", f"requested with id {request!r}")
    if spec.schedule:
        slot = latest_slot(spec.schedule, ctx.now)
        last = timeutil.from_iso(status.last_scheduled_at)
        if last is None or slot > last:
            status.last_scheduled_at = timeutil.to_iso(slot)
            if last is not None:
                _request(ctx, f"schedule/{timeutil.to_iso(slot)}", f"schedule {spec.schedule!r}, slot "
                         f"{timeutil.to_iso(slot)}")
    finished = [e for e in status.training_jobs if e.phase not in _ACTIVE]
    excess = len(finished) - spec.history_limit
    if excess > 0:
        drop = {id(e) for e in finished[:excess]}
        status.training_jobs = [e for e in status.training_jobs if id(e) not in drop]
    return next_policy
