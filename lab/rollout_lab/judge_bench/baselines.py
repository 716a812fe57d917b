"""Bench-only judges that mimic other tools' analyses, behind the engine's `Judge` interface.

They are not offered in the API: they exist so `bench-judges` can compare the sequential judge
with what Flagger and Kayenta do, each driven exactly like the engine drives a judge. Their
state goes in `JudgeStatus.last_raw` (a free-form map), as any judge may.

* `FailedChecksJudge` (Flagger-style): every analysis checks the guardrail's condition; the
  rollout rolls back once the *total* number of failed checks reaches `threshold`.
* `MannWhitneyJudge` (Kayenta-style): collects the per-interval mean reward of each variant and,
  at a fixed horizon, runs a one-sided Mann-Whitney U test (normal approximation); rolls back
  when the candidate's intervals rank significantly lower (z below `critical_z`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

import numpy as np
from rollout_operator import api
from rollout_operator.engine import conditions
from rollout_operator.engine.judges import base, threshold
from rollout_operator.engine.types import Measurement

__all__ = ["FailedChecksJudge", "MannWhitneyJudge", "mann_whitney_z"]


def _carried_state(status: api.PolicyRolloutStatus, kind: str) -> api.JudgeStatus:
    """This judge's state from status, copied so that judging never mutates its input."""
    state = (status.judge or api.JudgeStatus(kind=kind)).model_copy()
    state.last_raw = dict(state.last_raw)
    return state


class FailedChecksJudge:
    kind = "flagger-failed-checks"

    def __init__(self, threshold_checks: int) -> None:
        self.threshold_checks = threshold_checks

    def series(self, spec: api.PolicyRolloutSpec) -> dict[str, base.SeriesQuery]:
        return {}

    def judge(
        self,
        spec: api.PolicyRolloutSpec,
        status: api.PolicyRolloutStatus,
        measurements: Mapping[str, Measurement],
        now: datetime,
    ) -> base.Judgement:
        state = _carried_state(status, self.kind)
        failed = state.last_raw.get("failed_checks", 0.0)
        rollback = None
        for guardrail in spec.analysis.guardrails:
            value = measurements.get(guardrail.name)
            if value is None or value.value is None:
                continue
            if not conditions.evaluate_condition(value.value, guardrail.condition):
                failed += 1
        state.last_raw["failed_checks"] = failed
        state.intervals += 1
        if failed >= self.threshold_checks:
            rollback = base.Finding("FailedChecks", f"{failed:g} failed checks (threshold {self.threshold_checks})")
        return base.Judgement(guardrails=[], state=state, rollback=rollback)


def mann_whitney_z(candidate: np.ndarray, stable: np.ndarray) -> np.ndarray:
    """z of the U statistic of `candidate` vs `stable` along the last axis (negative: candidate ranks lower)."""
    n1, n2 = candidate.shape[-1], stable.shape[-1]
    both = np.concatenate([candidate, stable], axis=-1)
    ranks = both.argsort(axis=-1).argsort(axis=-1) + 1.0  # continuous data: no ties
    u = ranks[..., :n1].sum(axis=-1) - n1 * (n1 + 1) / 2.0
    return (u - n1 * n2 / 2.0) / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)


class MannWhitneyJudge:
    kind = "kayenta-mann-whitney"

    def __init__(self, horizon: int, critical_z: float) -> None:
        self.horizon, self.critical_z = horizon, critical_z

    def series(self, spec: api.PolicyRolloutSpec) -> dict[str, base.SeriesQuery]:
        return {}

    def judge(
        self,
        spec: api.PolicyRolloutSpec,
        status: api.PolicyRolloutStatus,
        measurements: Mapping[str, Measurement],
        now: datetime,
    ) -> base.Judgement:
        state = _carried_state(status, self.kind)
        c = measurements.get(base.SERIES_PREFIX + "candidate_mean")
        s = measurements.get(base.SERIES_PREFIX + "stable_mean")
        if c is None or s is None or c.value is None or s.value is None:
            return base.Judgement(guardrails=[], state=state)
        i = state.intervals
        state.last_raw[f"c{i}"], state.last_raw[f"s{i}"] = c.value, s.value
        state.intervals += 1
        rollback = None
        if state.intervals == self.horizon:
            cand = np.array([state.last_raw[f"c{k}"] for k in range(self.horizon)])
            stab = np.array([state.last_raw[f"s{k}"] for k in range(self.horizon)])
            z = float(mann_whitney_z(cand, stab))
            state.estimate = z
            if z < self.critical_z:
                rollback = base.Finding("MannWhitney", f"z = {z:.3g} < {self.critical_z:.3g}")
        return base.Judgement(guardrails=[], state=state, rollback=rollback)


def argo_spec(base_spec: api.PolicyRolloutSpec, condition: str, failure_limit: int) -> api.PolicyRolloutSpec:
    """The engine's own threshold judge on the reward-ratio template (Argo-style failureLimit)."""
    guardrail = api.Guardrail(
        name="reward-ratio", template="reward-ratio", condition=condition, failure_limit=failure_limit
    )
    analysis = base_spec.analysis.model_copy(update={"guardrails": [guardrail]})
    return base_spec.model_copy(update={"analysis": analysis})


ThresholdJudge = threshold.ThresholdJudge
