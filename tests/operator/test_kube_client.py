"""rollout_operator.kube against the real control plane (kube-apiserver, etcd; tests/support/cluster.py):
apply is create-or-patch and idempotent, get/list/delete/patch_status/create_event work for built-in
and custom kinds, and the server's errors (404, 409, 422) map to the small hierarchy with messages
that say what to do.

The client under test is the admin's (`cluster.client`); calls are counted from the API server's
audit log, only the admin's (`ADMIN`), so nothing another client does in the namespace is counted."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from rollout_operator import api, kube

from tests.support.cluster import (
    CRDS,
    cluster_as_kube_api,  # noqa: F401 - the real control plane
    cluster_client,  # noqa: F401
    service_account_kubeconfig,
)
from tests.support.cluster import ClusterAPI as KubeAPI
from tests.support.kube import ApiCall, policy_rollout_manifest

pytestmark = pytest.mark.integration

ADMIN = "kubernetes-admin"  # the user of the session's admin kubeconfig: the client under test
ROOT_CA = "kube-root-ca.crt"  # the ConfigMap the controller-manager publishes into every namespace


def _calls_to(kube_api: KubeAPI, resource: str) -> list[ApiCall]:
    """The client under test's calls to `resource` in default since the test began."""
    return [c for c in kube_api.calls_to(resource) if c.user == ADMIN and c.namespace == "default"]


def _status_defaults() -> dict:
    """What the server fills into a PolicyRollout's status: the defaults of the CRD's status schema."""
    (crd,) = [d for d in yaml.safe_load_all(CRDS[0].read_text()) if d and d["spec"]["names"]["kind"] == api.KIND]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == api.VERSION]
    fields = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    return {name: field["default"] for name, field in fields.items() if "default" in field}


def _names(items: list[dict]) -> list[str]:
    """Object names, without the ConfigMap the server itself keeps in every namespace."""
    return sorted(o["metadata"]["name"] for o in items if o["metadata"]["name"] != ROOT_CA)


def _configmap(name: str = "settings", **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default",
                                                                   "labels": {"app": "x"}},
            "data": dict(data) or {"a": "1"}}


def test_apply_creates_then_is_idempotent(client: kube.Client, kube_api: KubeAPI) -> None:
    created = client.apply(_configmap())
    again = client.apply(_configmap())
    assert again == created  # same stored object: same resourceVersion, nothing written
    stored = [o["data"] for o in kube_api.objects("configmaps", "default") if o["metadata"]["name"] != ROOT_CA]
    assert stored == [{"a": "1"}]
    writes = [c.verb for c in _calls_to(kube_api, "configmaps") if c.verb in ("create", "patch", "update")]
    assert writes == ["create"]


def test_apply_patches_what_differs(client: kube.Client, kube_api: KubeAPI) -> None:
    created = client.apply(_configmap(a="1"))
    changed = client.apply(_configmap(a="2", b="3"))
    assert changed["data"] == {"a": "2", "b": "3"}
    assert changed["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(changed["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert kube_api.get("configmaps", "default", "settings")["data"] == {"a": "2", "b": "3"}
    assert [c.verb for c in _calls_to(kube_api, "configmaps")].count("patch") == 1


def test_apply_does_not_fight_server_defaults(client: kube.Client, kube_api: KubeAPI) -> None:
    """The API server defaults fields (a container's terminationMessagePath, dnsPolicy, a Deployment's
    strategy...); re-applying the same desired object must not count those as changes."""
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {
            "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}},
    }
    client.apply(deployment)
    defaulted = copy.deepcopy(deployment["spec"])
    defaulted["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    defaulted["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    client.patch("apps/v1", "Deployment", "web", "default", {"spec": defaulted})
    patches = lambda: [c for c in _calls_to(kube_api, "deployments") if c.verb == "patch"]  # noqa: E731
    assert len(patches()) == 1
    client.apply(deployment)
    assert len(patches()) == 1  # nothing to change
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "i:2"
    stored = client.apply(deployment)
    assert len(patches()) == 2
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "i:2"


def test_apply_ignores_server_fields_and_status(client: kube.Client) -> None:
    stored = client.apply(_configmap())
    resent = copy.deepcopy(stored)
    resent["metadata"]["resourceVersion"] = "1"  # stale: must not be sent as a precondition
    assert client.apply(resent)["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


def test_custom_resources_and_status(client: kube.Client, kube_api: KubeAPI) -> None:
    manifest = policy_rollout_manifest(name="pricing")
    stored = client.apply(manifest)
    assert stored["metadata"]["generation"] == 1
    status = client.patch_status(api.API_VERSION, api.KIND, "pricing", "default", {"phase": "Shadow"})
    assert status["status"] == {**_status_defaults(), "phase": "Shadow"}  # what was sent, and server defaults
    got = client.get(api.API_VERSION, api.KIND, "pricing", "default")
    assert got["status"]["phase"] == "Shadow"
    # The rollout parses into the API model: this is what the operator reads.
    assert api.PolicyRollout.model_validate(got).status.phase is api.Phase.SHADOW
    assert ("patch", api.GROUP, api.VERSION, api.PLURAL, "status", "default") in {
        (c.verb, c.group, c.version, c.resource, c.subresource, c.namespace) for c in kube_api.calls if c.user == ADMIN
    }


def test_list_with_selector(client: kube.Client) -> None:
    client.apply(_configmap("one"))
    other = _configmap("two")
    other["metadata"]["labels"] = {"app": "y"}
    client.apply(other)
    assert [o["metadata"]["name"] for o in client.list("v1", "ConfigMap", "default", {"app": "x"})] == ["one"]
    assert _names(client.list("v1", "ConfigMap", "default")) == ["one", "two"]
    assert client.list("v1", "ConfigMap", "default", "app in (x,y)") != []


def test_delete_and_not_found(client: kube.Client, kube_api: KubeAPI) -> None:
    client.apply(_configmap())
    assert client.delete("v1", "ConfigMap", "settings", "default") is True
    assert client.delete("v1", "ConfigMap", "settings", "default") is False
    assert _names(kube_api.objects("configmaps", "default")) == []
    with pytest.raises(kube.NotFound, match="ConfigMap 'settings' in namespace 'default'"):
        client.get("v1", "ConfigMap", "settings", "default")
    assert client.find("v1", "ConfigMap", "settings", "default") is None


def test_unknown_kind_says_to_install_the_crd(client: kube.Client) -> None:
    with pytest.raises(kube.UnknownKind, match="CustomResourceDefinition"):
        client.get("example.com/v1", "Widget", "w", "default")
    with pytest.raises(kube.UnknownKind):
        client.find("example.com/v1", "Widget", "w", "default")


def test_conflict_and_invalid(client: kube.Client) -> None:
    client.create(_configmap())
    with pytest.raises(kube.Conflict, match="409"):
        client.create(_configmap())
    with pytest.raises(kube.Invalid, match=r"metadata\.name"):
        client.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})
    with pytest.raises(kube.Invalid, match=r"HTTP 422 .*metadata\.name"):  # refused by the server itself
        client.apply(_configmap("Not_A_DNS_Name"))


def test_forbidden_says_which_role_to_grant(client: kube.Client, kube_api: KubeAPI, tmp_path: Path) -> None:
    client.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody", "namespace": "default"}})
    nobody = kube.Client.from_kubeconfig(  # a ServiceAccount the RBAC authorizer grants nothing
        service_account_kubeconfig(kube_api.plane, "default", "nobody", tmp_path / "nobody.kubeconfig"))
    try:
        with pytest.raises(kube.Forbidden, match=r"HTTP 403 .*grant the operator's ServiceAccount") as denied:
            nobody.apply(_configmap())
        assert denied.value.status == 403
    finally:
        nobody.close()
    assert client.find("v1", "ConfigMap", "settings", "default") is None


def test_create_event(client: kube.Client, kube_api: KubeAPI) -> None:
    rollout = client.apply(policy_rollout_manifest(name="pricing"))
    first = client.create_event(rollout, "Promoted", "candidate v2 serves 100%")
    second = client.create_event(rollout, "Rollback", "error rate 3% > 1%", type="Warning")
    assert first["metadata"]["name"] != second["metadata"]["name"]
    events = {e["reason"]: e for e in kube_api.objects("events", "default")}
    assert events["Rollback"]["type"] == "Warning"
    assert events["Promoted"]["involvedObject"] == {
        "apiVersion": api.API_VERSION, "kind": api.KIND, "name": "pricing", "namespace": "default",
        "uid": rollout["metadata"]["uid"], "resourceVersion": rollout["metadata"]["resourceVersion"],
    }


def test_unreachable_server_is_a_clear_error(tmp_path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    client = kube.Client.from_kubeconfig(config)
    client.api_client.configuration.retries = 0
    with pytest.raises(kube.KubeError, match="unreachable"):
        client.get("v1", "ConfigMap", "x", "default")


def test_bad_kubeconfig_path() -> None:
    with pytest.raises(kube.KubeError, match="cannot load kubeconfig"):
        kube.Client.from_kubeconfig("/nonexistent/kubeconfig")
