"""The offline-evaluation gate, end to end: real operator process, real control plane, the real `policy-server ope`.

The emulator runs no pods, so the test plays the Job: it runs the exact command line the
operator wrote into the Job (`policy-server ope ...`) on a synthetic decision log with a known
truth, and reports the result as the Pod's termination message (tests/support/jobs.py). What
a user would check is asserted: phase, status.offlineEvaluation, Events, and that the HTTPRoute
never gives the candidate weight before the gate passed. Pure engine rules are tested first.
"""

from __future__ import annotations

import datetime
import itertools
import json
from typing import Any

import pytest
from rollout_operator import api, engine, kube
from rollout_operator.engine import offline, types
from rollout_operator.resources import httproute, workload
from rollout_operator.resources import jobs as job_resources

from tests.support import decision_logs
from tests.support.cluster import ClusterAPI as KubeAPI
from tests.support.cluster import cluster_as_kube_api, cluster_client  # noqa: F401 - the real control plane
from tests.support.jobs import finish_job, jobs_of, run_job, wait_for_jobs_reread
from tests.support.kube import policy_rollout_manifest
from tests.support.operator_process import OperatorProcess, poll

NAMESPACE = "default"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
_names = (f"gate-{i}" for i in itertools.count())


# --------------------------------------------------------------------------- data (once per module)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ope-gate")
    behaviour = decision_logs.behaviour(root / "behaviour")
    return {
        "behaviour": behaviour,
        "log": decision_logs.write_log(root / "log", behaviour, n=3000),
        "masked_log": decision_logs.write_log(root / "masked-log", behaviour, n=1500, seed=1, mask_last_action=True),
        "good": decision_logs.candidate(root / "good", "good"),
        "bad": decision_logs.candidate(root / "bad", "bad"),
        "unsupported": decision_logs.candidate(root / "unsupported", "unsupported"),
    }


def _manifest(name: str, data: dict[str, Any], candidate: str, log: str = "log", **ope: Any) -> dict[str, Any]:
    manifest = policy_rollout_manifest(
        name=name,
        steps=[{"setWeight": 50}, {"setWeight": 100}],
        # bootstrap_t: the default Bernstein bound holds on any data but is too loose to pass anything on 3,000
        # decisions; these tests are about the operator's flow, not about the bound
        offlineEvaluation={"dataset": data[log].url, "estimators": ["snips", "dr"], "minEss": 50,
                           "bound": "bootstrap_t", **ope},
    )
    manifest["spec"]["policy"]["artifact"] = str(data[candidate])
    manifest["spec"]["fallback"]["artifact"] = str(data["behaviour"])
    return manifest


# --------------------------------------------------------------------------- pure engine rules


def _rollout(manifest: dict[str, Any], status: api.PolicyRolloutStatus | None = None) -> api.PolicyRollout:
    rollout = api.PolicyRollout.model_validate(manifest)
    if status is not None:
        rollout = rollout.model_copy(update={"status": status})
    return rollout


def _decide(rollout: api.PolicyRollout, **obs: Any) -> types.Decision:
    return engine.decide(rollout, types.Observations(generation=1, stable_ready=True, **obs), NOW)


def test_engine_holds_traffic_until_the_job_passes() -> None:
    manifest = policy_rollout_manifest("r", steps=[{"setWeight": 50}],
                                       offlineEvaluation={"dataset": "s3://logs", "estimators": ["dr"]})
    waiting = _decide(_rollout(manifest), candidate_ready=True)
    assert waiting.status.phase is api.Phase.OFFLINE_EVALUATION and waiting.weights.candidate == 0
    [request] = waiting.jobs
    assert request.kind is types.JobKind.OFFLINE_EVALUATION
    assert waiting.requeue_after is not None and waiting.requeue_after <= 5.0  # Job completion is polled
    assert request.id == waiting.status.offline_evaluation.job_id  # type: ignore[union-attr]
    # The same status decided again asks for the same Job: a restart creates nothing new.
    again = _decide(_rollout(manifest, waiting.status), candidate_ready=True)
    assert again.jobs == waiting.jobs and again.events == ()
    running = _decide(_rollout(manifest, waiting.status), candidate_ready=True,
                      jobs={request.id: types.JobObservation(types.JobState.RUNNING)})
    assert running.status.phase is api.Phase.OFFLINE_EVALUATION and running.weights.candidate == 0
    result = {"verdict": "pass", "reason": "ok", "baselineValue": 0.1, "required": 0.1, "ess": 500.0, "n": 900,
              "estimates": [{"estimator": "dr", "value": 0.5, "lowerBound": 0.4, "verdict": "pass"}]}
    passed = _decide(_rollout(manifest, waiting.status), candidate_ready=True,
                     jobs={request.id: types.JobObservation(types.JobState.SUCCEEDED, result)})
    assert passed.status.phase is api.Phase.PROGRESSING and passed.weights.candidate == 50
    assert passed.status.offline_evaluation.phase == "Passed" and passed.jobs == ()  # type: ignore[union-attr]
    assert any(e.reason == "OfflineEvaluationPassed" and "ESS 500" in e.message for e in passed.events)


@pytest.mark.parametrize(("observed", "reason", "phase"), [
    (types.JobObservation(types.JobState.SUCCEEDED, {"verdict": "fail", "reason": "lb below", "estimates": []}),
     "OfflineEvaluationFailed", "Failed"),
    (types.JobObservation(types.JobState.SUCCEEDED, {"verdict": "refuse", "reason": "ESS 3", "estimates": []}),
     "OfflineEvaluationRefused", "Refused"),
    (types.JobObservation(types.JobState.FAILED, {"error": "no log"}, "BackoffLimitExceeded"),
     "OfflineEvaluationJobFailed", "Error"),
    (types.JobObservation(types.JobState.SUCCEEDED, None), "OfflineEvaluationNoResult", "Error"),
    (types.JobObservation(types.JobState.SUCCEEDED, {"verdict": "maybe"}), "OfflineEvaluationNoResult", "Error"),
])
def test_engine_fails_without_traffic(observed: types.JobObservation, reason: str, phase: str) -> None:
    manifest = policy_rollout_manifest("r", steps=[{"setWeight": 50}],
                                       offlineEvaluation={"dataset": "s3://logs"})
    waiting = _decide(_rollout(manifest), candidate_ready=True)
    job = waiting.status.offline_evaluation.job_id  # type: ignore[union-attr]
    done = _decide(_rollout(manifest, waiting.status), candidate_ready=True, jobs={job: observed})
    assert done.status.phase is api.Phase.FAILED and done.weights.candidate == 0
    assert done.workloads.candidate is None and done.jobs == ()
    assert done.status.offline_evaluation.phase == phase  # type: ignore[union-attr]
    [event] = [e for e in done.events if e.reason == reason]
    assert event.type is types.EventType.WARNING and "no traffic" in event.message


def test_job_ids_are_deterministic_and_distinct_per_attempt() -> None:
    assert offline.job_id("v2", "2026-01-01T00:00:00Z") == offline.job_id("v2", "2026-01-01T00:00:00Z")
    assert offline.job_id("v2", "2026-01-01T00:00:00Z") != offline.job_id("v2", "2026-01-02T00:00:00Z")
    assert offline.job_id("v2", "2026-01-01T00:00:00Z") != offline.job_id("v3", "2026-01-01T00:00:00Z")


def test_evaluation_job_runs_ope_on_the_spec() -> None:
    manifest = policy_rollout_manifest("pricing", steps=[{"setWeight": 50}], offlineEvaluation={
        "dataset": "s3://logs/pricing", "estimators": ["snips", "dr"], "minLowerBoundRatio": 0.98,
        "job": {"activeDeadline": "10m", "resources": {"requests": {"cpu": "2"}}}})
    rollout = _rollout(manifest)
    job = job_resources.build(rollout, types.JobRequest(types.JobKind.OFFLINE_EVALUATION, "abc123"))
    assert job["metadata"]["name"] == "pricing-ope-abc123"
    [c] = job["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[:2] == ["ope", "--logs"] and "s3://logs/pricing" in args
    assert args[args.index("--policy") + 1] == "s3://policies/v2.pt2"
    assert args[args.index("--baseline") + 1] == "s3://policies/v1.pt2"
    assert args[args.index("--estimators") + 1] == "snips,dr"
    assert args[args.index("--min-lower-bound-ratio") + 1] == "0.98"
    assert args[args.index("--bound") + 1] == "bernstein"  # the default: the bound that holds on heavy weights
    assert args[args.index("--support-floor") + 1] == "0.01" and args[args.index("--weight-band") + 1] == "0.1"
    assert not any(a.startswith("--reward-range") for a in args)
    assert c["terminationMessagePath"] == "/dev/termination-log" == args[args.index("--write-result") + 1]
    assert c["resources"]["requests"] == {"cpu": "2"} and job["spec"]["activeDeadlineSeconds"] == 600
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_the_gate_settings_of_issue_20_reach_the_job_and_a_negative_reward_range_stays_one_argument() -> None:
    manifest = policy_rollout_manifest("pricing", steps=[{"setWeight": 50}], offlineEvaluation={
        "dataset": "s3://logs/pricing", "bound": "bootstrap_t", "rewardRange": [-5, 1], "supportFloor": 0.05,
        "weightBand": 0})
    job = job_resources.build(_rollout(manifest), types.JobRequest(types.JobKind.OFFLINE_EVALUATION, "abc123"))
    [c] = job["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[args.index("--bound") + 1] == "bootstrap_t" and "--reward-range=-5.0,1.0" in args
    assert args[args.index("--support-floor") + 1] == "0.05" and args[args.index("--weight-band") + 1] == "0.0"
    with pytest.raises(ValueError, match="rewardRange must be"):
        api.OfflineEvaluationSpec.model_validate({"dataset": "s3://logs", "rewardRange": [1, 0]})


def test_a_refusal_puts_the_numbers_in_status_and_the_event() -> None:
    manifest = policy_rollout_manifest("r", steps=[{"setWeight": 50}], offlineEvaluation={"dataset": "s3://logs"})
    waiting = _decide(_rollout(manifest), candidate_ready=True)
    job = waiting.status.offline_evaluation.job_id  # type: ignore[union-attr]
    reason = ("dr: self-normalisation check failed: mean importance weight 0.06 (95% interval [0.058, 0.062]) lies "
              "outside 1 +- 0.1, which full support guarantees in expectation")
    result = {"verdict": "refuse", "reason": reason, "bound": "bernstein", "meanWeight": 0.06, "ess": 4352.3,
              "unsupportedMass": 0.0, "estimates": [{"estimator": "dr", "value": 0.87, "verdict": "refuse"}]}
    observed = types.JobObservation(types.JobState.SUCCEEDED, result)
    done = _decide(_rollout(manifest, waiting.status), candidate_ready=True, jobs={job: observed})
    evaluation = done.status.offline_evaluation
    assert evaluation is not None and evaluation.phase == "Refused"
    assert evaluation.mean_weight == 0.06 and evaluation.bound == "bernstein" and evaluation.ess == 4352.3
    [event] = [e for e in done.events if e.reason == "OfflineEvaluationRefused"]
    assert "mean importance weight 0.06" in event.message and "mean weight 0.06, bernstein bound" in event.message


def test_cost_constraints_reach_the_job_one_argument_each() -> None:
    manifest = policy_rollout_manifest("pricing", steps=[{"setWeight": 50}], offlineEvaluation={
        "dataset": "s3://logs/pricing", "constraints": [
            {"cost": "margin_violation", "max": 0.05},
            {"cost": "refunds", "maxIncrease": -0.01, "estimators": ["dr"], "confidence": 0.9}]})
    job = job_resources.build(_rollout(manifest), types.JobRequest(types.JobKind.OFFLINE_EVALUATION, "abc123"))
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert [a for a in c["args"] if a.startswith("--constraint")] == [
        "--constraint=cost=margin_violation,max=0.05",
        "--constraint=cost=refunds,maxIncrease=-0.01,estimators=dr,confidence=0.9",
    ]
    with pytest.raises(ValueError, match="exactly one of max and maxIncrease"):
        api.CostConstraint.model_validate({"cost": "x", "max": 1, "maxIncrease": 1})


def test_a_breached_cost_budget_fails_the_rollout_naming_the_cost_with_its_numbers() -> None:
    manifest = policy_rollout_manifest("r", steps=[{"setWeight": 50}], offlineEvaluation={
        "dataset": "s3://logs", "constraints": [{"cost": "margin_violation", "max": 0.05}]})
    waiting = _decide(_rollout(manifest), candidate_ready=True)
    job = waiting.status.offline_evaluation.job_id  # type: ignore[union-attr]
    reason = ("cost:margin_violation (snips): 95% upper bound 0.31 of cost 'margin_violation' is above its budget "
              "0.05 (estimate 0.27, baseline 0.02, bernstein bound)")
    result = {"verdict": "fail", "reason": reason, "bound": "bernstein", "ess": 900.0,
              "estimates": [{"estimator": "snips", "value": 0.74, "lowerBound": 0.7, "verdict": "pass"}],
              "constraints": [{"criterion": "cost:margin_violation", "estimator": "snips", "value": 0.27,
                               "upperBound": 0.31, "budget": 0.05, "baselineValue": 0.02, "verdict": "fail"}]}
    done = _decide(_rollout(manifest, waiting.status), candidate_ready=True,
                   jobs={job: types.JobObservation(types.JobState.SUCCEEDED, result)})
    assert done.status.phase is api.Phase.FAILED and done.weights.candidate == 0
    evaluation = done.status.offline_evaluation
    assert evaluation is not None and evaluation.phase == "Failed"
    [cost] = evaluation.constraints
    assert (cost.cost, cost.upper_bound, cost.budget, cost.verdict) == ("margin_violation", 0.31, 0.05, "fail")
    [event] = [e for e in done.events if e.reason == "OfflineEvaluationFailed"]
    assert "margin_violation" in event.message and "upper bound 0.31, budget 0.05" in event.message


# --------------------------------------------------------------------------- end to end


class Watch:
    """Reads a rollout's status and HTTPRoute weight, remembering every candidate weight seen."""

    def __init__(self, kube_api: KubeAPI, client: kube.Client, operator: OperatorProcess, name: str) -> None:
        self.kube_api, self.client, self.operator, self.name = kube_api, client, operator, name
        self.weights: list[tuple[str, int]] = []

    def status(self) -> dict[str, Any]:
        return self.client.get(api.API_VERSION, api.KIND, self.name, NAMESPACE).get("status") or {}

    def weight(self) -> int | None:
        route = self.kube_api.get("httproutes", NAMESPACE, self.name)
        if route is None:
            return None
        body = self.client.get(api.API_VERSION, api.KIND, self.name, NAMESPACE)
        weights = httproute.weights_of(route, api.PolicyRollout.model_validate(body))
        return None if weights is None else weights.candidate

    def events(self) -> list[dict[str, Any]]:
        return [e for e in self.kube_api.objects("events", NAMESPACE)
                if e.get("involvedObject", {}).get("name") == self.name]

    def wait(self, predicate: Any, what: str, timeout: float = 60.0) -> Any:
        def check() -> Any:
            weight = self.weight()
            status = self.status()
            if weight is not None:
                self.weights.append((status.get("phase", ""), weight))
            return predicate(status)

        return poll(check, timeout, interval=0.2, what=f"{self.name}: {what}",
                    on_timeout=lambda: f"status: {json.dumps(self.status())}\n{self.operator.log_tail()}")

    def job(self) -> dict[str, Any]:
        return poll(lambda: (jobs_of(self.kube_api, self.name, "ope") or [None])[0], 60, interval=0.2,
                    what=f"the offline evaluation Job of {self.name}", on_timeout=self.operator.log_tail)


def test_passing_candidate_gets_traffic_and_a_restart_creates_no_second_job(
    kube_api: KubeAPI, client: kube.Client, operator: OperatorProcess, data: dict[str, Any]
) -> None:
    name = next(_names)
    client.create(_manifest(name, data, "good"))
    watch = Watch(kube_api, client, operator, name)
    job = watch.job()
    watch.wait(lambda s: s.get("phase") == "OfflineEvaluation", "OfflineEvaluation")

    operator.kill()  # a crash while the Job runs
    seen = len(kube_api.calls_to("jobs"))
    operator.start()
    wait_for_jobs_reread(kube_api, seen, operator)
    assert watch.status()["phase"] == "OfflineEvaluation"
    assert len(jobs_of(kube_api, name, "ope")) == 1, "a restarted operator must not start a second evaluation"

    code, message = run_job(job)
    assert code == 0 and json.loads(message)["verdict"] == "pass"
    finish_job(kube_api, job, code, message)
    status = watch.wait(lambda s: s if s.get("phase") == "Promoted" else None, "Promoted")

    evaluation = status["offlineEvaluation"]
    assert evaluation["phase"] == "Passed" and evaluation["candidateVersion"] == "v2"
    assert {e["estimator"] for e in evaluation["estimates"]} == {"snips", "dr"}
    assert all(e["lowerBound"] > evaluation["baselineValue"] for e in evaluation["estimates"])
    assert evaluation["ess"] > 50 and evaluation["n"] == data["log"].n
    poll(lambda: any(e["reason"] == "OfflineEvaluationPassed" and "ESS" in e["message"] for e in watch.events()), 10,
         what="the OfflineEvaluationPassed event")
    assert len(jobs_of(kube_api, name, "ope")) == 1
    assert [p for p, w in watch.weights if w > 0 and p in ("Pending", "OfflineEvaluation")] == []
    assert any(w > 0 for _, w in watch.weights) or 50 in {h.get("weight") for h in status["history"]}


def test_failing_refused_and_crashed_evaluations_never_get_traffic(
    kube_api: KubeAPI, client: kube.Client, operator: OperatorProcess, data: dict[str, Any]
) -> None:
    cases = {
        "fail": (_manifest(next(_names), data, "bad"), {}, "OfflineEvaluationFailed", "Failed", "below the required"),
        "refuse": (_manifest(next(_names), data, "unsupported", log="masked_log"), {}, "OfflineEvaluationRefused",
                   "Refused", "deficient support"),
        "crash": (_manifest(next(_names), data, "good"), {"--logs": str(data["log"].url) + "-missing"},
                  "OfflineEvaluationJobFailed", "Error", "BackoffLimitExceeded"),
    }
    watches = {}
    for case, (manifest, _, _, _, _) in cases.items():
        client.create(manifest)
        watches[case] = Watch(kube_api, client, operator, manifest["metadata"]["name"])
    for case, (_, replace, *_expected) in cases.items():
        watch = watches[case]
        job = watch.job()
        watch.wait(lambda s: s.get("phase") == "OfflineEvaluation", "OfflineEvaluation")
        code, message = run_job(job, replace)
        assert (code == 0) == (case != "crash"), message
        finish_job(kube_api, job, code, message)
    for case, (_, _, reason, phase, words) in cases.items():
        watch = watches[case]
        status = watch.wait(lambda s: s if s.get("phase") == "Failed" else None, "Failed")
        assert status["offlineEvaluation"]["phase"] == phase
        assert words in status["message"] and "no traffic" in status["message"], status["message"]
        # Events follow the status write: wait for them rather than race the operator.
        [event] = poll(lambda w=watch, r=reason: [e for e in w.events() if e["reason"] == r], 10, what=f"{case} event")
        assert event["type"] == "Warning" and words in event["message"]
        assert all(w == 0 for _, w in watch.weights), f"{case}: the candidate got traffic: {watch.weights}"
        assert watch.weight() in (0, None)
        assert len(jobs_of(kube_api, watch.name, "ope")) == 1
    crash = watches["crash"].status()["offlineEvaluation"]["message"]
    assert "cannot read the decision log" in crash or "no rewarded" in crash, crash


def test_results_are_read_from_the_latest_terminated_pod() -> None:
    from rollout_operator.workloads import jobs as k8s_jobs

    def pod(finished: str, message: str) -> dict[str, Any]:
        return {"status": {"containerStatuses": [{"name": job_resources.CONTAINER_NAME, "state": {
            "terminated": {"exitCode": 1, "finishedAt": finished, "message": message}}}]}}

    retried = [pod("2026-01-01T00:00:05Z", '{"verdict": "pass"}'), pod("2026-01-01T00:00:01Z", "Traceback ...")]
    assert k8s_jobs.termination_result(retried) == ({"verdict": "pass"}, '{"verdict": "pass"}')
    assert k8s_jobs.termination_result([pod("2026-01-01T00:00:01Z", "Traceback ...")]) == (None, "Traceback ...")
    assert k8s_jobs.termination_result([{"status": {}}]) == (None, None)
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                         "message": "Job was active longer than specified deadline"}]}}
    assert k8s_jobs.job_state(failed) == (types.JobState.FAILED,
                                         "DeadlineExceeded: Job was active longer than specified deadline")
    assert k8s_jobs.job_state({"status": {"active": 1}}) == (types.JobState.RUNNING, None)
    complete = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert k8s_jobs.job_state(complete) == (types.JobState.SUCCEEDED, None)


def test_fairness_reaches_the_servers_and_the_job_and_its_failure_stops_the_rollout_naming_the_groups() -> None:
    manifest = policy_rollout_manifest("lending", steps=[{"setWeight": 50}], fairness={
        "groupKey": "region", "groups": ["north", "south"]}, offlineEvaluation={
        "dataset": "s3://logs", "fairness": {"groupKey": "region", "metric": "action-rate", "action": 2,
                                             "mode": "ratio", "max": 1.5, "minGroupEss": 50}})
    rollout = _rollout(manifest)
    job = job_resources.build(rollout, types.JobRequest(types.JobKind.OFFLINE_EVALUATION, "abc123"))
    [c] = job["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[args.index("--fairness-group-key") + 1] == "region"
    assert args[args.index("--fairness-groups") + 1] == "north,south"  # from spec.fairness
    assert args[args.index("--fairness-metric") + 1] == "action-rate"
    assert args[args.index("--fairness-action") + 1] == "2"
    assert args[args.index("--fairness-mode") + 1] == "ratio" and args[args.index("--fairness-max") + 1] == "1.5"
    for variant in ("stable", "candidate"):
        [server] = workload.deployment(rollout, variant, rollout.spec.policy)["spec"]["template"]["spec"]["containers"]
        assert server["args"][-4:] == ["--group-key", "region", "--groups", "north,south"]
    waiting = _decide(rollout, candidate_ready=True)
    reason = ("fairness: 95% upper bound 2.4 of the ratio in rate of action 2 between groups of region (estimate 2: "
              "'south' 0.2 vs 'north' 0.1; ...) exceeds the allowed 1.5")
    result = {"verdict": "fail", "reason": reason, "estimates": [{"estimator": "snips", "value": 0.5}],
              "fairness": {"groupKey": "region", "metric": "action-rate", "mode": "ratio", "disparity": 2.0,
                           "bound": 2.4, "max": 1.5, "verdict": "fail",
                           "groups": [{"group": "north", "n": 900, "ess": 900.0, "value": 0.1, "lower": 0.08,
                                       "upper": 0.12}, {"group": "south", "value": 0.2, "upper": 0.24}]}}
    job_id = waiting.status.offline_evaluation.job_id  # type: ignore[union-attr]
    done = _decide(_rollout(manifest, waiting.status), candidate_ready=True,
                   jobs={job_id: types.JobObservation(types.JobState.SUCCEEDED, result)})
    assert done.status.phase is api.Phase.FAILED and done.weights.candidate == 0
    fairness = done.status.offline_evaluation.fairness  # type: ignore[union-attr]
    assert fairness is not None and fairness.bound == 2.4 and [g.group for g in fairness.groups] == ["north", "south"]
    [event] = [e for e in done.events if e.reason == "OfflineEvaluationFailed"]
    assert "'south'" in event.message and "fairness action-rate ratio by region: bound 2.4 (max 1.5) fail" in (
        event.message)
    for bad, message in (({"metric": "cost"}, "metric cost needs cost"), ({"max": 1, "groups": ["other"]}, "other")):
        with pytest.raises(ValueError, match=message):
            api.FairnessCriterion.model_validate({"groupKey": "region", "max": 1, **bad})
    with pytest.raises(ValueError, match="at most 32"):
        api.FairnessSpec.model_validate({"groupKey": "region", "groups": [f"g{i}" for i in range(33)]})
