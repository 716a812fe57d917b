"""Router provider (the default): the built-in ``policy-server route`` reads its table from a ConfigMap.

``reconcile`` creates the ConfigMap ``{rollout}-routing`` (keeping the weights it already
holds) and the router's workload (``resources.routing.router_objects``: service account, Role
for that one ConfigMap, RoleBinding, Deployment, Service ``{rollout}-router``). ``set_weights``
writes the new table (one read, at most one patch): the router watches the ConfigMap through
the API and applies the change within milliseconds of the write, which is what makes a
rollback reach the data plane in about a second. ``get_weights`` reads the stored table back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from rollout_operator import api, kube
from rollout_operator.engine.types import Weights
from rollout_operator.resources import routing
from rollout_operator.traffic.base import TrafficError


class RouterProvider:
    name = "router"

    def __init__(
        self,
        client: kube.Client,
        *,
        manage_router: bool = True,
        urls: routing.URLResolver = routing.service_url,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.manage_router = manage_router  # False: the router is deployed by other means (e.g. Helm, tests)
        self.urls = urls  # where the router finds each variant (in-cluster Service URLs by default)
        self.clock = clock

    def _read(self, rollout: api.PolicyRollout) -> dict[str, Any] | None:
        try:
            return self.client.find("v1", "ConfigMap", routing.configmap_name(rollout), rollout.metadata.namespace)
        except kube.KubeError as e:
            raise TrafficError(f"cannot read the routing ConfigMap of {rollout.metadata.name}: {e}") from e

    def _write(self, rollout: api.PolicyRollout, weights: Weights, current: dict[str, Any] | None) -> None:
        old = routing.table_of(current)
        generation = int((old or {}).get("generation") or 0)
        desired = routing.routing_table(rollout, weights, generation + 1, self.clock(), self.urls)
        if routing.same_routing(old, desired):
            return  # nothing changes: no write, no generation bump
        try:
            self.client.apply(routing.configmap(rollout, desired))
        except kube.KubeError as e:
            raise TrafficError(f"cannot write the routing ConfigMap of {rollout.metadata.name}: {e}") from e

    def reconcile(self, rollout: api.PolicyRollout) -> None:
        current = self._read(rollout)
        weights = routing.weights_of(current, rollout, self.urls) or Weights(candidate=0)
        self._write(rollout, weights, current)
        if self.manage_router:
            for obj in routing.router_objects(rollout):
                try:
                    self.client.apply(obj)
                except kube.KubeError as e:
                    raise TrafficError(
                        f"cannot create the router's {obj['kind']} {obj['metadata']['name']}: {e} (the operator "
                        "needs create/patch on serviceaccounts, roles, rolebindings, deployments and services)"
                    ) from e

    def set_weights(self, rollout: api.PolicyRollout, weights: Weights) -> None:
        self._write(rollout, weights, self._read(rollout))

    def get_weights(self, rollout: api.PolicyRollout) -> Weights | None:
        return routing.weights_of(self._read(rollout), rollout, self.urls)

    def finalize(self, rollout: api.PolicyRollout) -> None:
        ns = rollout.metadata.namespace
        objects = [routing.configmap(rollout, {})]
        if self.manage_router:
            objects += routing.router_objects(rollout)
        for obj in reversed(objects):
            with contextlib.suppress(kube.NotFound):
                self.client.delete(obj["apiVersion"], obj["kind"], obj["metadata"]["name"], ns)
