"""The OfflineEvaluation phase: judge the candidate on logged decisions before any traffic.

Pending (candidate ready) enters OfflineEvaluation when the spec has `offlineEvaluation`; the
engine then asks for one `policy-server ope` Job (`Decision.jobs`) whose id derives from the
candidate version and the rollout's start time, both in status, so a restarted operator asks
for the very same Job. The Job reports a JSON result (its termination message); the verdict
moves the rollout on to its first step (pass) or to Failed (fail, refuse, Job failure, no
result). The candidate never gets traffic in this phase: its weight is 0 by `desired_weights`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal

from rollout_operator import api
from rollout_operator.engine import context, timeutil
from rollout_operator.engine.context import Context
from rollout_operator.engine.types import JobKind, JobObservation, JobRequest, JobState

__all__ = ["desired_jobs", "job_id", "parse_result", "reconcile", "start", "wanted"]

# How an evaluation ended (`api.OfflineEvaluationStatus.phase` less "Running").
_Outcome = Literal["Passed", "Failed", "Refused", "Error"]
_VERDICT_PHASE: dict[str, _Outcome] = {"pass": "Passed", "fail": "Failed", "refuse": "Refused"}


def job_id(version: str, started_at: str | None) -> str:
    """Deterministic id of the evaluation of `version` started at `started_at`."""
    return hashlib.sha256(f"{version}|{started_at or ''}".encode()).hexdigest()[:10]


def wanted(ctx: Context) -> bool:
    return ctx.spec.offline_evaluation is not None


def start(ctx: Context) -> None:
    """Enter OfflineEvaluation: record which Job judges this candidate."""
    spec = ctx.spec.offline_evaluation
    assert spec is not None
    ident = job_id(ctx.version, ctx.status.started_at)
    ctx.status.offline_evaluation = api.OfflineEvaluationStatus(
        job_id=ident,
        candidate_version=ctx.version,
        started_at=timeutil.to_iso(ctx.now),
        baseline=spec.baseline,
    )
    context.transition(
        ctx,
        api.Phase.OFFLINE_EVALUATION,
        "OfflineEvaluationStarted",
        f"evaluating {ctx.version} offline on {spec.dataset} ({', '.join(spec.estimators)} vs {spec.baseline}) "
        f"in Job {ident}",
    )


def desired_jobs(status: api.PolicyRolloutStatus) -> tuple[JobRequest, ...]:
    evaluation = status.offline_evaluation
    if status.phase is not api.Phase.OFFLINE_EVALUATION or evaluation is None or evaluation.phase != "Running":
        return ()
    return (JobRequest(JobKind.OFFLINE_EVALUATION, evaluation.job_id),)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_result(result: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """(verdict, reason, status fields) from the Job's JSON, or None when it is not a gate result."""
    verdict = result.get("verdict")
    if verdict not in _VERDICT_PHASE or not isinstance(result.get("estimates"), list):
        return None
    estimates = []
    for entry in result["estimates"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("estimator"), str):
            return None
        estimates.append(api.EstimateStatus(
            estimator=entry["estimator"],
            value=_number(entry.get("value")),
            lower_bound=_number(entry.get("lowerBound")),
            ci_low=_number(entry.get("ciLow")),
            ci_high=_number(entry.get("ciHigh")),
            verdict=entry.get("verdict") if isinstance(entry.get("verdict"), str) else None,
        ))
    constraints = []
    for entry in result.get("constraints") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("criterion"), str):
            return None
        constraints.append(api.ConstraintStatus(
            cost=entry["criterion"].removeprefix("cost:"),
            estimator=entry.get("estimator") if isinstance(entry.get("estimator"), str) else None,
            value=_number(entry.get("value")),
            upper_bound=_number(entry.get("upperBound")),
            budget=_number(entry.get("budget")),
            baseline_value=_number(entry.get("baselineValue")),
            verdict=entry.get("verdict") if isinstance(entry.get("verdict"), str) else None,
        ))
    n = result.get("n")
    fields = {
        "fairness": _fairness(result.get("fairness")),
        "constraints": constraints,
        "baseline_value": _number(result.get("baselineValue")),
        "required": _number(result.get("required")),
        "estimates": estimates,
        "ess": _number(result.get("ess")),
        "n": n if isinstance(n, int) and not isinstance(n, bool) else None,
        "unsupported_mass": _number(result.get("unsupportedMass")),
        "mean_weight": _number(result.get("meanWeight")),
        "bound": result.get("bound") if isinstance(result.get("bound"), str) else None,
    }
    return str(verdict), str(result.get("reason") or verdict), fields


def _fairness(entry: Any) -> api.FairnessStatus | None:
    """The fairness criterion's part of the result (policy_server/ope/fairness.py), or None without one."""
    if not isinstance(entry, dict) or not isinstance(entry.get("groupKey"), str):
        return None
    groups = [
        api.FairnessGroupStatus(
            group=g["group"],
            n=g.get("n") if isinstance(g.get("n"), int) and not isinstance(g.get("n"), bool) else None,
            **{k: _number(g.get(k)) for k in ("ess", "value", "lower", "upper")},
        )
        for g in entry.get("groups") or []
        if isinstance(g, dict) and isinstance(g.get("group"), str)
    ]
    text = {k: entry.get(k) if isinstance(entry.get(k), str) else None for k in ("metric", "mode", "verdict")}
    return api.FairnessStatus(
        group_key=entry["groupKey"], disparity=_number(entry.get("disparity")), bound=_number(entry.get("bound")),
        max=_number(entry.get("max")), groups=groups, **text,
    )


def _summary(evaluation: api.OfflineEvaluationStatus) -> str:
    parts = []
    for e in evaluation.estimates:
        value = "n/a" if e.value is None else f"{e.value:.4g}"
        bound = "" if e.lower_bound is None else f" (lower bound {e.lower_bound:.4g})"
        parts.append(f"{e.estimator} {value}{bound}")
    for c in evaluation.constraints:
        if c.estimator is None:
            parts.append(f"cost {c.cost}: {c.verdict}")
            continue
        value = "n/a" if c.value is None else f"{c.value:.4g}"
        upper = "n/a" if c.upper_bound is None else f"{c.upper_bound:.4g}"
        budget = "n/a" if c.budget is None else f"{c.budget:.4g}"
        parts.append(f"cost {c.cost} {c.estimator} {value} (upper bound {upper}, budget {budget})")
    fair = evaluation.fairness
    if fair is not None:
        bound = "n/a" if fair.bound is None else f"{fair.bound:.4g}"
        limit = "n/a" if fair.max is None else f"{fair.max:.4g}"
        parts.append(f"fairness {fair.metric} {fair.mode} by {fair.group_key}: bound {bound} (max {limit}) "
                     f"{fair.verdict}")
    baseline = "n/a" if evaluation.baseline_value is None else f"{evaluation.baseline_value:.4g}"
    required = "n/a" if evaluation.required is None else f"{evaluation.required:.4g}"
    ess = "n/a" if evaluation.ess is None else f"{evaluation.ess:.0f}"
    weight = "" if evaluation.mean_weight is None else f", mean weight {evaluation.mean_weight:.3g}"
    bound = "" if evaluation.bound is None else f", {evaluation.bound} bound"
    return (
        f"{'; '.join(parts)}; {evaluation.baseline} baseline {baseline}, required {required}, ESS {ess}{weight}{bound}"
    )


def _fail(ctx: Context, phase: _Outcome, reason: str, message: str) -> None:
    evaluation = ctx.status.offline_evaluation
    assert evaluation is not None
    evaluation.phase = phase
    evaluation.completed_at = timeutil.to_iso(ctx.now)
    evaluation.message = message
    context.transition(ctx, api.Phase.FAILED, reason, f"{message}; the candidate got no traffic", warning=True)


def _finish(ctx: Context, observed: JobObservation) -> bool:
    """Record the finished Job's verdict and move the phase on; True when the rollout failed."""
    evaluation = ctx.status.offline_evaluation
    assert evaluation is not None
    if observed.state is JobState.FAILED:
        detail = observed.message or "no reason given"
        if observed.result and isinstance(observed.result.get("error"), str):
            detail = f"{detail}: {observed.result['error']}"
        _fail(ctx, "Error", "OfflineEvaluationJobFailed",
              f"offline evaluation Job {evaluation.job_id} failed ({detail}); check the dataset URL and the "
              "artifacts, then `retry`")
        return True
    parsed = parse_result(observed.result) if observed.result is not None else None
    if parsed is None:
        _fail(ctx, "Error", "OfflineEvaluationNoResult",
              f"offline evaluation Job {evaluation.job_id} succeeded but reported no gate result in its termination "
              "message; run `policy-server ope --write-result /dev/termination-log` in the Job")
        return True
    verdict, reason, fields = parsed
    for name, value in fields.items():
        setattr(evaluation, name, value)
    evaluation.phase = _VERDICT_PHASE[verdict]
    evaluation.completed_at = timeutil.to_iso(ctx.now)
    evaluation.message = reason
    summary = _summary(evaluation)
    if verdict == "pass":
        context.enter_step(ctx, 0, "OfflineEvaluationPassed", f"offline evaluation passed: {summary}")
        return False
    if verdict == "fail":
        _fail(ctx, "Failed", "OfflineEvaluationFailed", f"offline evaluation failed: {reason} ({summary})")
    else:
        _fail(ctx, "Refused", "OfflineEvaluationRefused",
              f"offline evaluation refused to judge: {reason} ({summary})")
    return True


def reconcile(ctx: Context) -> bool:
    """Wait for the evaluation Job, then act on its verdict. True ends the pass."""
    status = ctx.status
    if status.phase is not api.Phase.OFFLINE_EVALUATION:
        return False
    evaluation = status.offline_evaluation
    if evaluation is None or evaluation.candidate_version != ctx.version:
        # Status from an older operator, or edited by hand: start this candidate's evaluation over.
        start(ctx)
        return True
    observed = ctx.observations.jobs.get(evaluation.job_id)
    if observed is None or observed.state is JobState.RUNNING:
        status.message = f"waiting for offline evaluation Job {evaluation.job_id} of {ctx.version}"
        return True
    return _finish(ctx, observed)
