"""make_router: known providers build their router; unimplemented and unknown ones raise clearly."""

from __future__ import annotations

import pytest
from rollout_operator import api, kube
from rollout_operator.traffic import factory
from rollout_operator.traffic.gateway_api import GatewayAPIRouter
from rollout_operator.traffic.istio import IstioRouter
from rollout_operator.traffic.noop import NoopRouter
from rollout_operator.traffic.router import RouterProvider


@pytest.fixture()
def client() -> kube.Client:
    import kubernetes

    return kube.Client(kubernetes.client.ApiClient(kubernetes.client.Configuration()))  # never called here


def test_gateway_api(client: kube.Client) -> None:
    router = factory.make_router(api.TrafficProvider.GATEWAY_API, client)
    assert isinstance(router, GatewayAPIRouter)
    assert router.client is client
    assert isinstance(factory.make_router("gatewayAPI", client), GatewayAPIRouter)


@pytest.mark.parametrize(("provider", "cls"), [("router", RouterProvider), ("istio", IstioRouter)])
def test_router_and_istio(client: kube.Client, provider: str, cls: type) -> None:
    router = factory.make_router(provider, client)
    assert isinstance(router, cls)
    assert router.name == provider


def test_every_provider_the_api_declares_has_a_router() -> None:
    """So a value the CRD accepts can never reach the operator without a router to drive it."""
    assert set(factory.ROUTERS) == set(api.TrafficProvider)


def test_unknown_provider(client: kube.Client) -> None:
    with pytest.raises(factory.UnknownProvider, match=r"unknown traffic provider 'linkerd'.*router, gatewayAPI, istio"):
        factory.make_router("linkerd", client)


def test_registering_a_provider_needs_no_other_change(client: kube.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(factory.ROUTERS, api.TrafficProvider.ROUTER, lambda _client: NoopRouter())
    assert isinstance(factory.make_router(api.TrafficProvider.ROUTER, client), NoopRouter)
