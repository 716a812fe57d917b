"""Gateway API provider: one HTTPRoute per rollout, weighted backendRefs to the two Services.

Works with any Gateway API implementation (Envoy Gateway, Istio, Cilium, NGINX Gateway Fabric)
that supports weighted backends; shadow needs the RequestMirror filter (core in v1).
"""

from __future__ import annotations

import contextlib
from typing import Any

from rollout_operator import api, kube
from rollout_operator.engine.types import Weights
from rollout_operator.resources import httproute
from rollout_operator.traffic.base import TrafficError


class GatewayAPIRouter:
    name = "gatewayAPI"

    def __init__(self, client: kube.Client) -> None:
        self.client = client

    def _check(self, rollout: api.PolicyRollout) -> None:
        if not rollout.spec.traffic.gateway_api.parent_refs:
            raise TrafficError(
                f"PolicyRollout {rollout.metadata.namespace}/{rollout.metadata.name}: spec.traffic.gatewayAPI."
                "parentRefs is empty: name the Gateway that should route this traffic"
            )

    def _read(self, rollout: api.PolicyRollout) -> dict[str, Any] | None:
        try:
            return self.client.find(httproute.API_VERSION, httproute.KIND, rollout.metadata.name,
                                    rollout.metadata.namespace)
        except kube.UnknownKind as e:
            raise TrafficError(f"{e}: install the Gateway API CRDs (https://gateway-api.sigs.k8s.io)") from e

    def reconcile(self, rollout: api.PolicyRollout) -> None:
        self._check(rollout)
        route = self._read(rollout)
        current = httproute.weights_of(route, rollout) if route is not None else None
        self.client.apply(httproute.httproute(rollout, current or Weights(candidate=0)))

    def set_weights(self, rollout: api.PolicyRollout, weights: Weights) -> None:
        self._check(rollout)
        try:
            self.client.apply(httproute.httproute(rollout, weights))
        except kube.UnknownKind as e:
            raise TrafficError(f"{e}: install the Gateway API CRDs (https://gateway-api.sigs.k8s.io)") from e

    def get_weights(self, rollout: api.PolicyRollout) -> Weights | None:
        route = self._read(rollout)
        return None if route is None else httproute.weights_of(route, rollout)

    def finalize(self, rollout: api.PolicyRollout) -> None:
        # No Gateway API in this cluster means nothing of ours can exist.
        with contextlib.suppress(kube.UnknownKind):
            self.client.delete(httproute.API_VERSION, httproute.KIND, rollout.metadata.name,
                               rollout.metadata.namespace)
