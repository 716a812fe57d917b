"""Which images and ServiceAccounts the operator's Jobs may use: the admin's allow-lists, never the rollout's."""

from __future__ import annotations

from typing import Any

import pytest
from rollout_operator import api
from rollout_operator.resources import job_policy

from tests.support.kube import policy_rollout_manifest

POLICY_IMAGE = "ghcr.io/acme/policy-server:0.1.0"


def _rollout(**spec: Any) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(policy_rollout_manifest(**spec))


def _training(**job: Any) -> api.PolicyRollout:
    return _rollout(training={"dataset": "s3://logs", "output": "s3://models", **job})


@pytest.mark.parametrize(("value", "entries", "expected"), [
    ("ghcr.io/acme/policy-server:0.1.0", ["ghcr.io/acme/policy-server:0.1.0"], True),
    ("ghcr.io/acme/policy-server:0.2.0", ["ghcr.io/acme/policy-server:*"], True),
    ("ghcr.io/acme/policy-server-evil:1", ["ghcr.io/acme/policy-server:*"], False),
    ("ghcr.io/acme/policy-server:0.1.0", ["ghcr.io/acme/policy-server"], False),
    ("docker.io/library/busybox", ["*"], True),
    ("anything", [], False),
])
def test_entries_are_exact_or_a_prefix_before_a_star(value: str, entries: list[str], expected: bool) -> None:
    assert job_policy.matches(value, entries) is expected


def test_a_rollout_without_jobs_has_nothing_to_refuse() -> None:
    assert job_policy.JobAllowList().problems(_rollout()) == []


def test_the_job_image_defaults_to_the_policy_image_and_is_checked_as_such() -> None:
    allowed = job_policy.JobAllowList.of([POLICY_IMAGE], [])
    assert allowed.problems(_training()) == []
    [problem] = job_policy.JobAllowList.of(["ghcr.io/acme/trainer:*"], []).problems(_training())
    assert problem.startswith(f"spec.training.image (unset: spec.policy.image) {POLICY_IMAGE!r} is not an image")
    assert "ghcr.io/acme/trainer:*" in problem and "jobs.allowedImages" in problem


def test_an_image_of_the_rollouts_choosing_is_refused_for_every_kind_of_job() -> None:
    rollout = _rollout(
        training={"dataset": "s3://logs", "output": "s3://models", "image": "evil/miner:latest"},
        offlineEvaluation={"dataset": "s3://logs", "job": {"image": "evil/miner:latest"}},
    )
    problems = job_policy.JobAllowList.of([POLICY_IMAGE], []).problems(rollout)
    assert [p.split(" ", 1)[0] for p in problems] == ["spec.offlineEvaluation.job.image", "spec.training.image"]


def test_a_named_service_account_must_be_listed_and_an_unset_one_is_the_namespace_default() -> None:
    allowed = job_policy.JobAllowList.of([POLICY_IMAGE], ["policy-training"])
    assert allowed.problems(_training(serviceAccountName="policy-training")) == []
    assert allowed.problems(_training()) == []
    [problem] = allowed.problems(_training(serviceAccountName="cluster-admin-bot"))
    assert problem.startswith("spec.training.serviceAccountName 'cluster-admin-bot' is not a ServiceAccount")
    assert "policy-training" in problem and "leave it unset" in problem


def test_nothing_is_allowed_until_the_admin_lists_it() -> None:
    problems = job_policy.JobAllowList().problems(_training(serviceAccountName="policy-training"))
    assert len(problems) == 2 and all("(allowed: none)" in p for p in problems)


class _RecordingClient:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.created.append(obj)
        return obj


def test_the_job_runner_creates_nothing_the_policy_refuses() -> None:
    """A spec edited mid-rollout past the policy: the operator warns (SpecProblem) and runs nothing."""
    from rollout_operator.engine import types
    from rollout_operator.workloads import jobs as k8s_jobs

    request = types.JobRequest(kind=types.JobKind.TRAINING, id="manual-1", version="v3")
    client = _RecordingClient()
    runner = k8s_jobs.KubernetesJobs(client, job_policy.JobAllowList.of([POLICY_IMAGE], []))  # type: ignore[arg-type]
    runner.ensure(_training(image="evil/miner:latest"), (request,), {})
    assert client.created == []
    runner.ensure(_training(), (request,), {})
    assert [j["spec"]["template"]["spec"]["containers"][0]["image"] for j in client.created] == [POLICY_IMAGE]
