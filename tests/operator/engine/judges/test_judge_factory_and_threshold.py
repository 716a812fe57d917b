"""The judge factory, and the threshold judge agreeing with the engine's per-guardrail rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from rollout_operator import api
from rollout_operator.engine import analysis, judges
from rollout_operator.engine.judges import sequential, threshold
from rollout_operator.engine.types import Measurement

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(**judge: object) -> api.PolicyRolloutSpec:
    return api.PolicyRolloutSpec.model_validate(
        {
            "policy": {"image": "i", "artifact": "a", "version": "v2"},
            "fallback": {"image": "i", "artifact": "a", "version": "v1"},
            "steps": [{"setWeight": 10}],
            "analysis": {
                "guardrails": [
                    {"name": "errors", "query": "x", "condition": "< 0.5", "failureLimit": 2},
                    {"name": "latency", "query": "y", "condition": "< 1", "inconclusiveLimit": 1},
                ],
                "judge": judge,
            },
        }
    )


def test_factory_builds_every_kind_of_the_api_and_refuses_others() -> None:
    assert {k.value for k in api.JudgeKind} == set(judges.JUDGES)
    assert isinstance(judges.make_judge("threshold"), threshold.ThresholdJudge)
    assert isinstance(judges.judge_for(spec(kind="sequential")), sequential.SequentialJudge)
    assert isinstance(judges.make_judge("sequential"), judges.Judge)
    with pytest.raises(ValueError, match="unknown judge 'bayes': use one of sequential, threshold"):
        judges.make_judge("bayes")


def test_threshold_judge_is_the_engines_guardrail_rules() -> None:
    s = spec()
    status = api.PolicyRolloutStatus(stable_version="v1")
    values = {"errors": Measurement(0.9), "latency": Measurement(0.2)}
    judgement = threshold.ThresholdJudge().judge(s, status, values, T0)
    outcome = analysis.apply_measurements(s, status, values, T0)
    assert judgement.guardrails == outcome.guardrails
    assert judgement.rollback is None and judgement.state is None and judgement.sufficient is None
    assert [w.reason for w in judgement.warnings] == ["GuardrailFailed"]
    status.guardrails = judgement.guardrails
    again = threshold.ThresholdJudge().judge(s, status, values, T0)
    assert again.rollback is not None and again.rollback.reason == "GuardrailBreached"
    assert "errors" in again.rollback.message and "failureLimit 2" in again.rollback.message


def test_threshold_judge_rolls_back_on_the_inconclusive_limit_and_lists_inconclusive_guardrails() -> None:
    values = {"errors": Measurement(0.1), "latency": Measurement(None, "no data")}
    judgement = threshold.ThresholdJudge().judge(spec(), api.PolicyRolloutStatus(), values, T0)
    assert judgement.inconclusive == ["latency"]
    assert judgement.rollback is not None and judgement.rollback.reason == "InconclusiveLimitExceeded"


def test_judge_spec_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"judge\.cost"):
        api.JudgeSpec.model_validate({"kind": "sequential", "metric": "cost"})
    with pytest.raises(ValueError):
        api.JudgeSpec.model_validate({"kind": "bayes"})
    assert api.JudgeSpec().kind is api.JudgeKind.THRESHOLD
