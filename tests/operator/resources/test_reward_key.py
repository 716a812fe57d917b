"""The rollout's reward key: the Secret the operator makes, the env every policy server and the router
read it from, a user's Secret instead (checked before use), and the key being one the servers accept."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes_validate
import pytest
from rollout_operator import api
from rollout_operator.resources import reward_key, routing, workload

from policy_server import attribution
from tests.support.kube import policy_rollout_manifest

K8S_VERSION = "1.30"
UID = "0f9c7d3e-7a51-4b4e-9d1e-2b7f6f1e9a10"


def _rollout(**spec: Any) -> api.PolicyRollout:
    manifest = policy_rollout_manifest(name="pricing", namespace="shop", **spec)
    manifest["metadata"]["uid"] = UID
    return api.PolicyRollout.model_validate(manifest)


def _containers(rollout: api.PolicyRollout) -> dict[str, dict[str, Any]]:
    """Every container the rollout runs that serves or routes requests, by where it runs."""
    spec = rollout.spec
    deployments = {
        "stable": workload.deployment(rollout, "stable", spec.fallback),
        "candidate": workload.deployment(rollout, "candidate", spec.policy),
        "router": routing.deployment(rollout),
    }
    return {where: d["spec"]["template"]["spec"]["containers"][0] for where, d in deployments.items()}


def _key_env(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in container.get("env", []) if e["name"] == "POLICY_SERVER_REWARD_KEY"]


def _decoded(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"][reward_key.DATA_KEY]).decode()


def test_the_contract_with_the_policy_server() -> None:
    assert reward_key.ENV_VAR == attribution.ENV_VAR
    assert reward_key.MIN_KEY_CHARS == attribution.MIN_KEY_CHARS


def test_the_operators_secret_is_named_labelled_owned_and_valid() -> None:
    rollout = _rollout()
    secret = reward_key.secret(rollout)
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert secret["metadata"]["name"] == "pricing-reward-key"
    assert secret["metadata"]["namespace"] == "shop"
    assert secret["metadata"]["labels"][api.LABEL_ROLLOUT] == "pricing"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "policy-rollouts"  # what the cache watches
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("PolicyRollout", "pricing", UID, True)
    assert list(secret["data"]) == ["key"]


def test_a_new_key_is_32_random_bytes_that_the_servers_accept() -> None:
    rollout = _rollout()
    first, second = _decoded(reward_key.secret(rollout)), _decoded(reward_key.secret(rollout))
    assert first != second
    assert len(base64.urlsafe_b64decode(first + "=")) == 32
    keys = attribution.RewardKeys.parse(first)
    assert not keys.generated
    signed = attribution.IdSigner(keys, variant="candidate", policy_version="v2").generate(1_700_000_000.0)
    assert attribution.verify(attribution.RewardKeys.parse(first), signed).variant == "candidate"


def test_every_server_and_the_router_read_the_operators_key_from_its_secret() -> None:
    for where, container in _containers(_rollout(decisionLog={"url": "s3://logs/pricing"})).items():
        assert _key_env(container) == [{"name": "POLICY_SERVER_REWARD_KEY", "valueFrom": {
            "secretKeyRef": {"name": "pricing-reward-key", "key": "key"}}}], where


def test_the_router_gets_the_key_without_a_decision_log_too() -> None:
    assert _key_env(_containers(_rollout())["router"])


def test_a_users_secret_replaces_the_operators() -> None:
    rollout = _rollout(rewardKeySecret={"name": "pricing-keys", "key": "current"})
    assert reward_key.secret_ref(rollout) == ("pricing-keys", "current")
    for where, container in _containers(rollout).items():
        ref = _key_env(container)[0]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "pricing-keys", "key": "current"}, where


def test_a_users_env_cannot_replace_the_key() -> None:
    policy = {"image": "ghcr.io/acme/policy-server:0.1.0", "artifact": "s3://policies/v2.pt2", "version": "v2",
              "env": [{"name": "POLICY_SERVER_REWARD_KEY", "value": "x" * 43}, {"name": "LOG_LEVEL", "value": "info"}]}
    rollout = _rollout(policy=policy, fallback={**policy, "version": "v1"}, decisionLog={"url": "s3://logs"})
    for where, container in _containers(rollout).items():
        assert len(_key_env(container)) == 1 and "valueFrom" in _key_env(container)[0], where


def test_the_env_is_the_same_on_every_build() -> None:
    """A reconcile compares the Deployment it builds with the stored one: the env must not vary."""
    rollout = _rollout()
    assert _containers(rollout) == _containers(rollout)


# --------------------------------------------------------------- a user's Secret, as read from the API


def _user_secret(labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "pricing-keys", "namespace": "shop",
                     "labels": {api.LABEL_REWARD_KEY: "true"} if labels is None else labels},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


GOOD = "k" * 43


def test_no_problem_without_a_users_secret() -> None:
    assert reward_key.problem(_rollout(), None) is None


def test_a_usable_users_secret_has_no_problem() -> None:
    rollout = _rollout(rewardKeySecret={"name": "pricing-keys"})
    assert reward_key.problem(rollout, _user_secret(key=GOOD)) is None
    assert reward_key.problem(rollout, _user_secret(key=f"{GOOD},{'o' * 43}")) is None  # mid-rotation: NEW,OLD


@pytest.mark.parametrize(("secret", "words"), [
    (None, ["Secret 'pricing-keys' (spec.rewardKeySecret) in namespace 'shop' does not exist",
            "kubectl -n shop create secret generic pricing-keys --from-literal=key=",
            f"kubectl -n shop label secret pricing-keys {api.LABEL_REWARD_KEY}=true"]),
    (_user_secret(labels={}, key=GOOD), [f"is not labelled {api.LABEL_REWARD_KEY}=true",
                                         f"kubectl -n shop label secret pricing-keys {api.LABEL_REWARD_KEY}=true"]),
    (_user_secret(other=GOOD), ["has no data key 'key'", "spec.rewardKeySecret.key"]),
    (_user_secret(key="short"), ["at least 32 characters", "secrets.token_urlsafe(32)"]),
    (_user_secret(key=f"{GOOD},short"), ["at least 32 characters"]),
], ids=["missing", "unlabelled", "no-such-key", "short", "one-short-key"])
def test_an_unusable_users_secret_is_explained_in_one_line(secret: dict[str, Any] | None, words: list[str]) -> None:
    problem = reward_key.problem(_rollout(rewardKeySecret={"name": "pricing-keys"}), secret)
    assert problem is not None and "\n" not in problem
    for word in words:
        assert word in problem
