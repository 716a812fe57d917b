"""One reconcile of one PolicyRollout: observe, decide, apply.

This is the glue between the pure engine and the plug-ins, shared by the kopf handlers and
by local mode: it gathers `Observations` (workload readiness, traffic read back, guardrail
measurements when analysis is due, a pending human action), asks `engine.decide`, and
applies the `Decision` in a fail-safe order.

Ordering rule: state lives in status, and the operator may die between any two calls. When
the decision lowers the candidate's weight (a rollback, an abort) traffic moves *first* and
status follows, so a breach reaches the data plane as early as possible. When it raises the
weight, status is written *first*: a crash after the status write replays the same step and
re-applies the same weight, so the weight never goes backwards then forwards.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from rollout_operator import api, engine
from rollout_operator.engine import analysis, judges, types
from rollout_operator.guardrails import provider, templates, templating
from rollout_operator.traffic import base as traffic_base
from rollout_operator.workloads import base as workloads_base
from rollout_operator.workloads import jobs as workloads_jobs

log = logging.getLogger(__name__)

JSON = dict[str, Any]


class Observer(Protocol):
    """Told about every applied reconcile (metrics, notifications): side channels, never decisions.

    Called after the decision was applied; must return quickly (queue slow work elsewhere).
    """

    def reconciled(
        self, rollout: api.PolicyRollout, observations: types.Observations, decision: types.Decision, seconds: float
    ) -> None: ...


@dataclasses.dataclass
class Platform:
    """The collaborators one reconcile needs; Kubernetes and local mode each build one."""

    workloads: workloads_base.WorkloadManager
    router_for: Callable[[api.PolicyRollout], traffic_base.TrafficRouter]
    metrics_for: Callable[[api.PolicyRollout], provider.MetricProvider]
    write_status: Callable[[api.PolicyRollout, JSON], None]
    record_event: Callable[[api.PolicyRollout, types.Event], None]
    # Offline-evaluation and training Jobs; None where Jobs cannot run (rollouts that ask for them wait).
    jobs: workloads_jobs.JobRunner | None = None
    # autoRollout: make `spec.policy` name a trained version.
    write_policy: Callable[[api.PolicyRollout, api.PolicySpec], None] | None = None
    observers: Sequence[Observer] = ()


def measure_guardrails(rollout: api.PolicyRollout, metrics: provider.MetricProvider) -> dict[str, types.Measurement]:
    """Query every guardrail (a query, or a template from the library) and the judge's raw series.

    Failures become inconclusive measurements, never exceptions. The judge's series go in the
    same mapping under `judges.SERIES_PREFIX` (see engine/judges/base.py).
    """
    results: dict[str, types.Measurement] = {}
    for guardrail in analysis.judged_guardrails(rollout.spec, rollout.status):
        try:
            if guardrail.template is not None:
                promql = templates.render_guardrail(rollout, guardrail.template, guardrail.params)
            else:
                assert guardrail.query is not None  # query xor template, validated by the API
                variables = templating.guardrail_variables(rollout, "candidate", guardrail.params)
                promql = templating.render(guardrail.query, variables)
        except templating.TemplateError as exc:
            results[guardrail.name] = types.Measurement(None, f"cannot render query: {exc}")
            continue
        results[guardrail.name] = _finite(metrics.query(promql))
    for key, series in judges.judge_at(rollout.spec, rollout.status).series(rollout.spec).items():
        try:
            promql = templates.render_series(rollout, series.template, series.variant, series.params)
        except templating.TemplateError as exc:
            results[judges.SERIES_PREFIX + key] = types.Measurement(None, f"cannot render series: {exc}")
            continue
        results[judges.SERIES_PREFIX + key] = _finite(metrics.query(promql))
    return results


def _finite(measurement: types.Measurement) -> types.Measurement:
    if measurement.value is not None and not math.isfinite(measurement.value):
        return types.Measurement(None, f"query returned {measurement.value}")
    return measurement


def observe(platform: Platform, rollout: api.PolicyRollout, now: datetime) -> types.Observations:
    # Guardrails first: every call made before the query delays the detection of a breach.
    measurements: dict[str, types.Measurement] = {}
    if engine.analysis_due(rollout, now):
        measurements = measure_guardrails(rollout, platform.metrics_for(rollout))
    state = platform.workloads.observe(rollout)
    router = platform.router_for(rollout)
    try:
        actual = router.get_weights(rollout)
    except Exception as exc:  # a traffic object we cannot read is unknown, not zero
        log.warning("cannot read traffic weights of %s: %s", rollout.metadata.name, exc)
        actual = None
    jobs: dict[str, types.JobObservation] = {}
    if platform.jobs is not None and (rollout.spec.offline_evaluation or rollout.spec.training):
        jobs = platform.jobs.observe(rollout)
    return types.Observations(
        generation=rollout.metadata.generation or 0,
        candidate_ready=state.candidate_ready,
        stable_ready=state.stable_ready,
        stable_running_version=state.stable_running_version,
        actual_weights=actual,
        measurements=measurements,
        action=engine.parse_action(rollout.metadata.annotations.get(api.ANNOTATION_ACTION)),
        jobs=jobs,
        train_request=rollout.metadata.annotations.get(api.ANNOTATION_TRAIN) or None,
    )


def status_patch(old: JSON, new: JSON) -> JSON:
    """A merge patch turning `old` into `new` at the top level (None deletes a field)."""
    patch: JSON = {key: value for key, value in new.items() if old.get(key) != value}
    patch.update({key: None for key in old if key not in new})
    return patch


def apply(platform: Platform, rollout: api.PolicyRollout, decision: types.Decision,
          observed_jobs: dict[str, types.JobObservation] | None = None) -> None:
    """Apply a decision. Jobs are created after the status naming them is written, so a crash in
    between re-creates the same Job from status, never a second one with another name."""
    if decision.next_policy is not None and platform.write_policy is not None:
        # Before status: if the status write is lost the same trained version is proposed again.
        platform.write_policy(rollout, decision.next_policy)
    router = platform.router_for(rollout)
    patch = status_patch(rollout.status.wire(), decision.status.wire())
    lowering = decision.weights.candidate < rollout.status.canary_weight or (
        rollout.status.shadow and not decision.weights.shadow
    )
    if lowering:  # before anything else: every call made first would delay the rollback
        router.set_weights(rollout, decision.weights)
    platform.workloads.ensure(rollout, decision.workloads)
    router.reconcile(rollout)
    if patch:
        platform.write_status(rollout, patch)
    if not lowering:
        router.set_weights(rollout, decision.weights)
    if decision.jobs and platform.jobs is not None:
        platform.jobs.ensure(rollout, decision.jobs, observed_jobs or {})
    for event in decision.events:
        try:
            platform.record_event(rollout, event)
        except Exception as exc:  # an Event is a courtesy; losing one must not stop the rollout
            log.warning("cannot record event %s on %s: %s", event.reason, rollout.metadata.name, exc)


def reconcile(platform: Platform, rollout: api.PolicyRollout, now: datetime) -> types.Decision:
    started = time.monotonic()
    observations = observe(platform, rollout, now)
    decision = engine.decide(rollout, observations, now)
    apply(platform, rollout, decision, observations.jobs)
    elapsed = time.monotonic() - started
    for observer in platform.observers:
        try:
            observer.reconciled(rollout, observations, decision, elapsed)
        except Exception as exc:  # metrics or a notification must never break a rollout
            log.warning("observer %s failed on %s: %s", type(observer).__name__, rollout.metadata.name, exc)
    return decision
