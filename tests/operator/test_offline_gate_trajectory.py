"""spec.offlineEvaluation.trajectory: the trajectory gate's settings reach the Job, and its result reaches status.

Specified: with ``trajectory`` set, the Job runs ``policy-server ope --trajectories --gamma G`` with the
trajectory estimators, agreement tolerance and minimum effective trajectories (and none of the bandit
gate's bound flags), plus the shared margins, cost budgets and support settings; the CRD accepts such a
manifest and rejects a gamma outside [0, 1]; a constraint naming bandit estimators is refused with one
line; the Job's exact command line, run on a log of episodes written by a real policy server, gives a
result the engine turns into status with one value per trajectory estimator.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from rollout_operator import api, engine
from rollout_operator.engine import types
from rollout_operator.resources import jobs as job_resources

from policy_server import cli
from tests.support import crd_validation, decision_logs, trajectory_logs
from tests.support.kube import policy_rollout_manifest

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
TRAJECTORY = {"gamma": 0.95, "estimators": ["pdis", "dr"], "agreementTolerance": 0.5, "minEffectiveTrajectories": 20}


def _manifest(**ope: Any) -> dict[str, Any]:
    return policy_rollout_manifest("seq", steps=[{"setWeight": 50}], offlineEvaluation={
        "dataset": "s3://logs/seq", "trajectory": TRAJECTORY, **ope})


def _args(manifest: dict[str, Any]) -> list[str]:
    rollout = api.PolicyRollout.model_validate(manifest)
    job = job_resources.build(rollout, types.JobRequest(types.JobKind.OFFLINE_EVALUATION, "abc123"))
    [container] = job["spec"]["template"]["spec"]["containers"]
    return container["args"]


def test_the_trajectory_settings_reach_the_job() -> None:
    args = _args(_manifest(minLowerBoundDelta=-0.5, constraints=[{"cost": "risk", "max": 0.2}]))
    assert args[:4] == ["ope", "--trajectories", "--gamma", "0.95"]
    assert args[args.index("--estimators") + 1] == "pdis,dr"
    assert args[args.index("--agreement-tolerance") + 1] == "0.5"
    assert args[args.index("--min-effective-trajectories") + 1] == "20.0"
    assert args[args.index("--min-lower-bound-delta") + 1] == "-0.5" and "--constraint=cost=risk,max=0.2" in args
    assert args[args.index("--support-floor") + 1] == "0.01"
    assert not {"--bound", "--min-ess", "--weight-band"} & set(args)


def test_the_crd_accepts_trajectory_settings_and_bounds_gamma() -> None:
    assert crd_validation.validate(_manifest()) == []
    bad = _manifest()
    bad["spec"]["offlineEvaluation"]["trajectory"] = {**TRAJECTORY, "gamma": 1.5}
    assert any("gamma" in e for e in crd_validation.validate(bad))
    defaults = api.TrajectoryEvaluation.model_validate({"gamma": 0.9})
    assert [str(e) for e in defaults.estimators] == ["pdis", "wpdis", "dr", "fqe"]


def test_bandit_estimators_on_a_constraint_are_refused_in_trajectory_mode() -> None:
    with pytest.raises(ValueError, match=r"constraints use trajectory\.estimators"):
        api.OfflineEvaluationSpec.model_validate({"dataset": "s3://logs", "trajectory": {"gamma": 0.9},
                                                  "constraints": [{"cost": "risk", "max": 1, "estimators": ["dr"]}]})


@pytest.mark.integration
def test_the_jobs_command_on_a_served_log_gives_status_per_estimator(tmp_path: Path) -> None:
    behaviour = decision_logs.behaviour(tmp_path / "behaviour")
    log = trajectory_logs.serve_episodes(tmp_path / "log", behaviour, episodes=120, steps=3)
    manifest = _manifest(minLowerBoundDelta=-1.0, baseline="logged")
    manifest["spec"]["offlineEvaluation"]["dataset"] = log
    manifest["spec"]["policy"]["artifact"] = str(behaviour)
    args = _args(manifest)
    result_path = tmp_path / "termination-log"
    args[args.index("--write-result") + 1] = str(result_path)
    assert cli.main([*args, "--resamples", "50"]) == 0
    result = json.loads(result_path.read_text())
    rollout = api.PolicyRollout.model_validate(manifest)
    waiting = engine.decide(rollout, types.Observations(generation=1, stable_ready=True, candidate_ready=True), NOW)
    job = waiting.status.offline_evaluation.job_id  # type: ignore[union-attr]
    done = engine.decide(rollout.model_copy(update={"status": waiting.status}),
                         types.Observations(generation=1, stable_ready=True, candidate_ready=True,
                                            jobs={job: types.JobObservation(types.JobState.SUCCEEDED, result)}), NOW)
    evaluation = done.status.offline_evaluation
    assert evaluation is not None and evaluation.phase == "Passed", evaluation.message
    assert [e.estimator for e in evaluation.estimates] == ["pdis", "dr"]
    assert all(e.value is not None and e.lower_bound is not None for e in evaluation.estimates)
    assert evaluation.n == 120 and evaluation.bound == "bootstrap-by-trajectory"
