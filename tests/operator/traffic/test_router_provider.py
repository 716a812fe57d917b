"""RouterProvider against the real control plane: reconcile creates the routing ConfigMap and the
router's workload (all owned, valid built-in kinds, least-privilege RBAC), set/get weights round-trip
through the stored table with a generation that counts real changes only, reconcile keeps the live
split, a hand-edited table is read back as stored, finalize removes everything.
(The router process following this ConfigMap is tested in tests/policy_server/router/.)"""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from rollout_operator import api, kube
from rollout_operator.engine.types import Weights
from rollout_operator.resources import routing
from rollout_operator.traffic.base import TrafficRouter
from rollout_operator.traffic.router import RouterProvider

from tests.support.cluster import ClusterAPI as KubeAPI
from tests.support.cluster import cluster_as_kube_api, cluster_client  # noqa: F401 - the real control plane
from tests.support.kube import policy_rollout_manifest

pytestmark = pytest.mark.integration

K8S_VERSION = "1.32"
ROUTER_KINDS = ["ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"]


@pytest.fixture()
def rollout(client: kube.Client) -> api.PolicyRollout:
    manifest = policy_rollout_manifest(name="pricing", provider="router")
    manifest["spec"]["traffic"]["stickyKey"] = "x-user"
    return api.PolicyRollout.model_validate(client.apply(manifest))


def _table(kube_api: KubeAPI) -> dict:
    cm = kube_api.get("ConfigMap", "default", "pricing-routing")
    assert cm is not None
    return json.loads(cm["data"]["routing.json"])


def test_is_a_traffic_router(client: kube.Client) -> None:
    provider = RouterProvider(client)
    assert isinstance(provider, TrafficRouter)
    assert provider.name == "router"


def test_reconcile_creates_the_table_and_the_router(
    client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout
) -> None:
    provider = RouterProvider(client, clock=lambda: 1000.0)
    provider.reconcile(rollout)
    provider.reconcile(rollout)
    assert _table(kube_api) == {
        "version": 1,
        "stable": "http://pricing-stable.default.svc",
        "candidate": "http://pricing-candidate.default.svc",
        "weight": 0,
        "shadow": False,
        "generation": 1,
        "updatedAt": 1000.0,
        "salt": "default/pricing",
        "stickyKey": "header:x-user",
    }
    owner = [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": "pricing",
            "uid": rollout.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    cm = kube_api.get("ConfigMap", "default", "pricing-routing")
    assert cm["metadata"]["ownerReferences"] == owner
    assert cm["metadata"]["labels"][api.LABEL_ROLLOUT] == "pricing"
    for kind in ROUTER_KINDS:
        obj = kube_api.get(kind, "default", "pricing-router")
        assert obj is not None, kind
        assert obj["metadata"]["ownerReferences"] == owner
    role = kube_api.get("Role", "default", "pricing-router")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["pricing-routing"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
    ]
    dep = kube_api.get("Deployment", "default", "pricing-router")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pricing-router"
    args = pod["containers"][0]["args"]
    assert args[0] == "route" and args[args.index("--configmap") + 1] == "default/pricing-routing"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    writes = [c.verb for c in kube_api.calls_to("configmaps") if c.verb in ("create", "patch")]
    assert writes == ["create"]  # the second reconcile changed nothing


def test_router_objects_are_valid_kubernetes_objects(rollout: api.PolicyRollout) -> None:
    for obj in [
        *routing.router_objects(rollout),
        routing.configmap(rollout, routing.routing_table(rollout, Weights(30), 1, 0.0)),
    ]:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("weights", [Weights(0), Weights(30), Weights(100), Weights(0, shadow=True)], ids=str)
def test_set_then_get_weights_round_trip(
    client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout, weights: Weights
) -> None:
    provider = RouterProvider(client, manage_router=False)
    provider.reconcile(rollout)
    provider.set_weights(rollout, weights)
    assert provider.get_weights(rollout) == weights
    table = _table(kube_api)
    assert (table["weight"], table["shadow"]) == (weights.candidate, weights.shadow)


def test_generation_counts_changes_only(client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout) -> None:
    now = iter([10.0, 20.0, 30.0, 40.0])
    provider = RouterProvider(client, manage_router=False, clock=lambda: next(now))
    provider.reconcile(rollout)  # generation 1 at t=10
    provider.set_weights(rollout, Weights(30))  # generation 2 at t=20
    provider.set_weights(rollout, Weights(30))  # no change: no write
    provider.reconcile(rollout)  # keeps 30: no write
    table = _table(kube_api)
    assert (table["generation"], table["weight"], table["updatedAt"]) == (2, 30, 20.0)
    patches = [c.verb for c in kube_api.calls_to("configmaps") if c.verb == "patch"]
    assert len(patches) == 1


def test_get_weights_reads_what_is_stored(client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout) -> None:
    provider = RouterProvider(client, manage_router=False)
    assert provider.get_weights(rollout) is None  # nothing yet
    provider.set_weights(rollout, Weights(30))
    table = {**_table(kube_api), "weight": 55}
    client.patch("v1", "ConfigMap", "pricing-routing", "default", {"data": {"routing.json": json.dumps(table)}})
    assert provider.get_weights(rollout) == Weights(55)
    foreign = {**table, "candidate": "http://elsewhere.default.svc"}
    client.patch("v1", "ConfigMap", "pricing-routing", "default", {"data": {"routing.json": json.dumps(foreign)}})
    assert provider.get_weights(rollout) is None  # not a split between our two Services
    client.patch("v1", "ConfigMap", "pricing-routing", "default", {"data": {"routing.json": "{oops"}})
    assert provider.get_weights(rollout) is None


def test_finalize_removes_everything(client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout) -> None:
    provider = RouterProvider(client)
    provider.reconcile(rollout)
    provider.finalize(rollout)
    for kind in ["ConfigMap", *ROUTER_KINDS]:
        left = [o["metadata"]["name"] for o in kube_api.objects(kind, "default")]
        # What a real cluster keeps in every namespace (its CA bundle, its default ServiceAccount) and
        # the API server's own `kubernetes` Service in `default` stay.
        assert set(left) <= {"kube-root-ca.crt", "default", "kubernetes"}, (kind, left)
    assert provider.get_weights(rollout) is None
    provider.finalize(rollout)  # twice is fine
