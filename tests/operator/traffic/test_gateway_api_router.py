"""GatewayAPIRouter against the real control plane: reconcile creates one owned HTTPRoute,
set_weights/get_weights round-trip through the stored object, shadow mirrors, reconcile keeps
the live split, finalize removes the route, and missing CRDs or parentRefs fail clearly."""

from __future__ import annotations

import pytest
from rollout_operator import api, kube
from rollout_operator.engine.types import Weights
from rollout_operator.resources import httproute
from rollout_operator.traffic.base import TrafficError, TrafficRouter
from rollout_operator.traffic.gateway_api import GatewayAPIRouter

from tests.support.cluster import ClusterAPI as KubeAPI
from tests.support.cluster import cluster_as_kube_api, cluster_client, without_crd  # noqa: F401 - the real control plane
from tests.support.kube import policy_rollout_manifest

pytestmark = pytest.mark.integration


@pytest.fixture()
def rollout(client: kube.Client) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(client.apply(policy_rollout_manifest(name="pricing")))


def _route(kube_api: KubeAPI) -> dict | None:
    return kube_api.get("httproutes", "default", "pricing")


def test_is_a_traffic_router(client: kube.Client) -> None:
    router = GatewayAPIRouter(client)
    assert isinstance(router, TrafficRouter)
    assert router.name == "gatewayAPI"


def test_reconcile_creates_one_owned_route_sending_everything_to_stable(
    client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout
) -> None:
    router = GatewayAPIRouter(client)
    router.reconcile(rollout)
    router.reconcile(rollout)
    routes = kube_api.objects("httproutes", "default")
    assert len(routes) == 1
    route = routes[0]
    assert route["metadata"]["ownerReferences"] == [{
        "apiVersion": api.API_VERSION, "kind": api.KIND, "name": "pricing", "uid": rollout.metadata.uid,
        "controller": True, "blockOwnerDeletion": True,
    }]
    assert route["metadata"]["labels"][api.LABEL_ROLLOUT] == "pricing"
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    assert route["spec"]["hostnames"] == ["pricing.example.com"]
    assert [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]] == [
        ("pricing-stable", 100), ("pricing-candidate", 0)]
    assert router.get_weights(rollout) == Weights(0)
    writes = [c.verb for c in kube_api.calls_to("httproutes") if c.verb in ("create", "patch")]
    assert writes == ["create"]  # the second reconcile found nothing to change


@pytest.mark.parametrize("weights", [Weights(0), Weights(30), Weights(100), Weights(0, shadow=True)], ids=str)
def test_set_then_get_weights_round_trip(
    client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout, weights: Weights
) -> None:
    router = GatewayAPIRouter(client)
    router.reconcile(rollout)
    router.set_weights(rollout, weights)
    assert router.get_weights(rollout) == weights
    rule = _route(kube_api)["spec"]["rules"][0]
    assert [b["weight"] for b in rule["backendRefs"]] == [100 - weights.candidate, weights.candidate]
    mirrors = [f for f in rule.get("filters", []) if f["type"] == "RequestMirror"]
    assert bool(mirrors) is weights.shadow


def test_shadow_then_canary_removes_the_mirror(client: kube.Client, kube_api: KubeAPI,
                                               rollout: api.PolicyRollout) -> None:
    router = GatewayAPIRouter(client)
    router.set_weights(rollout, Weights(0, shadow=True))
    router.set_weights(rollout, Weights(10))
    assert "filters" not in _route(kube_api)["spec"]["rules"][0]
    assert router.get_weights(rollout) == Weights(10)


def test_reconcile_keeps_the_live_split(client: kube.Client, rollout: api.PolicyRollout) -> None:
    router = GatewayAPIRouter(client)
    router.set_weights(rollout, Weights(30))
    router.reconcile(rollout)  # e.g. after an operator restart, or a hostname change
    assert router.get_weights(rollout) == Weights(30)


def test_get_weights_reads_what_is_stored_not_what_was_written(
    client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout
) -> None:
    router = GatewayAPIRouter(client)
    router.set_weights(rollout, Weights(30))
    edited = _route(kube_api)
    edited["spec"]["rules"][0]["backendRefs"][0]["weight"] = 50  # someone edits the route by hand
    edited["spec"]["rules"][0]["backendRefs"][1]["weight"] = 50
    client.patch(httproute.API_VERSION, httproute.KIND, "pricing", "default", {"spec": edited["spec"]})
    assert router.get_weights(rollout) == Weights(50)


def test_finalize_removes_the_route(client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout) -> None:
    router = GatewayAPIRouter(client)
    router.set_weights(rollout, Weights(30))
    router.finalize(rollout)
    assert kube_api.objects("httproutes", "default") == []
    assert router.get_weights(rollout) is None
    router.finalize(rollout)  # twice is fine


def test_missing_parent_refs_is_a_clear_error(client: kube.Client) -> None:
    manifest = policy_rollout_manifest(name="nogw")
    manifest["spec"]["traffic"]["gatewayAPI"] = {}
    rollout = api.PolicyRollout.model_validate(client.apply(manifest))
    with pytest.raises(TrafficError, match="parentRefs"):
        GatewayAPIRouter(client).reconcile(rollout)


def test_cluster_without_gateway_api(kube_api: KubeAPI, rollout: api.PolicyRollout) -> None:
    with without_crd(kube_api.plane, "httproutes.gateway.networking.k8s.io"):
        client = kube.Client.from_kubeconfig(kube_api.kubeconfig_path)  # fresh discovery
        router = GatewayAPIRouter(client)
        with pytest.raises(TrafficError, match="Gateway API CRDs"):
            router.set_weights(rollout, Weights(10))
        with pytest.raises(TrafficError, match="Gateway API CRDs"):
            router.get_weights(rollout)
        router.finalize(rollout)  # nothing can exist: nothing to clean up
        client.close()
