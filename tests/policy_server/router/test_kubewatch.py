"""The router's EndpointSlice watch: which URLs name a Service, which endpoints of its slices are
ready (port by name, ``ready`` unset = ready), the watch following slices added, changed and deleted
in the Kubernetes emulator (kmock over real HTTP), and a router process routing to a variant's
ready endpoints instead of its Service URL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from rollout_operator import kube

from policy_server.router import kubewatch
from tests.policy_server.router.conftest import standins, start_router
from tests.support.kube import KubeAPI

SVC = "http://pricing-stable.default.svc"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://pricing-stable.shop.svc", ("shop", "pricing-stable", 80)),
        ("http://pricing-stable.shop.svc.cluster.local:8080", ("shop", "pricing-stable", 8080)),
        ("http://pricing-stable", ("router-ns", "pricing-stable", 80)),
        ("http://127.0.0.1:8080", None),
        ("http://localhost:8080", None),
        ("http://policy.example.com", None),
    ],
)
def test_which_urls_name_a_service(url: str, expected: tuple[str, str, int] | None) -> None:
    assert kubewatch.service_of(url, "router-ns") == expected


def _slice(name: str, service: str, endpoints: list[tuple[str, bool | None]], ports: list[dict[str, Any]] | None = None,
           address_type: str = "IPv4") -> dict[str, Any]:  # fmt: skip
    def endpoint(addr: str, ready: bool | None) -> dict[str, Any]:
        return {"addresses": [addr], **({"conditions": {"ready": ready}} if ready is not None else {})}

    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {kubewatch.SERVICE_NAME_LABEL: service}},
        "addressType": address_type,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [endpoint(a, r) for a, r in endpoints],
    }


def test_ready_endpoints_of_slices() -> None:
    slices = [
        _slice("a", "s", [("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.3", None)]),
        _slice("b", "s", [("10.0.0.4", True)], ports=[{"name": "metrics", "port": 9090}, {"name": "http", "port": 81}]),
        _slice("c", "s", [("10.0.0.5", True)], ports=[{"port": 7000}]),  # the only port, unnamed
        _slice("d", "s", [("10.0.0.6", True)], ports=[{"name": "grpc", "port": 1}, {"name": "x", "port": 2}]),
        _slice("e", "s", [("fd00::1", True)], address_type="IPv6"),
    ]
    assert kubewatch.ready_endpoints(slices, "http") == [
        "http://10.0.0.1:8080",
        "http://10.0.0.3:8080",
        "http://10.0.0.4:81",
        "http://10.0.0.5:7000",
        "http://[fd00::1]:8080",
    ]


def _wait(seen: dict[str, list[str]], url: str, want: Callable[[list[str] | None], bool], what: str) -> None:
    async def poll() -> None:
        deadline = time.monotonic() + 10
        while not want(seen.get(url)):
            assert time.monotonic() < deadline, f"never saw {what}; last {seen.get(url)}"
            await asyncio.sleep(0.02)

    asyncio.get_event_loop().run_until_complete(poll())


def test_the_watch_follows_slices_added_changed_and_deleted(kube_api: KubeAPI, client: kube.Client) -> None:
    api = kubewatch.ApiConfig.from_kubeconfig(kube_api.kubeconfig_path)
    seen: dict[str, list[str]] = {}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    client.create(_slice("pricing-stable-a", "pricing-stable", [("10.0.0.1", True), ("10.0.0.2", True)]))
    client.create(_slice("other-a", "pricing-candidate", [("10.0.9.9", True)]))  # another Service's slice

    def on_endpoints(url: str, urls: list[str]) -> None:
        seen[url] = urls

    async def start() -> kubewatch.EndpointSliceWatcher:
        w = kubewatch.EndpointSliceWatcher(api, "default", on_endpoints)
        w.follow({SVC, "http://127.0.0.1:9"})  # an address is no Service: not watched
        return w

    try:
        watcher = loop.run_until_complete(start())
        assert set(watcher.watches) == {SVC}
        _wait(seen, SVC, lambda u: u == ["http://10.0.0.1:8080", "http://10.0.0.2:8080"], "the listed slice")
        client.create(_slice("pricing-stable-b", "pricing-stable", [("10.0.0.3", True)]))
        _wait(seen, SVC, lambda u: u is not None and len(u) == 3, "a second slice")
        client.patch(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            "pricing-stable-a",
            "default",
            {"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": False}}, {"addresses": ["10.0.0.2"]}]},
        )
        _wait(seen, SVC, lambda u: u == ["http://10.0.0.2:8080", "http://10.0.0.3:8080"], "an endpoint not ready")
        client.delete("discovery.k8s.io/v1", "EndpointSlice", "pricing-stable-b", "default")
        _wait(seen, SVC, lambda u: u == ["http://10.0.0.2:8080"], "a deleted slice")
        loop.run_until_complete(asyncio.sleep(0))
        watcher.follow(set())  # the table no longer names the Service: the router goes back to the URL
        assert seen[SVC] == [] and watcher.watches == {}
        loop.run_until_complete(watcher.close())
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def test_without_rbac_on_endpointslices_the_watch_stops_and_the_service_url_stays() -> None:
    calls: list[str] = []

    def forbidden(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(403, json={"kind": "Status", "reason": "Forbidden"})

    seen: list[tuple[str, list[str]]] = []

    async def run() -> None:
        client = httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(forbidden))
        watch = kubewatch._SliceWatch(client, SVC, "default", "pricing-stable", "http", lambda *a: seen.append(a), 5)
        await asyncio.wait_for(watch.run(), 5)  # returns: no retry loop against a 403
        await client.aclose()

    asyncio.run(run())
    assert calls == ["/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"] and seen == []


@pytest.mark.integration
def test_a_router_routes_to_the_ready_endpoints_of_the_variants_service(
    kube_api: KubeAPI, client: kube.Client, tmp_path
) -> None:
    with standins("stable", 2) as stable:
        ready = [("127.0.0.1", True)]
        ports = [[{"name": "http", "port": s.port}] for s in stable]
        for s, p in zip(stable, ports, strict=True):
            client.create(_slice(f"pricing-stable-{s.name}", "pricing-stable", ready, ports=p))
        table = {"version": 1, "stable": SVC, "weight": 0, "generation": 1}
        client.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "pricing-routing", "namespace": "default"},
                "data": {"routing.json": json.dumps(table)},
            }
        )
        flags = ["--configmap", "default/pricing-routing", "--kubeconfig", str(kube_api.kubeconfig_path)]
        with start_router("--stable", SVC, *flags) as router:  # --configmap: EndpointSlices followed by default
            deadline = time.monotonic() + 15
            while len(router.table()["endpoints"]["stable"]) != 2:
                assert time.monotonic() < deadline, router.table()
                time.sleep(0.05)
            c = router.client()
            assert {c.act([0.0])["endpoint"] for _ in range(20)} == {"s0", "s1"}
            client.patch(  # s1's pod stops being ready: the router stops sending to it
                "discovery.k8s.io/v1",
                "EndpointSlice",
                "pricing-stable-s1",
                "default",
                {"endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": False}}]},
            )
            while len(router.table()["endpoints"]["stable"]) != 1:
                assert time.monotonic() < deadline, router.table()
                time.sleep(0.05)
            assert {c.act([0.0])["endpoint"] for _ in range(20)} == {"s0"}
