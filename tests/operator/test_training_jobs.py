"""Training Jobs: GPU resources, one Job per trigger (on demand and per cron slot), results in status.

Pure rules first (the engine with a given `now`, the Job builder), then the real operator
process against the real control plane: an on-demand trigger creates exactly one GPU Job even across a
SIGKILL, the test plays the Job by running the real `policy-server train` from the Job's own
command line (on CPU), and the produced version is recorded and, with autoRollout, rolled out.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from rollout_operator import api, engine, kube
from rollout_operator.engine import training, types
from rollout_operator.resources import jobs as job_resources

from tests.support import decision_logs
from tests.support.cluster import ClusterAPI as KubeAPI
from tests.support.cluster import cluster_as_kube_api, cluster_client  # noqa: F401 - the real control plane
from tests.support.jobs import container, finish_job, jobs_of, run_job, wait_for_jobs_reread
from tests.support.kube import policy_rollout_manifest
from tests.support.operator_process import OperatorProcess, poll

T0 = datetime.datetime(2026, 1, 1, 0, 2, tzinfo=datetime.UTC)
TRAINING = {"dataset": "s3://logs/pricing", "output": "s3://models/pricing", "gpus": 1, "steps": 500}


def _rollout(training_spec: dict[str, Any], status: api.PolicyRolloutStatus | None = None,
             annotations: dict[str, str] | None = None) -> api.PolicyRollout:
    manifest = policy_rollout_manifest("pricing", steps=[{"setWeight": 100}], training=training_spec)
    manifest["metadata"]["annotations"] = annotations or {}
    manifest["metadata"]["uid"] = "uid-1"
    rollout = api.PolicyRollout.model_validate(manifest)
    return rollout if status is None else rollout.model_copy(update={"status": status})


def _decide(rollout: api.PolicyRollout, now: datetime.datetime, **obs: Any) -> types.Decision:
    return engine.decide(rollout, types.Observations(generation=1, **obs), now)


# --------------------------------------------------------------------------- Job builder


def test_gpu_job_gets_gpu_limits_node_selector_tolerations_and_cuda() -> None:
    rollout = _rollout({**TRAINING, "resources": {"requests": {"cpu": "4"}}, "activeDeadline": "2h",
                        "backoffLimit": 2, "ttlSecondsAfterFinished": 600})
    job = job_resources.build(rollout, types.JobRequest(types.JobKind.TRAINING, "abc", version="train-abc"))
    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert job["metadata"]["name"] == "pricing-train-abc"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["resources"]["requests"] == {"cpu": "4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    args = c["args"]
    assert args[0] == "train" and args[args.index("--device") + 1] == "cuda"
    assert args[args.index("--out") + 1] == "s3://models/pricing/train-abc"
    assert args[args.index("--version") + 1] == "train-abc"
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 7200
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    [owner] = job["metadata"]["ownerReferences"]  # deleting the rollout deletes its Jobs
    assert owner["kind"] == api.KIND and owner["uid"] == "uid-1" and owner["controller"] is True


def test_cpu_job_and_user_scheduling_choices() -> None:
    cpu = job_resources.build(_rollout({**TRAINING, "gpus": 0}), types.JobRequest(types.JobKind.TRAINING, "a"))
    assert "nvidia.com/gpu" not in container(cpu)["resources"].get("limits", {})
    assert "tolerations" not in cpu["spec"]["template"]["spec"]
    assert container(cpu)["args"][container(cpu)["args"].index("--device") + 1] == "cpu"
    mine = job_resources.build(_rollout({**TRAINING, "gpus": 2, "nodeSelector": {"pool": "a100"},
                                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                                         "command": ["python", "-m", "my.trainer"], "args": ["--fast"]}),
                               types.JobRequest(types.JobKind.TRAINING, "b", version="train-b"))
    pod = mine["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    c = container(mine)
    assert c["command"] == ["python", "-m", "my.trainer"] and c["args"] == ["--fast"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["POLICY_TRAIN_OUTPUT"] == "s3://models/pricing/train-b" and env["POLICY_RESULT_PATH"] == c[
        "terminationMessagePath"]


# --------------------------------------------------------------------------- engine


def test_each_on_demand_id_starts_exactly_one_job() -> None:
    first = _decide(_rollout(TRAINING, annotations={}), T0, train_request="run-1")
    [request] = first.jobs
    assert request.kind is types.JobKind.TRAINING and first.status.last_train_id == "run-1"
    assert [e.reason for e in first.events if e.reason.startswith("Training")] == ["TrainingRequested"]
    replay = _decide(_rollout(TRAINING, first.status), T0, train_request="run-1")
    assert replay.jobs == first.jobs and replay.events == ()  # still wanted, not a second one
    second = _decide(_rollout(TRAINING, first.status), T0, train_request="run-2")
    assert len(second.jobs) == 2 and second.jobs[0] == request
    assert len({r.id for r in second.jobs}) == 2


def test_cron_schedule_starts_one_job_per_slot_and_never_for_the_past() -> None:
    spec = {**TRAINING, "schedule": "*/5 * * * *"}
    status = None
    created: list[str] = []
    for minute, second in [(2, 0), (4, 0), (5, 1), (5, 30), (7, 0), (10, 1), (31, 0), (31, 1)]:
        now = T0.replace(minute=minute, second=second)
        decision = _decide(_rollout(spec, status), now)
        status = decision.status
        created += [e.message for e in decision.events if e.reason == "TrainingRequested"]
    triggers = [entry.trigger for entry in status.training_jobs]  # type: ignore[union-attr]
    # 00:02 remembers slot 00:00 (no Job for the past); 00:05 and 00:10 fire; 00:15-00:30 collapse into 00:30.
    assert triggers == ["schedule/2026-01-01T00:05:00Z", "schedule/2026-01-01T00:10:00Z",
                        "schedule/2026-01-01T00:30:00Z"]
    assert len(created) == 3
    assert training.latest_slot("*/5 * * * *", T0.replace(minute=5)) == T0.replace(minute=0)


def test_finished_jobs_record_the_version_and_auto_rollout_proposes_it() -> None:
    spec = {**TRAINING, "autoRollout": True}
    started = _decide(_rollout(spec), T0, train_request="run-1")
    [request] = started.jobs
    running = _decide(_rollout(spec, started.status), T0, train_request="run-1",
                      jobs={request.id: types.JobObservation(types.JobState.RUNNING)})
    assert running.status.training_jobs[0].phase == "Running" and running.jobs == started.jobs
    result = {"artifact": "s3://models/pricing/train-x", "version": request.version,
              "ope": {"estimate": 0.9, "baselineValue": 0.1, "verdict": "pass"}}
    done = _decide(_rollout(spec, running.status), T0, train_request="run-1",
                   jobs={request.id: types.JobObservation(types.JobState.SUCCEEDED, result)})
    entry = done.status.training_jobs[0]
    assert entry.phase == "Succeeded" and entry.version == request.version
    assert entry.artifact == "s3://models/pricing/train-x" and entry.estimate == 0.9
    assert done.jobs == () and done.next_policy is not None
    assert done.next_policy.version == request.version and done.next_policy.artifact == result["artifact"]
    # A trained policy whose own OPE report failed is recorded, not rolled out.
    refused = _decide(_rollout(spec, running.status), T0, train_request="run-1", jobs={
        request.id: types.JobObservation(types.JobState.SUCCEEDED, {**result, "ope": {"verdict": "fail"}})})
    assert refused.status.training_jobs[0].phase == "Succeeded" and refused.next_policy is None


@pytest.mark.parametrize(("observed", "words"), [
    (types.JobObservation(types.JobState.FAILED, {"error": "no log"}, "DeadlineExceeded"), "DeadlineExceeded"),
    (types.JobObservation(types.JobState.SUCCEEDED, {"version": "x"}), "no artifact"),
    (None, "disappeared"),
])
def test_failed_or_lost_jobs_are_recorded(observed: types.JobObservation | None, words: str) -> None:
    started = _decide(_rollout(TRAINING), T0, train_request="run-1")
    [request] = started.jobs
    running = _decide(_rollout(TRAINING, started.status), T0, train_request="run-1",
                      jobs={request.id: types.JobObservation(types.JobState.RUNNING)})
    jobs = {} if observed is None else {request.id: observed}
    done = _decide(_rollout(TRAINING, running.status), T0, train_request="run-1", jobs=jobs)
    entry = done.status.training_jobs[0]
    assert entry.phase == "Failed" and words in (entry.message or "")
    assert done.jobs == () and any(e.reason == "TrainingFailed" for e in done.events)


# --------------------------------------------------------------------------- end to end


@pytest.mark.integration
def test_on_demand_gpu_training_once_per_id_across_restarts_then_rolled_out(
    kube_api: KubeAPI, client: kube.Client, operator: OperatorProcess, tmp_path: Path
) -> None:
    log = decision_logs.write_log(tmp_path / "log", decision_logs.behaviour(tmp_path / "behaviour"), n=2000)
    name = "retrain"
    # bootstrap_t: the default Bernstein bound is too loose on 2,000 decisions to call the trained policy better,
    # and autoRollout only rolls out a version whose own report passed (docs/offline-gate-and-training.md).
    manifest = policy_rollout_manifest(name, steps=[{"setWeight": 100}], training={
        "dataset": log.url, "output": str(tmp_path / "models"), "gpus": 1, "steps": 300, "autoRollout": True,
        "args": ["--bound", "bootstrap_t"]})
    client.create(manifest)
    status = lambda: client.get(api.API_VERSION, api.KIND, name, "default").get("status") or {}  # noqa: E731
    poll(lambda: status().get("phase") == "Promoted", 60, what="the first rollout", on_timeout=operator.log_tail)
    assert jobs_of(kube_api, name, "train") == [], "no trigger, no Job"

    def annotate(value: str) -> None:
        client.patch(api.API_VERSION, api.KIND, name, "default",
                     {"metadata": {"annotations": {api.ANNOTATION_TRAIN: value}}})

    annotate("nightly-1")
    [job] = poll(lambda: jobs_of(kube_api, name, "train"), 30, what="the training Job", on_timeout=operator.log_tail)
    c = container(job)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert job["spec"]["template"]["spec"]["nodeSelector"]
    assert status()["trainingJobs"][0]["trigger"] == "manual/nightly-1"

    operator.kill()  # crash while the Job runs; the annotation is still there when it comes back
    seen = len(kube_api.calls_to("jobs"))
    operator.start()
    wait_for_jobs_reread(kube_api, seen, operator)
    assert len(jobs_of(kube_api, name, "train")) == 1, "one Job per trigger id, whatever the restarts"

    code, message = run_job(job, {"--device": "cpu"})  # the Job's own command line, on this GPU-less machine
    assert code == 0, message
    finish_job(kube_api, job, code, message)
    trained = json.loads(message)
    entry = poll(lambda: next((e for e in status().get("trainingJobs", []) if e["phase"] == "Succeeded"), None), 30,
                 what="the recorded training result", on_timeout=operator.log_tail)
    assert entry["version"] == trained["version"] and entry["artifact"] == trained["artifact"]
    assert entry["estimate"] > entry["baselineValue"], "the trained policy beats the behaviour policy offline"
    # Lineage: what the trainer wrote into the manifest, with the image the Job ran, recorded as reported.
    manifest_lineage = json.loads(Path(trained["artifact"], "manifest.json").read_text())["lineage"]
    assert entry["lineage"] == trained["lineage"] == manifest_lineage
    assert entry["lineage"]["code"]["image"] == c["image"] and entry["lineage"]["dataset"]["uri"] == log.url
    # autoRollout: the trained version is the next candidate, served from the produced artifact.
    poll(lambda: status().get("candidateVersion") == trained["version"], 30, what="the auto rollout",
         on_timeout=operator.log_tail)
    spec = client.get(api.API_VERSION, api.KIND, name, "default")["spec"]
    assert spec["policy"]["version"] == trained["version"] and spec["policy"]["artifact"] == trained["artifact"]
    deployments = poll(
        lambda: [d for d in kube_api.objects("deployments", "default")
                 if trained["artifact"] in d["spec"]["template"]["spec"]["containers"][0]["args"]],
        30, what="a Deployment serving the trained artifact")
    assert deployments
    assert Path(trained["artifact"], "manifest.json").exists()
    # Promoted, the trained version's revision keeps that lineage (kubectl policyrollout lineage prints it).
    revision = poll(lambda: next((r for r in status().get("revisions", []) if r["version"] == trained["version"]),
                                 None), 60, what="the trained version's revision", on_timeout=operator.log_tail)
    assert revision["lineage"] == manifest_lineage and "lineage" not in spec["policy"]

    annotate("nightly-1")  # the same id again: nothing new
    annotate("nightly-2")
    poll(lambda: len(jobs_of(kube_api, name, "train")) == 2, 30, what="the second training Job")
    assert sorted(e["trigger"] for e in status()["trainingJobs"]) == ["manual/nightly-1", "manual/nightly-2"]


def test_operator_metrics_count_training_jobs_by_phase() -> None:
    from rollout_operator import metrics

    started = _decide(_rollout(TRAINING), T0, train_request="run-1")
    rollout = _rollout(TRAINING, started.status)
    assert metrics._training_states(rollout) == ["Pending"]
