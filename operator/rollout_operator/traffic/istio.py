"""Istio provider: one VirtualService per rollout, weighted routes to the two Services, `mirror` for shadow.

Needs Istio (1.22+ serves networking.istio.io/v1) and `spec.traffic.hosts`: the hosts clients
call (a mesh-internal Service name, or hosts bound to a Gateway).
"""

from __future__ import annotations

import contextlib
from typing import Any

from rollout_operator import api, kube
from rollout_operator.engine.types import Weights
from rollout_operator.resources import virtualservice
from rollout_operator.traffic.base import TrafficError

_INSTALL = "install Istio (its CRDs serve networking.istio.io/v1 VirtualService) or pick another traffic provider"


class IstioRouter:
    name = "istio"

    def __init__(self, client: kube.Client) -> None:
        self.client = client

    def _check(self, rollout: api.PolicyRollout) -> None:
        if not rollout.spec.traffic.hosts:
            raise TrafficError(
                f"PolicyRollout {rollout.metadata.namespace}/{rollout.metadata.name}: spec.traffic.hosts is empty: "
                "list the hosts clients call (e.g. pricing.shop.svc.cluster.local)"
            )

    def _read(self, rollout: api.PolicyRollout) -> dict[str, Any] | None:
        try:
            return self.client.find(
                virtualservice.API_VERSION, virtualservice.KIND, rollout.metadata.name, rollout.metadata.namespace
            )
        except kube.UnknownKind as e:
            raise TrafficError(f"{e}: {_INSTALL}") from e

    def reconcile(self, rollout: api.PolicyRollout) -> None:
        self._check(rollout)
        vs = self._read(rollout)
        current = virtualservice.weights_of(vs, rollout) if vs is not None else None
        self.client.apply(virtualservice.virtualservice(rollout, current or Weights(candidate=0)))

    def set_weights(self, rollout: api.PolicyRollout, weights: Weights) -> None:
        self._check(rollout)
        try:
            self.client.apply(virtualservice.virtualservice(rollout, weights))
        except kube.UnknownKind as e:
            raise TrafficError(f"{e}: {_INSTALL}") from e

    def get_weights(self, rollout: api.PolicyRollout) -> Weights | None:
        vs = self._read(rollout)
        return None if vs is None else virtualservice.weights_of(vs, rollout)

    def finalize(self, rollout: api.PolicyRollout) -> None:
        with contextlib.suppress(kube.UnknownKind):
            self.client.delete(
                virtualservice.API_VERSION, virtualservice.KIND, rollout.metadata.name, rollout.metadata.namespace
            )
