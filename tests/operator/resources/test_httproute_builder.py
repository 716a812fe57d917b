"""HTTPRoute builder and read-back: valid against the official Gateway API v1.6.1 schema
(structural schema + its CEL rules) at 0/30/100 percent and in shadow, and `weights_of`
reads back exactly what `httproute` wrote."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from rollout_operator import api
from rollout_operator.engine.types import Weights
from rollout_operator.resources import httproute

from tests.support import crd_validation, requirements
from tests.support.kube import policy_rollout_manifest

CASES = [Weights(0), Weights(30), Weights(100), Weights(0, shadow=True), Weights(30, shadow=True)]


@pytest.fixture(scope="module")
def crd() -> dict:
    return crd_validation.load_crd(requirements.schema("gateway-api-v1.6.1-httproutes.yaml"))


@pytest.fixture()
def rollout() -> api.PolicyRollout:
    manifest = policy_rollout_manifest(name="pricing", namespace="shop")
    manifest["metadata"]["uid"] = "0f9c7d3e-7a51-4b4e-9d1e-2b7f6f1e9a10"
    return api.PolicyRollout.model_validate(manifest)


@pytest.mark.parametrize("weights", CASES, ids=str)
def test_route_is_valid_against_the_gateway_api_schema(crd: dict, rollout: api.PolicyRollout, weights: Weights) -> None:
    route = httproute.httproute(rollout, weights)
    # The plain v1 openAPIV3Schema first (what the brief asks), then the API server's full view
    # (strict unknown fields, defaults and the CRD's CEL rules).
    jsonschema.validate(route["spec"], crd_validation.version_schema(crd, "v1")["properties"]["spec"])
    assert crd_validation.validate(route, crd) == []


def test_schema_check_rejects_a_broken_route(crd: dict, rollout: api.PolicyRollout) -> None:
    """Guards the test above: the schema really catches bad weights and a mirror without a target."""
    route = httproute.httproute(rollout, Weights(30, shadow=True))
    bad = copy.deepcopy(route)
    bad["spec"]["rules"][0]["backendRefs"][0]["weight"] = -5
    assert any("weight" in e for e in crd_validation.validate(bad, crd))
    bad = copy.deepcopy(route)
    del bad["spec"]["rules"][0]["filters"][0]["requestMirror"]
    assert crd_validation.validate(bad, crd) != []


@pytest.mark.parametrize("weights", CASES, ids=str)
def test_weights_round_trip(rollout: api.PolicyRollout, weights: Weights) -> None:
    route = httproute.httproute(rollout, weights)
    expected = Weights(0, shadow=True) if weights.shadow else weights  # shadow serves nothing from the candidate
    assert httproute.weights_of(route, rollout) == expected


@pytest.mark.parametrize("percent", [0, 30, 100])
def test_backend_refs_split_by_weight(rollout: api.PolicyRollout, percent: int) -> None:
    route = httproute.httproute(rollout, Weights(percent))
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "pricing-stable", "port": 80, "weight": 100 - percent},
        {"group": "", "kind": "Service", "name": "pricing-candidate", "port": 80, "weight": percent},
    ]
    assert "filters" not in rule


def test_shadow_mirrors_everything_to_the_candidate_and_serves_none(rollout: api.PolicyRollout) -> None:
    (rule,) = httproute.httproute(rollout, Weights(0, shadow=True))["spec"]["rules"]
    assert [b["weight"] for b in rule["backendRefs"]] == [100, 0]
    assert rule["filters"] == [{
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "pricing-candidate", "port": 80},
                          "percent": 100},
    }]


def test_metadata_parents_and_hostnames(rollout: api.PolicyRollout) -> None:
    route = httproute.httproute(rollout, Weights(0))
    assert route["metadata"]["name"] == "pricing"
    assert route["metadata"]["namespace"] == "shop"
    assert route["metadata"]["labels"][api.LABEL_ROLLOUT] == "pricing"
    assert route["metadata"]["ownerReferences"][0]["uid"] == rollout.metadata.uid
    assert route["spec"]["parentRefs"] == [{
        "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gateway-system",
        "sectionName": "https",
    }]
    assert route["spec"]["hostnames"] == ["pricing.example.com"]


def test_foreign_routes_read_back_as_unknown(rollout: api.PolicyRollout) -> None:
    route = httproute.httproute(rollout, Weights(30))
    other = copy.deepcopy(route)
    other["spec"]["rules"][0]["backendRefs"][1]["name"] = "somebody-else"
    assert httproute.weights_of(other, rollout) is None
    two_rules = copy.deepcopy(route)
    two_rules["spec"]["rules"].append(copy.deepcopy(two_rules["spec"]["rules"][0]))
    assert httproute.weights_of(two_rules, rollout) is None
    # Gateway API weights are relative: 1:3 is 75 percent to the candidate.
    relative = copy.deepcopy(route)
    relative["spec"]["rules"][0]["backendRefs"][0]["weight"] = 1
    relative["spec"]["rules"][0]["backendRefs"][1]["weight"] = 3
    assert httproute.weights_of(relative, rollout) == Weights(75)
