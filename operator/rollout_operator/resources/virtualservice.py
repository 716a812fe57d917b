"""The Istio VirtualService that splits a rollout's traffic. Pure: no I/O.

One HTTP route sends requests to the two variant Services by weight (Istio wants the weights
to add up to 100); in shadow, ``mirror`` + ``mirrorPercentage`` copy every request to the
candidate, whose answers the sidecar discards. `weights_of` reads a stored object back.
"""

from __future__ import annotations

from typing import Any

from rollout_operator import api
from rollout_operator.engine.types import Weights
from rollout_operator.resources import meta
from rollout_operator.resources.workload import SERVICE_PORT

API_VERSION = "networking.istio.io/v1"
KIND = "VirtualService"
ROUTE_NAME = "policy-rollout"


def host(rollout: api.PolicyRollout, variant: meta.Variant) -> str:
    """The fully qualified Service host Istio routes to."""
    return f"{meta.workload_name(rollout, variant)}.{rollout.metadata.namespace}.svc.cluster.local"


def _destination(rollout: api.PolicyRollout, variant: meta.Variant) -> dict[str, Any]:
    return {"host": host(rollout, variant), "port": {"number": SERVICE_PORT}}


def virtualservice(rollout: api.PolicyRollout, weights: Weights) -> dict[str, Any]:
    """VirtualService `{rollout}` for `spec.traffic.hosts`: stable 100-W, candidate W; shadow mirrors all."""
    candidate_weight = 0 if weights.shadow else weights.candidate
    route: dict[str, Any] = {
        "name": ROUTE_NAME,
        "route": [
            {"destination": _destination(rollout, "stable"), "weight": 100 - candidate_weight},
            {"destination": _destination(rollout, "candidate"), "weight": candidate_weight},
        ],
    }
    if weights.shadow:
        route["mirror"] = _destination(rollout, "candidate")
        route["mirrorPercentage"] = {"value": 100.0}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta.object_meta(rollout, rollout.metadata.name, meta.labels(rollout)),
        "spec": {"hosts": list(rollout.spec.traffic.hosts), "http": [route]},
    }


def weights_of(vs: dict[str, Any], rollout: api.PolicyRollout) -> Weights | None:
    """The split a stored VirtualService applies; None if it is not the shape we write."""
    http = (vs.get("spec") or {}).get("http") or []
    if len(http) != 1:
        return None
    stable, candidate = host(rollout, "stable"), host(rollout, "candidate")
    by_host: dict[str, int] = {}
    for dest in http[0].get("route") or []:
        by_host[(dest.get("destination") or {}).get("host")] = int(dest.get("weight", 0))
    if set(by_host) != {stable, candidate}:
        return None
    total = by_host[stable] + by_host[candidate]
    if total == 0:
        return None
    mirror = (http[0].get("mirror") or {}).get("host") == candidate
    percent = (http[0].get("mirrorPercentage") or {}).get("value", 100.0)
    return Weights(candidate=round(100 * by_host[candidate] / total), shadow=mirror and float(percent) > 0)
