"""Istio provider: the VirtualService is valid against the official Istio 1.30 CRD schema
(v1, structural schema + CEL rules) at every split and in shadow, `weights_of` reads back what
the builder wrote, and IstioRouter against the real control plane: reconcile creates one owned
VirtualService, set/get round-trip, shadow->canary drops the mirror, reconcile keeps the live
split, finalize removes it, and missing hosts or a cluster without Istio fail clearly."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from rollout_operator import api, kube
from rollout_operator.engine.types import Weights
from rollout_operator.resources import virtualservice
from rollout_operator.traffic.base import TrafficError, TrafficRouter
from rollout_operator.traffic.istio import IstioRouter

from tests.support import crd_validation, requirements
from tests.support.cluster import ClusterAPI as KubeAPI
from tests.support.cluster import cluster_as_kube_api, cluster_client, without_crd  # noqa: F401 - the real control plane
from tests.support.kube import policy_rollout_manifest

CASES = [Weights(0), Weights(30), Weights(100), Weights(0, shadow=True), Weights(30, shadow=True)]


def _manifest(name: str = "bidder", namespace: str = "ads") -> dict:
    manifest = policy_rollout_manifest(name=name, namespace=namespace, provider="istio")
    manifest["spec"]["traffic"]["hosts"] = [f"{name}.{namespace}.svc.cluster.local"]
    return manifest


@pytest.fixture(scope="module")
def crd() -> dict:
    crd = crd_validation.load_crd(requirements.schema("istio-1.30.3-virtualservices.yaml"))
    # Istio's generated CRD leaves apiVersion/kind out of its root schema; the API server accepts
    # them on every object anyway (they select the schema), so declare them as it implicitly does.
    for version in crd["spec"]["versions"]:
        props = version["schema"]["openAPIV3Schema"]["properties"]
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
    return crd


@pytest.fixture()
def offline_rollout() -> api.PolicyRollout:
    manifest = _manifest()
    manifest["metadata"]["uid"] = "0f9c7d3e-7a51-4b4e-9d1e-2b7f6f1e9a10"
    return api.PolicyRollout.model_validate(manifest)


@pytest.mark.parametrize("weights", CASES, ids=str)
def test_virtualservice_is_valid_against_the_istio_schema(
    crd: dict, offline_rollout: api.PolicyRollout, weights: Weights
) -> None:
    vs = virtualservice.virtualservice(offline_rollout, weights)
    jsonschema.validate(vs["spec"], crd_validation.version_schema(crd, "v1")["properties"]["spec"])
    assert crd_validation.validate(vs, crd) == []
    route = vs["spec"]["http"][0]
    assert sum(r["weight"] for r in route["route"]) == 100
    assert route["route"][1]["destination"]["host"] == "bidder-candidate.ads.svc.cluster.local"
    assert ("mirror" in route) is weights.shadow
    # shadow serves nothing from the candidate: a mirrored 30 % split is written (and read) as 0 %
    expected = Weights(0, shadow=True) if weights.shadow else weights
    assert virtualservice.weights_of(vs, offline_rollout) == expected


def test_schema_check_rejects_a_broken_virtualservice(crd: dict, offline_rollout: api.PolicyRollout) -> None:
    """Guards the test above: the schema really catches bad fields."""
    vs = virtualservice.virtualservice(offline_rollout, Weights(30, shadow=True))
    bad = copy.deepcopy(vs)
    bad["spec"]["http"][0]["mirrorPercentage"] = {"value": "all"}
    assert crd_validation.validate(bad, crd)
    typo = copy.deepcopy(vs)
    typo["spec"]["http"][0]["route"][0]["weigth"] = 5
    assert crd_validation.validate(typo, crd)


# ----------------------------------------------------------------------------- against the real control plane


@pytest.fixture()
def rollout(client: kube.Client) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(client.apply(_manifest(namespace="default")))


def _vs(kube_api: KubeAPI) -> dict | None:
    return kube_api.get("virtualservices", "default", "bidder")


@pytest.mark.integration
def test_reconcile_creates_one_owned_virtualservice(
    client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout, crd: dict
) -> None:
    router = IstioRouter(client)
    assert isinstance(router, TrafficRouter) and router.name == "istio"
    router.reconcile(rollout)
    router.reconcile(rollout)
    objects = kube_api.objects("virtualservices", "default")
    assert len(objects) == 1
    vs = objects[0]
    assert vs["metadata"]["ownerReferences"][0]["uid"] == rollout.metadata.uid
    assert vs["spec"]["hosts"] == ["bidder.default.svc.cluster.local"]
    assert [(r["destination"]["host"], r["weight"]) for r in vs["spec"]["http"][0]["route"]] == [
        ("bidder-stable.default.svc.cluster.local", 100),
        ("bidder-candidate.default.svc.cluster.local", 0),
    ]
    assert crd_validation.validate(vs, crd) == []  # what the server stored, too
    writes = [c.verb for c in kube_api.calls_to("virtualservices") if c.verb in ("create", "patch")]
    assert writes == ["create"]


@pytest.mark.integration
@pytest.mark.parametrize("weights", [Weights(0), Weights(30), Weights(100), Weights(0, shadow=True)], ids=str)
def test_set_then_get_weights_round_trip(
    client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout, weights: Weights
) -> None:
    router = IstioRouter(client)
    router.reconcile(rollout)
    router.set_weights(rollout, weights)
    assert router.get_weights(rollout) == weights
    http = _vs(kube_api)["spec"]["http"][0]
    assert [r["weight"] for r in http["route"]] == [100 - weights.candidate, weights.candidate]
    if weights.shadow:
        assert http["mirror"]["host"] == "bidder-candidate.default.svc.cluster.local"
        assert http["mirrorPercentage"] == {"value": 100.0}


@pytest.mark.integration
def test_shadow_then_canary_drops_the_mirror_and_reconcile_keeps_the_split(
    client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout
) -> None:
    router = IstioRouter(client)
    router.set_weights(rollout, Weights(0, shadow=True))
    router.set_weights(rollout, Weights(10))
    assert "mirror" not in _vs(kube_api)["spec"]["http"][0]
    router.reconcile(rollout)
    assert router.get_weights(rollout) == Weights(10)


@pytest.mark.integration
def test_get_weights_reads_what_is_stored(client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout) -> None:
    router = IstioRouter(client)
    router.set_weights(rollout, Weights(30))
    spec = _vs(kube_api)["spec"]
    spec["http"][0]["route"][0]["weight"], spec["http"][0]["route"][1]["weight"] = 50, 50
    client.patch(virtualservice.API_VERSION, virtualservice.KIND, "bidder", "default", {"spec": spec})
    assert router.get_weights(rollout) == Weights(50)


@pytest.mark.integration
def test_finalize_removes_it(client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout) -> None:
    router = IstioRouter(client)
    router.set_weights(rollout, Weights(30))
    router.finalize(rollout)
    assert kube_api.objects("virtualservices", "default") == []
    assert router.get_weights(rollout) is None
    router.finalize(rollout)


@pytest.mark.integration
def test_missing_hosts_and_missing_istio_are_clear_errors(
    client: kube.Client, kube_api: KubeAPI, rollout: api.PolicyRollout
) -> None:
    manifest = _manifest(name="nohosts", namespace="default")
    manifest["spec"]["traffic"]["hosts"] = []
    with pytest.raises(TrafficError, match=r"spec\.traffic\.hosts is empty"):
        IstioRouter(client).reconcile(api.PolicyRollout.model_validate(client.apply(manifest)))
    with without_crd(kube_api.plane, "virtualservices.networking.istio.io"):
        fresh = kube.Client.from_kubeconfig(kube_api.kubeconfig_path)  # fresh discovery
        router = IstioRouter(fresh)
        with pytest.raises(TrafficError, match="install Istio"):
            router.set_weights(rollout, Weights(10))
        with pytest.raises(TrafficError, match="install Istio"):
            router.get_weights(rollout)
        router.finalize(rollout)
        fresh.close()
