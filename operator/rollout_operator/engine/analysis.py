"""Guardrail analysis: when to measure and what a set of measurements means.

Fail safe by construction: a missing value, an error or a NaN is *Inconclusive*, which can
pause a rollout and eventually roll it back but never lets it advance. Measurements count
only when an analysis is due, so a replay of the same observations does not count twice.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta

from rollout_operator import api
from rollout_operator.engine import conditions, timeutil
from rollout_operator.engine.types import Measurement

__all__ = [
    "Outcome",
    "analysis_due",
    "apply_measurements",
    "has_analysis",
    "inconclusive_guardrails",
    "interval",
    "is_due",
    "is_live",
    "is_shadowing",
    "judged_guardrails",
    "next_analysis_at",
    "passed_since",
    "step_pass_threshold",
]

_LIVE_PHASES = {api.Phase.PROGRESSING, api.Phase.PAUSED, api.Phase.AWAITING_APPROVAL}


def interval(spec: api.PolicyRolloutSpec) -> timedelta:
    return api.parse_duration(spec.analysis.interval)


def is_live(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> bool:
    """The candidate serves real traffic at a step (promotion is committed and not analysed)."""
    return (
        status.phase in _LIVE_PHASES
        and status.canary_weight > 0
        and status.current_step_index < len(spec.steps)
        and status.live_since is not None
    )


def is_shadowing(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> bool:
    """The candidate sees mirrored traffic at a shadow step whose would-be decisions are judged (Paused
    while a shadow guardrail is inconclusive, as a live step would be)."""
    index = status.current_step_index
    return (
        status.phase in (api.Phase.SHADOW, api.Phase.PAUSED)
        and bool(spec.analysis.shadow_guardrails)
        and index < len(spec.steps)
        and spec.steps[index].shadow is not None
        and status.step_started_at is not None
    )


def judged_guardrails(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> list[api.Guardrail]:
    """The guardrails an analysis measures now: the shadow ones during a judged shadow step, else the live ones."""
    return spec.analysis.shadow_guardrails if is_shadowing(spec, status) else spec.analysis.guardrails


def has_analysis(spec: api.PolicyRolloutSpec) -> bool:
    """Whether anything is measured: guardrails, or a judge that compares the variants by itself."""
    return bool(spec.analysis.guardrails) or spec.analysis.judge.kind is not api.JudgeKind.THRESHOLD


def next_analysis_at(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> datetime | None:
    """When the next analysis is due: one interval after the last one, or after going live (or into a
    judged shadow step), whichever is later: an analysis of the shadow never stands in for a live one."""
    if is_shadowing(spec, status):
        start = status.step_started_at
    elif has_analysis(spec) and is_live(spec, status):
        start = status.live_since
    else:
        return None
    began = timeutil.from_iso(start)
    assert began is not None  # is_live guarantees live_since, is_shadowing step_started_at
    last = timeutil.from_iso(status.last_analysis_at)
    return max(began, last) + interval(spec) if last is not None else began + interval(spec)


def analysis_due(rollout: api.PolicyRollout, now: datetime) -> bool:
    """True when the caller should measure the guardrails and pass them to `decide`."""
    return is_due(rollout.spec, rollout.status, timeutil.require_utc(now))


def is_due(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus, now: datetime) -> bool:
    due_at = next_analysis_at(spec, status)
    if due_at is None or now < due_at:
        return False
    last = timeutil.from_iso(status.last_analysis_at)
    return last is None or now > last  # a zero interval still measures at most once per instant


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The result of one analysis: new guardrail statuses and what they call for."""

    guardrails: list[api.GuardrailStatus]
    failed: list[tuple[api.Guardrail, api.GuardrailStatus]]
    inconclusive: list[tuple[api.Guardrail, api.GuardrailStatus]]
    breached: list[tuple[api.Guardrail, api.GuardrailStatus]]  # failureLimit reached
    exhausted: list[tuple[api.Guardrail, api.GuardrailStatus]]  # inconclusiveLimit reached


def _judge(guardrail: api.Guardrail, measurement: Measurement | None) -> tuple[api.Verdict, float | None, str]:
    if measurement is None:
        return api.Verdict.INCONCLUSIVE, None, "no measurement was taken"
    value = measurement.value
    if value is None or math.isnan(value):
        why = measurement.error or ("the query returned NaN" if value is not None else "the query returned no value")
        return api.Verdict.INCONCLUSIVE, None, why
    if conditions.evaluate_condition(value, guardrail.condition):
        return api.Verdict.PASS, value, f"{value:g} satisfies '{guardrail.condition}'"
    return api.Verdict.FAIL, value, f"{value:g} does not satisfy '{guardrail.condition}'"


def apply_measurements(
    spec: api.PolicyRolloutSpec,
    status: api.PolicyRolloutStatus,
    measurements: dict[str, Measurement],
    now: datetime,
) -> Outcome:
    """Judge every guardrail of the spec and update its consecutive counters."""
    previous = {g.name: g for g in status.guardrails}
    result: list[api.GuardrailStatus] = []
    failed, inconclusive, breached, exhausted = [], [], [], []
    for guardrail in judged_guardrails(spec, status):
        verdict, value, message = _judge(guardrail, measurements.get(guardrail.name))
        before = previous.get(guardrail.name) or api.GuardrailStatus(name=guardrail.name)
        failures = before.consecutive_failures + 1 if verdict is api.Verdict.FAIL else 0
        if verdict is api.Verdict.INCONCLUSIVE:
            failures = before.consecutive_failures  # no data is no evidence either way
        unknowns = before.consecutive_inconclusive + 1 if verdict is api.Verdict.INCONCLUSIVE else 0
        entry = api.GuardrailStatus(
            name=guardrail.name,
            value=value,
            verdict=verdict,
            message=message,
            consecutive_failures=failures,
            consecutive_inconclusive=unknowns,
            measured_at=timeutil.to_iso(now),
        )
        result.append(entry)
        if verdict is api.Verdict.FAIL:
            failed.append((guardrail, entry))
            if failures >= guardrail.failure_limit:
                breached.append((guardrail, entry))
        elif verdict is api.Verdict.INCONCLUSIVE:
            inconclusive.append((guardrail, entry))
            if unknowns >= guardrail.inconclusive_limit:
                exhausted.append((guardrail, entry))
    return Outcome(result, failed, inconclusive, breached, exhausted)


def inconclusive_guardrails(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> list[str]:
    """Guardrails of the spec whose latest measurement was inconclusive."""
    names = {g.name for g in judged_guardrails(spec, status)}
    return [g.name for g in status.guardrails if g.name in names and g.consecutive_inconclusive > 0]


def passed_since(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus, since: datetime) -> bool:
    """Every guardrail passed in the latest analysis, and that analysis was taken at or after `since`."""
    last = timeutil.from_iso(status.last_analysis_at)
    if last is None or last < since:
        return False
    latest = {g.name: g for g in status.guardrails}
    for guardrail in judged_guardrails(spec, status):
        entry = latest.get(guardrail.name)
        if entry is None or entry.verdict is not api.Verdict.PASS or entry.measured_at != status.last_analysis_at:
            return False
    return True


def step_pass_threshold(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> datetime | None:
    """The earliest analysis time that can complete the current setWeight step.

    A full interval after the step started, so the guardrails have seen traffic at the
    step's weight: an analysis due sooner (its window mostly covers the previous weight)
    still counts failures but cannot complete the step.
    """
    started = timeutil.from_iso(status.step_started_at)
    return None if started is None else started + interval(spec)
