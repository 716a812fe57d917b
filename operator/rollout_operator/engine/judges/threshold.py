"""`threshold`: each guardrail's condition, per interval, with failureLimit and inconclusiveLimit.

The judgement every Argo Rollouts or Flagger user knows: a guardrail fails when its value
breaks the condition, `failureLimit` consecutive failures roll back, `inconclusiveLimit`
consecutive unusable measurements roll back, and any inconclusive guardrail holds the step.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from rollout_operator import api
from rollout_operator.engine import analysis
from rollout_operator.engine.judges import base
from rollout_operator.engine.types import Measurement

__all__ = ["ThresholdJudge", "describe"]


def describe(guardrail: api.Guardrail, entry: api.GuardrailStatus) -> str:
    if entry.value is None:
        return f"guardrail {guardrail.name}: no value ({entry.message}), condition '{guardrail.condition}'"
    return f"guardrail {guardrail.name}: value {entry.value:g}, condition '{guardrail.condition}'"


class ThresholdJudge:
    kind = "threshold"

    def series(self, spec: api.PolicyRolloutSpec) -> dict[str, base.SeriesQuery]:
        return {}

    def judge(
        self,
        spec: api.PolicyRolloutSpec,
        status: api.PolicyRolloutStatus,
        measurements: Mapping[str, Measurement],
        now: datetime,
    ) -> base.Judgement:
        outcome = analysis.apply_measurements(spec, status, dict(measurements), now)
        warnings = [
            base.Finding(
                "GuardrailFailed",
                f"{describe(guardrail, entry)}; "
                f"{entry.consecutive_failures}/{guardrail.failure_limit} consecutive failures",
            )
            for guardrail, entry in outcome.failed
        ]
        warnings += [
            base.Finding(
                "GuardrailInconclusive",
                f"{describe(guardrail, entry)}; "
                f"{entry.consecutive_inconclusive}/{guardrail.inconclusive_limit} consecutive inconclusive",
            )
            for guardrail, entry in outcome.inconclusive
        ]
        rollback = None
        if outcome.breached:
            guardrail, entry = outcome.breached[0]
            rollback = base.Finding(
                "GuardrailBreached",
                f"{describe(guardrail, entry)}; failed {entry.consecutive_failures} time(s) in a row "
                f"(failureLimit {guardrail.failure_limit}), rolling back to {status.stable_version}",
            )
        elif outcome.exhausted:
            guardrail, entry = outcome.exhausted[0]
            rollback = base.Finding(
                "InconclusiveLimitExceeded",
                f"{describe(guardrail, entry)}; inconclusive {entry.consecutive_inconclusive} time(s) in a row "
                f"(inconclusiveLimit {guardrail.inconclusive_limit}), rolling back to {status.stable_version}",
            )
        return base.Judgement(
            guardrails=outcome.guardrails,
            state=None,
            warnings=warnings,
            rollback=rollback,
            inconclusive=[guardrail.name for guardrail, _ in outcome.inconclusive],
        )
