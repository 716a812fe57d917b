"""Provider name -> router. Adding a provider = one file + one line in `ROUTERS`; no engine change."""

from __future__ import annotations

from collections.abc import Callable

from rollout_operator import api, kube
from rollout_operator.errors import RolloutOperatorError
from rollout_operator.traffic.base import TrafficRouter
from rollout_operator.traffic.gateway_api import GatewayAPIRouter
from rollout_operator.traffic.istio import IstioRouter
from rollout_operator.traffic.router import RouterProvider

RouterFactory = Callable[[kube.Client], TrafficRouter]

ROUTERS: dict[api.TrafficProvider, RouterFactory] = {
    api.TrafficProvider.ROUTER: RouterProvider,
    api.TrafficProvider.GATEWAY_API: GatewayAPIRouter,
    api.TrafficProvider.ISTIO: IstioRouter,
}


class UnknownProvider(RolloutOperatorError, ValueError):
    """The rollout names a traffic provider this operator cannot drive."""


def make_router(provider: api.TrafficProvider | str, client: kube.Client) -> TrafficRouter:
    """The router for `spec.traffic.provider`; raises UnknownProvider rather than guessing another."""
    try:
        factory = ROUTERS[api.TrafficProvider(provider)]
    except (ValueError, KeyError):
        valid = ", ".join(str(p) for p in ROUTERS)
        raise UnknownProvider(
            f"unknown traffic provider {provider!r}: spec.traffic.provider must be one of {valid}"
        ) from None
    return factory(client)
