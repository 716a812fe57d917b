"""Lineage in the rollout's history, and `spec.requireLineage`.

Each promoted revision keeps its artifact's lineage (from its training Job's result, or from
`spec.policy.lineage` for a hand-provided artifact) and the offline gate's result for it, through
later rollouts. A candidate lacking a required part fails before it gets any traffic, saying which
parts are missing and how to provide them.
"""

from __future__ import annotations

from typing import Any

import pytest
from engine_harness import Driver, make_rollout, with_status
from rollout_operator import api
from rollout_operator.engine import types

P = api.Phase
TRAINED = {
    "dataset": {"uri": "s3://logs/pricing", "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T06:00:00Z",
                "sha256": "ab" * 32, "hashOf": "sorted segments", "rows": 900},
    "code": {"image": "server:1", "commit": "0123abcd"},
    "hyperparameters": {"algorithm": "reward-model", "steps": 2000, "seed": 0},
    "environment": {"simulator": "pricing-sim", "simulatorVersion": "3", "python": "3.12.1", "torch": "2.13.0"},
    "opeReport": {"uri": "s3://models/x/ope.json", "estimator": "dr", "estimate": 0.61, "verdict": "pass"},
}
HAND_MADE = {"dataset": {"uri": "s3://logs/other"}, "code": {"commit": "feedbeef"}}
GATE = {"verdict": "pass", "reason": "ok", "baselineValue": 0.1, "required": 0.1, "ess": 500.0, "n": 900,
        "estimates": [{"estimator": "dr", "value": 0.5, "lowerBound": 0.4, "verdict": "pass"}]}
GATED = {"offlineEvaluation": {"dataset": "s3://logs/pricing", "estimators": ["dr"]}}
TRAINING = {"training": {"dataset": "s3://logs/pricing", "output": "s3://models", "autoRollout": True}}


def _settle(driver: Driver, limit: int = 200) -> types.Decision:
    """Tick until the rollout ends, the offline gate's Job passing whenever one runs."""
    for _ in range(limit):
        gate = driver.status.offline_evaluation
        running = gate is not None and gate.phase == "Running"
        decision = driver.tick(30, jobs={gate.job_id: types.JobObservation(types.JobState.SUCCEEDED, GATE)}
                               if running and gate is not None else {})
        if decision.status.phase.terminal:
            return decision
    raise AssertionError(f"still {driver.status.phase}: {driver.status.message}")


def _roll_out(driver: Driver, policy: api.PolicySpec, generation: int) -> None:
    spec = driver.rollout.spec.model_copy(update={"policy": policy})
    metadata = driver.rollout.metadata.model_copy(update={"generation": generation})
    driver.rollout = driver.rollout.model_copy(update={"spec": spec, "metadata": metadata})


def _train(driver: Driver, lineage: dict[str, Any] | None) -> api.PolicySpec:
    """Ask for training, let its Job succeed with `lineage` in its result; the next candidate (autoRollout)."""
    [request] = [r for r in driver.tick(1, train_request="run-1").jobs if r.kind is types.JobKind.TRAINING]
    result: dict[str, Any] = {"v": 1, "kind": "train", "artifact": f"s3://models/{request.version}",
                              "version": request.version, "ope": {"estimate": 0.61, "verdict": "pass"}}
    if lineage is not None:
        result["lineage"] = lineage
    done = driver.tick(1, train_request="run-1",
                       jobs={request.id: types.JobObservation(types.JobState.SUCCEEDED, result)})
    assert done.next_policy is not None
    return done.next_policy


def test_each_revision_keeps_its_lineage_and_gate_through_later_rollouts() -> None:
    driver = Driver(make_rollout([{"setWeight": 100}], **GATED, **TRAINING))
    assert _settle(driver).status.phase is P.PROMOTED
    assert driver.status.revisions[0].lineage is None  # hand-provided, no spec.policy.lineage

    trained = _train(driver, TRAINED)
    assert trained.lineage is None  # the trained version's lineage is its Job's, not the previous spec's
    assert driver.status.training_jobs[0].lineage == api.Lineage.model_validate(TRAINED)
    _roll_out(driver, trained, 2)
    assert _settle(driver).status.phase is P.PROMOTED

    hand = driver.rollout.spec.policy.model_copy(
        update={"version": "v9", "artifact": "s3://p/v9", "lineage": api.Lineage.model_validate(HAND_MADE)})
    _roll_out(driver, hand, 3)
    assert _settle(driver).status.phase is P.PROMOTED

    first, second, third = driver.status.revisions
    assert second.version == trained.version and second.lineage == api.Lineage.model_validate(TRAINED)
    assert third.version == "v9" and third.lineage == api.Lineage.model_validate(HAND_MADE)
    for revision in (first, second, third):  # the gate's result for that very version, linked
        assert revision.offline_evaluation is not None and revision.offline_evaluation.phase == "Passed"
        assert revision.offline_evaluation.candidate_version == revision.version
    # Through the API's own (de)serialisation: what `kubectl get -o yaml` shows.
    stored = api.PolicyRolloutStatus.model_validate(driver.status.wire())
    assert stored.revisions[1].lineage is not None and stored.revisions[1].lineage.wire() == TRAINED


@pytest.mark.parametrize(("lineage", "lacking"), [
    (None, "dataset, code"),
    ({"dataset": {"uri": "s3://logs/x"}}, "code"),
    ({"dataset": {"uri": "s3://logs/x"}, "code": {}}, "code"),  # an empty part is no part
])
def test_a_candidate_without_required_lineage_fails_before_any_traffic(
    lineage: dict[str, Any] | None, lacking: str
) -> None:
    rollout = make_rollout([{"setWeight": 50}, {"setWeight": 100}], requireLineage=["dataset", "code"])
    if lineage is not None:
        policy = rollout.spec.policy.model_copy(update={"lineage": api.Lineage.model_validate(lineage)})
        rollout = rollout.model_copy(update={"spec": rollout.spec.model_copy(update={"policy": policy})})
    driver = Driver(rollout)
    decision = _settle(driver)
    assert decision.status.phase is P.FAILED and decision.weights.candidate == 0
    assert all(entry.phase in (P.PENDING, P.FAILED) for entry in driver.status.history)  # never any traffic
    message = driver.status.message or ""
    assert f"lacks lineage {lacking} required by spec.requireLineage" in message
    assert "spec.policy.lineage" in message and "spec.training" in message
    assert "LineageMissing" in driver.reasons()
    assert any(c.type == "Degraded" and c.status == "True" for c in driver.status.conditions)


def test_complete_lineage_from_the_spec_or_the_training_job_satisfies_the_requirement() -> None:
    required = {"requireLineage": ["dataset", "code", "hyperparameters", "environment", "opeReport"]}
    hand_made = make_rollout([{"setWeight": 100}], **required)
    policy = hand_made.spec.policy.model_copy(update={"lineage": api.Lineage.model_validate(TRAINED)})
    hand_made = hand_made.model_copy(update={"spec": hand_made.spec.model_copy(update={"policy": policy})})
    assert _settle(Driver(hand_made)).status.phase is P.PROMOTED

    driver = Driver(make_rollout([{"setWeight": 100}], **required, **TRAINING))
    assert _settle(driver).status.phase is P.FAILED  # v2 has no lineage: refused
    _roll_out(driver, _train(driver, TRAINED), 2)
    assert _settle(driver).status.phase is P.PROMOTED
    assert driver.status.revisions[-1].lineage == api.Lineage.model_validate(TRAINED)


def test_a_trained_version_without_reported_lineage_is_refused_when_lineage_is_required() -> None:
    driver = Driver(with_status(make_rollout([{"setWeight": 100}], requireLineage=["code"], **TRAINING),
                                api.PolicyRolloutStatus()))
    _settle(driver)
    _roll_out(driver, _train(driver, None), 2)  # a custom training command that reports no lineage
    assert _settle(driver).status.phase is P.FAILED
    assert "lacks lineage code" in (driver.status.message or "")
