"""Deployment and Service builders: schema-valid (kubernetes-validate --strict), named, labelled,
owned, hardened, and wired to the policy server's contract (command, probes, port, metrics)."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
from rollout_operator import api, resources
from rollout_operator.resources import meta, routing, workload

from tests.support.kube import policy_rollout_manifest

K8S_VERSION = "1.30"


def _rollout(**spec: object) -> api.PolicyRollout:
    manifest = policy_rollout_manifest(name="pricing", namespace="shop", **spec)
    manifest["metadata"]["uid"] = "0f9c7d3e-7a51-4b4e-9d1e-2b7f6f1e9a10"
    return api.PolicyRollout.model_validate(manifest)


@pytest.fixture()
def rollout() -> api.PolicyRollout:
    return _rollout()


@pytest.mark.parametrize("variant", ["stable", "candidate"])
def test_deployment_and_service_pass_strict_schema_validation(rollout: api.PolicyRollout, variant: str) -> None:
    policy = rollout.spec.policy if variant == "candidate" else rollout.spec.fallback
    for obj in (resources.deployment(rollout, variant, policy), resources.service(rollout, variant)):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_broken_deployment(rollout: api.PolicyRollout) -> None:
    """Guards the test above: the validator really rejects unknown fields and wrong types."""
    obj = resources.deployment(rollout, "candidate", rollout.spec.policy)
    typo = copy.deepcopy(obj)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    wrong_type = copy.deepcopy(obj)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSION, strict=True)


def test_names_labels_selector_and_owner(rollout: api.PolicyRollout) -> None:
    dep = resources.deployment(rollout, "candidate", rollout.spec.policy)
    svc = resources.service(rollout, "candidate")
    assert dep["metadata"]["name"] == svc["metadata"]["name"] == "pricing-candidate"
    assert dep["metadata"]["namespace"] == svc["metadata"]["namespace"] == "shop"
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[api.LABEL_ROLLOUT] == "pricing"
    assert pod_labels[api.LABEL_VARIANT] == "candidate"
    assert pod_labels[meta.LABEL_VERSION] == "v2"
    # The selector must not include the version: selectors are immutable, versions change.
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {api.LABEL_ROLLOUT: "pricing", api.LABEL_VARIANT: "candidate"}
    assert svc["spec"]["selector"] == selector
    assert selector.items() <= pod_labels.items()
    for obj in (dep, svc):
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "policy.rollouts.io/v1alpha1", "kind": "PolicyRollout", "name": "pricing",
            "uid": rollout.metadata.uid, "controller": True, "blockOwnerDeletion": True,
        }]


def test_stable_runs_the_policy_it_is_given(rollout: api.PolicyRollout) -> None:
    dep = resources.deployment(rollout, "stable", rollout.spec.fallback)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert dep["metadata"]["name"] == "pricing-stable"
    assert container["args"][container["args"].index("--model") + 1] == "s3://policies/v1.pt2"
    assert dep["spec"]["template"]["metadata"]["labels"][meta.LABEL_VERSION] == "v1"


def test_container_runs_policy_server_with_probes_and_metrics(rollout: api.PolicyRollout) -> None:
    dep = resources.deployment(rollout, "candidate", rollout.spec.policy)
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/acme/policy-server:0.1.0"
    assert container["command"] + container["args"] == [
        "policy-server", "serve", "--model", "s3://policies/v2.pt2", "--host", "0.0.0.0", "--port", "8080",
        "--variant", "candidate",
    ]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert dep["spec"]["replicas"] == 2
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LOG_LEVEL"] == "info"
    assert env["POLICY_VARIANT"] == "candidate"
    assert env["POLICY_VERSION"] == "v2"


def test_security_context_is_hardened(rollout: api.PolicyRollout) -> None:
    pod_spec = resources.deployment(rollout, "candidate", rollout.spec.policy)["spec"]["template"]["spec"]
    ctx = pod_spec["containers"][0]["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["automountServiceAccountToken"] is False
    # A read-only root needs writable scratch space, mounted from emptyDirs.
    mounts = {m["mountPath"] for m in pod_spec["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts
    assert {v["name"] for v in pod_spec["volumes"]} == {m["name"] for m in pod_spec["containers"][0]["volumeMounts"]}


def test_resources_default_and_override() -> None:
    default = _rollout()
    dep = resources.deployment(default, "candidate", default.spec.policy)
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"] == workload.DEFAULT_RESOURCES

    limits = {"limits": {"cpu": "2", "memory": "4Gi"}}
    custom_policy = dict(policy_rollout_manifest()["spec"]["policy"], resources=limits)
    custom = _rollout(policy=custom_policy)
    res = resources.deployment(custom, "candidate", custom.spec.policy)["spec"]["template"]["spec"]["containers"][0][
        "resources"]
    assert res["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert res["requests"] == workload.DEFAULT_RESOURCES["requests"]  # what the spec leaves out keeps the default
    kubernetes_validate.validate(resources.deployment(custom, "candidate", custom.spec.policy), K8S_VERSION,
                                 strict=True)


def test_user_env_cannot_override_the_variant(rollout: api.PolicyRollout) -> None:
    policy = rollout.spec.policy.model_copy(update={"env": [api.EnvVar(name="POLICY_VARIANT", value="stable")]})
    env = resources.deployment(rollout, "candidate", policy)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e.get("value") for e in env if e["name"] == "POLICY_VARIANT"] == ["candidate"]


def test_odd_versions_become_valid_label_values(rollout: api.PolicyRollout) -> None:
    policy = rollout.spec.policy.model_copy(update={"version": "2026.11.22+build/7"})
    dep = resources.deployment(rollout, "candidate", policy)
    assert dep["metadata"]["annotations"][meta.ANNOTATION_VERSION] == "2026.11.22+build/7"
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    label = dep["metadata"]["labels"][meta.LABEL_VERSION]
    assert label == "2026.11.22-build-7"


def test_no_owner_reference_without_a_uid() -> None:
    rollout = api.PolicyRollout.model_validate(policy_rollout_manifest())
    assert "ownerReferences" not in resources.service(rollout, "stable")["metadata"]


def test_service_maps_port_80_to_the_named_container_port(rollout: api.PolicyRollout) -> None:
    svc = resources.service(rollout, "stable")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    dep = resources.deployment(rollout, "stable", rollout.spec.fallback)
    assert dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"] == "http"


def test_every_server_and_the_router_log_decisions_under_the_rollouts_decision_log_url() -> None:
    rollout = _rollout(decisionLog={"url": "s3://decisions/shop/pricing/"})
    rollout.spec.fallback.env = [api.EnvVar(name="AWS_REGION", value="eu-west-1")]
    for variant, policy in (("stable", rollout.spec.fallback), ("candidate", rollout.spec.policy)):
        dep = resources.deployment(rollout, variant, policy)
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--log-dir") + 1] == f"s3://decisions/shop/pricing/{variant}"
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    router = routing.deployment(rollout)
    container = router["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][container["args"].index("--log-dir") + 1] == "s3://decisions/shop/pricing/router"
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in container["env"]  # the log's storage credentials
    kubernetes_validate.validate(router, K8S_VERSION, strict=True)


def test_a_logging_policy_pod_keeps_a_wal_on_its_emptydir_and_shuts_down_inside_its_grace_period() -> None:
    rollout = _rollout(decisionLog={"url": "s3://decisions/shop/pricing/"})
    dep = resources.deployment(rollout, "candidate", rollout.spec.policy)
    pod = dep["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    wal = args[args.index("--wal-dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    mount = next(path for path in mounts if wal.startswith(path + "/"))
    assert {"name": mounts[mount], "emptyDir": {}} in pod["volumes"]
    budget = float(args[args.index("--shutdown-timeout-s") + 1]) + float(args[args.index("--log-flush-timeout-s") + 1])
    assert budget < pod["terminationGracePeriodSeconds"]


def test_without_a_decision_log_url_nothing_is_logged(rollout: api.PolicyRollout) -> None:
    assert rollout.spec.decision_log is None
    dep = resources.deployment(rollout, "candidate", rollout.spec.policy)
    assert "--log-dir" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--wal-dir" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--log-dir" not in routing.deployment(rollout)["spec"]["template"]["spec"]["containers"][0]["args"]


def test_trusted_keys_reach_every_policy_server_and_its_refusal_reaches_the_pod_status() -> None:
    keys = ["A" * 43 + "=", "B" * 43 + "="]
    rollout = api.PolicyRollout.model_validate(policy_rollout_manifest(artifactVerification={"trustedKeys": keys}))
    for variant, policy in (("stable", rollout.spec.fallback), ("candidate", rollout.spec.policy)):
        [container] = workload.deployment(rollout, variant, policy)["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert [args[i + 1] for i, a in enumerate(args) if a == "--trusted-key"] == keys
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    plain = api.PolicyRollout.model_validate(policy_rollout_manifest())
    [container] = workload.deployment(plain, "candidate", plain.spec.policy)["spec"]["template"]["spec"]["containers"]
    assert "--trusted-key" not in container["args"]


@pytest.mark.parametrize("key", ["not-base64!", "A" * 44, ""])
def test_a_trusted_key_must_be_32_raw_bytes_in_base64(key: str) -> None:
    with pytest.raises(ValueError, match="trustedKeys"):
        api.PolicyRollout.model_validate(policy_rollout_manifest(artifactVerification={"trustedKeys": [key]}))


def test_one_server_process_per_pod_unless_the_spec_asks_for_more(rollout: api.PolicyRollout) -> None:
    args = resources.deployment(rollout, "candidate", rollout.spec.policy)["spec"]["template"]["spec"]["containers"][0][
        "args"]
    assert "--workers" not in args  # the default: the Deployment is what it was before workers existed
    several = _rollout(policy={**rollout.spec.policy.wire(), "workers": 4},
                       fallback={**rollout.spec.fallback.wire(), "workers": 2})
    for variant, policy, workers in (("candidate", several.spec.policy, "4"), ("stable", several.spec.fallback, "2")):
        args = resources.deployment(several, variant, policy)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--workers") + 1] == workers
        assert args[:2] == ["serve", "--model"]
    limits = resources.deployment(several, "candidate", several.spec.policy)["spec"]["template"]["spec"][
        "containers"][0]["resources"]["limits"]
    assert limits["memory"] == "2048Mi", "each worker holds the model: the default limit grows with them"
    own = _rollout(policy={**several.spec.policy.wire(), "resources": {"limits": {"memory": "3Gi"}}})
    limits = resources.deployment(own, "candidate", own.spec.policy)["spec"]["template"]["spec"]["containers"][0][
        "resources"]["limits"]
    assert limits == {"memory": "3Gi"}, "a limit the spec gives is kept as given"


def test_the_router_may_read_endpointslices_of_its_namespace_only(rollout: api.PolicyRollout) -> None:
    """The router balances over each variant's ready pods: read-only EndpointSlices, in a Role (namespaced)."""
    role = routing.role(rollout)
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "shop"
    [slices] = [r for r in role["rules"] if r["resources"] == ["endpointslices"]]
    assert slices == {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                      "verbs": ["get", "list", "watch"]}
    [configmaps] = [r for r in role["rules"] if r["resources"] == ["configmaps"]]
    assert configmaps["resourceNames"] == [routing.configmap_name(rollout)]
