"""Pick the judge an analysis spec asks for; unknown kinds are refused, never replaced."""

from __future__ import annotations

from collections.abc import Callable

from rollout_operator import api
from rollout_operator.engine import analysis
from rollout_operator.engine.judges import base, sequential, threshold

JUDGES: dict[str, Callable[[], base.Judge]] = {
    threshold.ThresholdJudge.kind: threshold.ThresholdJudge,
    sequential.SequentialJudge.kind: sequential.SequentialJudge,
}


def make_judge(kind: str | api.JudgeKind) -> base.Judge:
    """`make_judge("sequential")`; raises ValueError naming the known kinds otherwise."""
    try:
        return JUDGES[str(kind)]()
    except KeyError:
        raise ValueError(f"unknown judge {str(kind)!r}: use one of {', '.join(sorted(JUDGES))}") from None


def judge_for(spec: api.PolicyRolloutSpec) -> base.Judge:
    return make_judge(spec.analysis.judge.kind)


def judge_at(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> base.Judge:
    """The judge of the analysis due now: a judged shadow step is judged guardrail by guardrail (threshold),
    since the comparative judges need both variants serving live traffic."""
    if analysis.is_shadowing(spec, status):
        return threshold.ThresholdJudge()
    return judge_for(spec)
