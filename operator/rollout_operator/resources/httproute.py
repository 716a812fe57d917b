"""The Gateway API HTTPRoute that splits a rollout's traffic. Pure: no I/O.

One rule sends requests to the two variant Services by weight; in shadow, a RequestMirror
filter copies every request to the candidate, whose answers the Gateway discards.
`weights_of` reads a stored route back, so the operator trusts what the data plane has,
not what it last meant to write.
"""

from __future__ import annotations

from typing import Any

from rollout_operator import api
from rollout_operator.engine.types import Weights
from rollout_operator.resources import meta
from rollout_operator.resources.workload import SERVICE_PORT

API_VERSION = "gateway.networking.k8s.io/v1"
KIND = "HTTPRoute"


def _backend(name: str, weight: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": name, "port": SERVICE_PORT}
    if weight is not None:
        ref["weight"] = weight
    return ref


def _parent_ref(parent: api.ParentRef) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": parent.name}
    if parent.namespace:
        ref["namespace"] = parent.namespace
    if parent.section_name:
        ref["sectionName"] = parent.section_name
    return ref


def httproute(rollout: api.PolicyRollout, weights: Weights) -> dict[str, Any]:
    """HTTPRoute `{rollout}`: stable gets 100-W, candidate W; shadow mirrors all requests to the candidate."""
    stable = meta.workload_name(rollout, "stable")
    candidate = meta.workload_name(rollout, "candidate")
    candidate_weight = 0 if weights.shadow else weights.candidate
    rule: dict[str, Any] = {
        "backendRefs": [_backend(stable, 100 - candidate_weight), _backend(candidate, candidate_weight)],
    }
    if weights.shadow:
        rule["filters"] = [
            {"type": "RequestMirror", "requestMirror": {"backendRef": _backend(candidate), "percent": 100}}
        ]
    gateway = rollout.spec.traffic.gateway_api
    spec: dict[str, Any] = {"parentRefs": [_parent_ref(p) for p in gateway.parent_refs], "rules": [rule]}
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta.object_meta(rollout, rollout.metadata.name, meta.labels(rollout)),
        "spec": spec,
    }


def weights_of(route: dict[str, Any], rollout: api.PolicyRollout) -> Weights | None:
    """The split a stored route actually applies; None if it is not the shape we write."""
    stable = meta.workload_name(rollout, "stable")
    candidate = meta.workload_name(rollout, "candidate")
    rules = (route.get("spec") or {}).get("rules") or []
    if len(rules) != 1:
        return None
    by_name: dict[str, int] = {}
    for ref in rules[0].get("backendRefs") or []:
        by_name[ref.get("name")] = int(ref.get("weight", 1))  # Gateway API's default weight is 1
    if set(by_name) != {stable, candidate}:
        return None
    total = by_name[stable] + by_name[candidate]
    if total == 0:
        return None  # no backend gets traffic: not a split we can express
    percent = round(100 * by_name[candidate] / total)
    shadow = any(
        f.get("type") == "RequestMirror"
        and ((f.get("requestMirror") or {}).get("backendRef") or {}).get("name") == candidate
        for f in rules[0].get("filters") or []
    )
    return Weights(candidate=percent, shadow=shadow)
