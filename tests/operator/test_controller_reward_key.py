"""The controller and the reward key, on the emulated API: a Secret named by spec.rewardKeySecret that is
missing (or unusable) fails the rollout at once with a one-line reason and creates nothing; a usable one is
read once per generation (a settled rollout costs no call); the operator's own key is read from its cache."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from rollout_operator import api, checks, controller
from rollout_operator.guardrails import allowlist
from rollout_operator.resources import job_policy

from tests.support.kube import KubeAPI, policy_rollout_manifest

pytestmark = pytest.mark.integration


@pytest.fixture()
def operator(kube_api: KubeAPI) -> Iterator[controller.Controller]:
    trust = checks.TrustPolicy(prometheus=allowlist.UrlAllowList.of(["http://127.0.0.1:9"]),
                               jobs=job_policy.JobAllowList.of([], []))
    config = controller.OperatorConfig(kubeconfig=str(kube_api.kubeconfig_path), namespaces=("default",),
                                       prometheus_url="http://127.0.0.1:9", trust=trust)
    made = controller.Controller(config)  # its queue is not started: the test calls process() itself
    try:
        yield made
    finally:
        made.stop()


def _create(operator: controller.Controller, **spec: Any) -> tuple[str, str]:
    manifest = policy_rollout_manifest(name="pricing", steps=[{"setWeight": 100}], **spec)
    body = operator.client.create(manifest)
    operator.adopt(body)
    return "default", "pricing"


def _secret_reads(kube_api: KubeAPI) -> int:
    return len([c for c in kube_api.calls_to("secrets") if c.verb == "get"])


def _owned(kube_api: KubeAPI) -> list[str]:
    return [o["metadata"]["name"] for kind in ("deployments", "services", "secrets", "httproutes")
            for o in kube_api.objects(kind, "default")]


def test_a_missing_users_secret_fails_the_rollout_at_once_saying_how_to_make_it(
    operator: controller.Controller, kube_api: KubeAPI
) -> None:
    key = _create(operator, rewardKeySecret={"name": "pricing-keys"})
    outcome = operator.process(key)
    assert outcome.result == "invalid"
    stored = kube_api.get(api.PLURAL, "default", "pricing")
    assert stored is not None
    status = stored["status"]
    assert status["phase"] == "Failed"
    assert "Secret 'pricing-keys' (spec.rewardKeySecret) in namespace 'default' does not exist" in status["message"]
    assert "kubectl -n default create secret generic pricing-keys" in status["message"]
    assert "\n" not in status["message"]
    events = [e for e in kube_api.objects("events", "default") if e.get("reason") == "InvalidSpec"]
    assert events and "pricing-keys" in events[0]["message"]
    assert _owned(kube_api) == [], "nothing is created for a rollout whose pods could not start"


def test_a_usable_users_secret_is_read_once_per_generation_and_only_referenced(
    operator: controller.Controller, kube_api: KubeAPI
) -> None:
    kube_api.put("secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "pricing-keys", "namespace": "default", "labels": {api.LABEL_REWARD_KEY: "true"}},
        "data": {"key": base64.b64encode(b"k" * 43).decode()}})
    key = _create(operator, rewardKeySecret={"name": "pricing-keys"})
    operator.process(key)
    operator.process(key)
    operator.process(key)
    assert _secret_reads(kube_api) == 1
    assert [s["metadata"]["name"] for s in kube_api.objects("secrets", "default")] == ["pricing-keys"]
    deployment = kube_api.get("deployments", "default", "pricing-candidate")
    assert deployment is not None
    [env] = [e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
             if e["name"] == "POLICY_SERVER_REWARD_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "pricing-keys", "key": "key"}


def test_the_operators_own_key_is_made_once_and_then_read_from_the_cache(
    operator: controller.Controller, kube_api: KubeAPI
) -> None:
    key = _create(operator)
    operator.process(key)
    secret = kube_api.get("secrets", "default", "pricing-reward-key")
    assert secret is not None
    operator.process(key)
    operator.process(key)
    creates = [c for c in kube_api.calls_to("secrets") if c.verb == "create"]
    assert len(creates) == 1
    assert _secret_reads(kube_api) == 0, "read from the watch-backed cache, never with a GET"
    assert kube_api.get("secrets", "default", "pricing-reward-key")["data"] == secret["data"]
