"""The chart's ValidatingAdmissionPolicy, judged by the real kube-apiserver (tests/support/cluster.py).

It refuses at `kubectl apply` what the operator would fail for its policy (the same allow-lists,
rendered from the same values), and a rollout that makes the operator run Jobs for an author who
may not create Jobs in that namespace. A policy applies asynchronously once created, so each
test waits until a known-bad rollout is refused before judging the others.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rollout_operator import api, kube
from rollout_operator.cluster.control_plane import ControlPlane

from tests.support import helm_chart as hc
from tests.support.cluster import service_account_kubeconfig
from tests.support.kube import policy_rollout_manifest, wait_for

pytestmark = pytest.mark.integration

NAMESPACE = "vap-team"
PROMETHEUS = "http://prometheus-operated.monitoring:9090"
VALUES = {"operator": {"prometheusUrl": PROMETHEUS}, "jobs": {"allowedImages": ["ghcr.io/acme/policy-server:*"]}}
TRAINING = {"dataset": "s3://logs", "output": "s3://models"}
_names = (f"r{i}" for i in itertools.count())


def _policy_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    kinds = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    return [o for o in hc.render(values, release="vap") if o["kind"] in kinds]


def _rollout(**spec: Any) -> dict[str, Any]:
    return policy_rollout_manifest(name=next(_names), namespace=NAMESPACE, **spec)


def _refusal(client: kube.Client, manifest: dict[str, Any]) -> str | None:
    """The API server's refusal of `manifest` (under a fresh name), or None when it stored it."""
    return _create(client, manifest)[0]


def _create(client: kube.Client, manifest: dict[str, Any]) -> tuple[str | None, str]:
    """(the API server's refusal or None, the fresh name `manifest` was sent under)."""
    attempt = copy.deepcopy(manifest)
    attempt["metadata"]["name"] = name = next(_names)
    try:
        client.create(attempt)
    except (kube.Forbidden, kube.Invalid) as refused:
        return str(refused), name
    return None, name


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Iterator[kube.Client]:
    """The cluster admin, with the chart's policy installed (and removed afterwards) and a namespace for the tests."""
    client = kube.Client.from_kubeconfig(control_plane.kubeconfig)
    client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    objects = _policy_objects(VALUES)
    for obj in objects:
        client.apply(obj)
    bad = _rollout(analysis={"prometheusUrl": "http://127.0.0.1:9090"})
    wait_for(lambda: _refusal(client, bad) is not None, 30, 0.5, what="the admission policy to take effect")
    try:
        yield client
    finally:
        for obj in reversed(objects):
            client.delete(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
        # The API server drops a deleted policy from its admission cache a moment later; the next module's
        # rollouts must not meet it.
        wait_for(lambda: _refusal(client, bad) is None, 30, 0.5, what="the admission policy to be removed")
        client.delete("v1", "Namespace", NAMESPACE)
        client.close()


@pytest.fixture(scope="module")
def author(control_plane: ControlPlane, admin: kube.Client, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[kube.Client]:
    """A user who may create PolicyRollouts in the namespace, and nothing else."""
    admin.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "author", "namespace": NAMESPACE}})
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "rollout-author", "namespace": NAMESPACE},
                 "rules": [{"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": ["create", "get"]}]})
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "rollout-author", "namespace": NAMESPACE},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rollout-author"},
                 "subjects": [{"kind": "ServiceAccount", "name": "author", "namespace": NAMESPACE}]})
    path = service_account_kubeconfig(control_plane, NAMESPACE, "author", tmp_path_factory.mktemp("author") / "kc")
    client = kube.Client.from_kubeconfig(path)
    try:
        yield client
    finally:
        client.close()


def test_the_operators_own_prometheus_and_the_allowed_job_settings_pass(admin: kube.Client) -> None:
    assert _refusal(admin, _rollout(analysis={"prometheusUrl": PROMETHEUS + "/"})) is None
    assert _refusal(admin, _rollout(training={**TRAINING, "serviceAccountName": "policy-training"},
                                    offlineEvaluation={"dataset": "s3://logs"})) is None


@pytest.mark.parametrize(("spec", "words"), [
    ({"analysis": {"prometheusUrl": "http://127.0.0.1:9090"}}, "spec.analysis.prometheusUrl is not a Prometheus"),
    ({"training": {**TRAINING, "image": "evil/miner:latest"}}, "a Job image"),
    ({"offlineEvaluation": {"dataset": "s3://logs", "job": {"image": "ghcr.io/acme/policy-server-evil:1"}}},
     "a Job image"),
    ({"policy": {"image": "evil/miner:latest", "artifact": "s3://p", "version": "v2"}, "training": TRAINING},
     "a Job image"),
    ({"training": {**TRAINING, "serviceAccountName": "deployer"}}, "a Job serviceAccountName"),
], ids=["prometheus-url", "training-image", "evaluation-image", "policy-image-in-a-job", "service-account"])
def test_what_the_operator_would_refuse_is_refused_at_apply(admin: kube.Client, spec: dict[str, Any],
                                                            words: str) -> None:
    refusal = _refusal(admin, _rollout(**spec))
    assert refusal is not None and words in refusal, refusal
    assert "ask the operator's admin" in refusal, "says how to fix it"


def test_an_author_who_may_not_create_jobs_may_not_have_the_operator_create_them(
    admin: kube.Client, author: kube.Client
) -> None:
    assert _refusal(author, _rollout()) is None, "a rollout without Jobs needs no Job rights"
    refusal = _refusal(author, _rollout(training=TRAINING))
    assert refusal is not None and "you may not create Jobs here yourself" in refusal
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "job-creator", "namespace": NAMESPACE},
                 "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}]})
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "author-jobs", "namespace": NAMESPACE},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "job-creator"},
                 "subjects": [{"kind": "ServiceAccount", "name": "author", "namespace": NAMESPACE}]})
    last: list[str | None] = []
    try:
        wait_for(lambda: last.append(_refusal(author, _rollout(training=TRAINING))) or last[-1] is None, 30,
                 what="the new right to count")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last[-1]}") from None


def test_only_spec_changes_are_judged_so_the_operator_can_always_clean_up(admin: kube.Client) -> None:
    """A rollout stored before the policy changed keeps its finalizers and annotations writable."""
    manifest = _rollout(analysis={"prometheusUrl": "http://thanos.monitoring:9090"})
    widened = _policy_objects({**VALUES, "operator": {"prometheusUrl": PROMETHEUS,
                                                     "allowedPrometheusUrls": ["http://thanos.monitoring:9090"]}})
    for obj in widened:
        admin.apply(obj)
    _, name = wait_for(lambda: (attempt := _create(admin, manifest))[0] is None and attempt, 30,
                       what="the widened policy")
    for obj in _policy_objects(VALUES):  # narrowed again: the stored rollout is now outside the policy
        admin.apply(obj)
    later = _rollout(analysis={"prometheusUrl": "http://thanos.monitoring:9090"})
    wait_for(lambda: _refusal(admin, later) is not None, 30, what="the narrowed policy")
    admin.patch(api.API_VERSION, api.KIND, name, NAMESPACE,
                {"metadata": {"finalizers": ["policy.rollouts.io/test"], "annotations": {"a": "b"}}})
    with pytest.raises(kube.Forbidden, match="prometheusUrl"):
        admin.patch(api.API_VERSION, api.KIND, name, NAMESPACE, {"spec": {"progressDeadline": "31m"}})
    admin.patch(api.API_VERSION, api.KIND, name, NAMESPACE, {"metadata": {"finalizers": None}})


def test_the_policy_is_off_when_disabled_and_follows_the_watched_namespaces() -> None:
    assert _policy_objects({"admissionPolicy": {"enabled": False}}) == []
    [_, binding] = _policy_objects({"rbac": {"scope": "namespace", "namespaces": ["team-a", "team-b"]}})
    [selector] = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector["values"] == ["team-a", "team-b"]
    [policy, _] = _policy_objects({"admissionPolicy": {"requireJobPermission": False}})
    assert not any("authorizer" in v["expression"] for v in policy["spec"]["validations"])


def test_the_operator_and_the_policy_get_the_same_lists(tmp_path: Path) -> None:
    objects = hc.render(VALUES, release="vap")
    [deployment] = hc.of_kind(objects, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    [policy] = hc.of_kind(objects, "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert env["POLICY_ROLLOUTS_ALLOWED_PROMETHEUS_URLS"] == PROMETHEUS
    assert variables["prometheusUrls"] == f'["{PROMETHEUS}"]'
    assert env["POLICY_ROLLOUTS_ALLOWED_JOB_IMAGES"] == \
        "ghcr.io/policy-rollouts/policy-server:0.1.0,ghcr.io/acme/policy-server:*"
    assert variables["imageExact"] == '["ghcr.io/policy-rollouts/policy-server:0.1.0"]'
    assert variables["imagePrefixes"] == '["ghcr.io/acme/policy-server:"]'
    assert env["POLICY_ROLLOUTS_ALLOWED_JOB_SERVICE_ACCOUNTS"] == "policy-training"
    assert variables["accountExact"] == '["policy-training"]'
