"""The training Job of `constrained-cql`: budgets and resume on its command line, and with workers > 1 an Indexed Job.

Multi-worker training is one torchrun node per pod of an Indexed Job (completions = parallelism =
workers), every pod started at once, rank 0's pod the static rendezvous named by the rollout's
headless Service (`<job>-0.<rollout>-train-rdzv`), `nvidia.com/gpu` per pod and one torchrun process
per GPU. Every pod resumes from the newest checkpoint, so the Job's backoff restarts a run, never
starts it over. The Service is created before the Job and shared by the rollout's training Jobs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
from rollout_operator import api, kube
from rollout_operator.engine import types
from rollout_operator.resources import jobs as job_resources
from rollout_operator.workloads import jobs as k8s_jobs

from tests.policy_server.train import cooling_mdp
from tests.support.kube import KubeAPI, policy_rollout_manifest

CONSTRAINED = {"dataset": "s3://logs/cooling", "output": "s3://models/cooling", "algorithm": "constrained-cql",
               "steps": 5000, "gamma": 0.95, "checkpointEvery": 250,
               "costBudgets": [{"cost": "overheat", "max": 1.5}, {"cost": "energy", "max": 20}]}
REQUEST = types.JobRequest(types.JobKind.TRAINING, "abc", version="train-abc")


def _rollout(**training: Any) -> api.PolicyRollout:
    manifest = policy_rollout_manifest("cooling", steps=[{"setWeight": 100}], training=training)
    manifest["metadata"]["uid"] = "uid-1"
    return api.PolicyRollout.model_validate(manifest)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return container


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_one_worker_trains_within_the_budgets_and_resumes_from_its_checkpoints() -> None:
    job = job_resources.build(_rollout(**CONSTRAINED), REQUEST)
    container = _container(job)
    args = container["args"]
    assert container["command"] == ["policy-server"] and args[0] == "train"
    assert _value(args, "--algorithm") == "constrained-cql" and _value(args, "--gamma") == "0.95"
    assert _value(args, "--checkpoint-every") == "250" and "--resume" in args
    assert "--cost=overheat" in args and "--cost-budget=1.5" in args
    assert args.index("--cost=energy") < args.index("--cost-budget=20.0")  # budgets pair with costs by position
    assert _value(args, "--out") == "s3://models/cooling/train-abc"  # checkpoints go under it, per version
    assert _value(args, "--tensorboard") == "s3://models/cooling/train-abc/tensorboard"
    assert "completionMode" not in job["spec"]
    assert job_resources.companions(_rollout(**CONSTRAINED), REQUEST) == []


def test_the_job_tells_the_trainer_its_image_and_the_commit_for_the_artifacts_lineage() -> None:
    rollout = _rollout(**CONSTRAINED, image="registry.local/trainer@sha256:" + "cd" * 32)
    env = {e["name"]: e["value"] for e in _container(job_resources.build(rollout, REQUEST))["env"]}
    assert env["POLICY_ROLLOUTS_IMAGE"] == "registry.local/trainer@sha256:" + "cd" * 32
    assert "POLICY_ROLLOUTS_COMMIT" not in env  # unknown: none is made up
    rollout.metadata.annotations[api.ANNOTATION_COMMIT] = "0123abcd"
    env = {e["name"]: e["value"] for e in _container(job_resources.build(rollout, REQUEST))["env"]}
    assert env["POLICY_ROLLOUTS_COMMIT"] == "0123abcd"
    assert env["POLICY_ROLLOUTS_IMAGE"] == job_resources.job_image(rollout, rollout.spec.training)  # type: ignore[arg-type]


def test_workers_make_an_indexed_job_of_torchrun_nodes_with_gpus_per_pod() -> None:
    rollout = _rollout(**CONSTRAINED, workers=3, gpus=2)
    job = job_resources.build(rollout, REQUEST)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (3, 3, "Indexed")
    assert pod["subdomain"] == "cooling-train-rdzv"
    container = _container(job)
    args = container["args"]
    assert container["command"] == ["torchrun"]
    assert _value(args, "--nnodes") == "3" and _value(args, "--nproc-per-node") == "2"
    assert _value(args, "--node-rank") == "$(JOB_COMPLETION_INDEX)"  # expanded by the kubelet from the Job's env
    assert _value(args, "--master-addr") == "cooling-train-abc-0.cooling-train-rdzv"
    assert _value(args, "--master-port") == str(job_resources.RENDEZVOUS_PORT)
    train = args[args.index("-m") + 1:]
    assert train[:2] == ["policy_server.cli", "train"] and "--resume" in train and _value(train, "--device") == "cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"  # per worker
    assert container["ports"] == [{"name": "rendezvous", "containerPort": job_resources.RENDEZVOUS_PORT}]

    [service] = job_resources.companions(rollout, REQUEST)
    assert service["kind"] == "Service" and service["metadata"]["name"] == pod["subdomain"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-1"  # deleted with the rollout


def test_cpu_workers_run_one_process_per_pod_without_gpu_scheduling() -> None:
    job = job_resources.build(_rollout(**CONSTRAINED, workers=2), REQUEST)
    container = _container(job)
    assert _value(container["args"], "--nproc-per-node") == "1" and _value(container["args"], "--device") == "cpu"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "nodeSelector" not in job["spec"]["template"]["spec"]


@pytest.mark.parametrize("extra", [{"workers": 2}, {"costBudgets": [{"cost": "overheat", "max": 1}]}])
def test_workers_and_budgets_are_for_constrained_cql_only(extra: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError, match="need algorithm constrained-cql"):
        _rollout(**{**CONSTRAINED, "algorithm": "reward-model", **extra})


def test_bandit_algorithms_keep_their_command_line() -> None:
    args = _container(job_resources.build(_rollout(dataset="s3://l", output="s3://m"), REQUEST))["args"]
    assert "--resume" not in args and "--gamma" not in args and _value(args, "--algorithm") == "reward-model"


@pytest.mark.integration
def test_the_rendezvous_service_is_created_once_before_the_jobs(client: kube.Client, kube_api: KubeAPI) -> None:
    manifest = policy_rollout_manifest("cooling", steps=[{"setWeight": 100}], training={**CONSTRAINED, "workers": 2})
    rollout = api.PolicyRollout.model_validate(client.apply(manifest))
    runner = k8s_jobs.KubernetesJobs(client)
    second = types.JobRequest(types.JobKind.TRAINING, "def", version="train-def")
    since = len(kube_api.calls)
    runner.ensure(rollout, (REQUEST,), {})
    runner.ensure(rollout, (REQUEST, second), runner.observe(rollout))
    created = [c.resource for c in kube_api.calls[since:] if c.verb == "create"]
    assert created[:2] == ["services", "jobs"] and created.count("jobs") == 2
    assert sorted(j["metadata"]["name"] for j in kube_api.objects("jobs", "default")) == [
        "cooling-train-abc", "cooling-train-def"]
    [service] = kube_api.objects("services", "default")
    assert service["metadata"]["name"] == "cooling-train-rdzv" and service["spec"]["clusterIP"] == "None"
    for job in kube_api.objects("jobs", "default"):
        assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2


def test_the_indexed_job_and_its_service_are_valid_kubernetes_objects() -> None:
    rollout = _rollout(**CONSTRAINED, workers=4, gpus=1)
    for obj in [job_resources.build(rollout, REQUEST), *job_resources.companions(rollout, REQUEST)]:
        kubernetes_validate.validate(obj, "1.30", strict=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pod_command(job: dict[str, Any], index: int, port: int, arrays: str, tmp: Path) -> list[str]:
    """What a pod of the Job runs, with the kubelet's and the cluster's parts played on loopback."""
    swap = {"$(JOB_COMPLETION_INDEX)": str(index), "cooling-train-abc-0.cooling-train-rdzv": "127.0.0.1",
            str(job_resources.RENDEZVOUS_PORT): str(port), job_resources.RESULT_PATH: str(tmp / f"result-{index}"),
            "s3://models/cooling/train-abc": str(tmp / "model"), "s3://models/cooling/train-abc/tensorboard":
            str(tmp / "tb")}
    args = [swap.get(a, a) for a in _container(job)["args"]]
    logs = args.index("--logs")
    args[logs:logs + 2] = ["--trajectory-arrays", arrays]
    return [sys.executable, "-m", "torch.distributed.run", *args]


@pytest.mark.integration
def test_the_pods_command_lines_train_together(tmp_path: Path) -> None:
    """Two 'pods' run the Job's own torchrun command lines (rendezvous on loopback) and finish one run."""
    training = {**CONSTRAINED, "workers": 2, "steps": 40, "checkpointEvery": 20,
                "costBudgets": [{"cost": "overheat", "max": 1.0}], "args": ["--batch-size", "32"]}
    job = job_resources.build(_rollout(**training), REQUEST)
    arrays = cooling_mdp.save_logged(tmp_path / "episodes.npz", 40, seed=0)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pods = [subprocess.Popen(_pod_command(job, i, port, arrays, tmp_path), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        errors = [pod.communicate(timeout=240)[1] for pod in pods]
    finally:
        for pod in pods:
            if pod.poll() is None:
                pod.kill()
                pod.wait(timeout=30)
    assert [pod.returncode for pod in pods] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    results = [json.loads((tmp_path / f"result-{i}").read_text()) for i in range(2)]
    for result in results:
        result.pop("seconds")  # each pod's own wall time
    assert results[0] == results[1] and results[0]["workers"] == 2 and results[0]["steps"] == 40
    assert (tmp_path / "model" / "checkpoints" / "ckpt-000000020.pt").exists()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
