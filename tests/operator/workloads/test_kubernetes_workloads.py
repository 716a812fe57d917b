"""KubernetesWorkloads against the emulated API: the reward-key Secret is made once, before the pods that
read it, never rewritten (a human rotates it), and a reconcile of an unchanged rollout writes nothing."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from rollout_operator import api, kube
from rollout_operator.engine import types
from rollout_operator.workloads.kubernetes import KubernetesWorkloads

from tests.support.kube import KubeAPI, policy_rollout_manifest

pytestmark = pytest.mark.integration

WRITES = {"create", "patch", "update", "delete"}


def _rollout(client: kube.Client, **spec: Any) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(client.apply(policy_rollout_manifest(name="pricing", **spec)))


def _ensure(client: kube.Client, rollout: api.PolicyRollout) -> None:
    KubernetesWorkloads(client).ensure(rollout, types.Workloads(stable=rollout.spec.fallback,
                                                                candidate=rollout.spec.policy))


def _writes(kube_api: KubeAPI, since: int = 0) -> list[tuple[str, str]]:
    return [(c.verb, c.resource) for c in kube_api.calls[since:] if c.verb in WRITES]


def _key_refs(kube_api: KubeAPI) -> dict[str, Any]:
    refs = {}
    for deployment in kube_api.objects("deployments", "default"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        [env] = [e for e in container["env"] if e["name"] == "POLICY_SERVER_REWARD_KEY"]
        refs[deployment["metadata"]["name"]] = env["valueFrom"]["secretKeyRef"]
    return refs


def _stored_key(kube_api: KubeAPI) -> str:
    secret = kube_api.get("secrets", "default", "pricing-reward-key")
    assert secret is not None
    return base64.b64decode(secret["data"]["key"]).decode()


def test_the_secret_is_made_before_the_pods_and_both_deployments_read_it(
    client: kube.Client, kube_api: KubeAPI
) -> None:
    rollout = _rollout(client)
    before = len(kube_api.calls)
    _ensure(client, rollout)
    writes = _writes(kube_api, before)
    assert writes[0] == ("create", "secrets")
    assert writes.count(("create", "secrets")) == 1
    assert len(_stored_key(kube_api)) == 43
    owner = kube_api.get("secrets", "default", "pricing-reward-key")["metadata"]["ownerReferences"][0]
    assert owner["uid"] == rollout.metadata.uid  # deleted with the rollout
    assert _key_refs(kube_api) == {name: {"name": "pricing-reward-key", "key": "key"}
                                   for name in ("pricing-stable", "pricing-candidate")}


def test_a_second_reconcile_writes_nothing_and_keeps_the_key(client: kube.Client, kube_api: KubeAPI) -> None:
    rollout = _rollout(client)
    _ensure(client, rollout)
    key = _stored_key(kube_api)
    before = len(kube_api.calls)
    _ensure(client, rollout)
    assert _writes(kube_api, before) == [], "no restart of the pods, no new key"
    assert _stored_key(kube_api) == key


def test_a_rotated_key_is_never_overwritten_and_restarts_nothing(client: kube.Client, kube_api: KubeAPI) -> None:
    rollout = _rollout(client)
    _ensure(client, rollout)
    secret = kube_api.get("secrets", "default", "pricing-reward-key")
    rotated = f"{'n' * 43},{_stored_key(kube_api)}"  # docs/security.md: NEW,OLD while the pods roll
    secret["data"]["key"] = base64.b64encode(rotated.encode()).decode()
    kube_api.put("secrets", secret)
    before = len(kube_api.calls)
    _ensure(client, rollout)
    assert _writes(kube_api, before) == []
    assert _stored_key(kube_api) == rotated


def test_a_deleted_key_is_made_again(client: kube.Client, kube_api: KubeAPI) -> None:
    """Someone deleted it: pods that start now would fail to read it, so a new key is made."""
    rollout = _rollout(client)
    _ensure(client, rollout)
    client.delete("v1", "Secret", "pricing-reward-key", "default")
    _ensure(client, rollout)
    assert len(_stored_key(kube_api)) == 43


def test_with_a_users_secret_the_operator_makes_none_and_the_pods_read_the_users(
    client: kube.Client, kube_api: KubeAPI
) -> None:
    rollout = _rollout(client, rewardKeySecret={"name": "pricing-keys", "key": "current"})
    _ensure(client, rollout)
    assert kube_api.objects("secrets", "default") == []
    assert _key_refs(kube_api) == {name: {"name": "pricing-keys", "key": "current"}
                                   for name in ("pricing-stable", "pricing-candidate")}
