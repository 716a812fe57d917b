"""Where the router's routing table comes from: the table itself (validation, file round trip),
sticky hashing, shadow comparison, and — over real HTTP — the operator's router provider writing a
ConfigMap in the real control plane that a real router process follows: changes arrive while it
runs, a rollback's propagation time is measured, a restart keeps the last weights even with no
API, and a router started after a change picks it up."""

from __future__ import annotations

import json
import math
import random
import time

import pytest
from rollout_operator import api, kube
from rollout_operator.engine.types import Weights
from rollout_operator.resources import routing
from rollout_operator.traffic.router import RouterProvider

from policy_server.router import app, assign, table
from policy_server.router import metrics as router_metrics
from tests.policy_server.router.conftest import RouterProc, start_router, url
from tests.support.cluster import ClusterAPI as KubeAPI
from tests.support.cluster import cluster_as_kube_api, cluster_client  # noqa: F401 - the real control plane
from tests.support.kube import policy_rollout_manifest
from tests.support.policy_server import metric

# ----------------------------------------------------------------------------- pure parts


def test_table_round_trips_through_its_file(tmp_path) -> None:
    t = table.RoutingTable(
        stable="http://s:80",
        candidate="http://c",
        weight=12.5,
        shadow=True,
        sticky_key="header:x-user",
        generation=7,
        updated_at=1.5,
        salt="ns/r",
    )
    table.save(t, tmp_path / "t.json")
    assert table.load(tmp_path / "t.json") == t
    assert table.load(tmp_path / "missing.json") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stable": "ftp://x"}, "'stable' must be an http"),
        ({"stable": "http://s", "weight": 30}, "needs a 'candidate'"),
        ({"stable": "http://s", "candidate": "http://c", "weight": 130}, "'weight' must be a number in 0..100"),
        ({"stable": "http://s", "stickyKey": "cookie:x"}, "'header:NAME' or 'context:FIELD'"),
        ({"stable": "http://s", "weights": 3}, r"unknown field\(s\) \['weights'\]"),
        ({"stable": "http://s", "version": 2}, "version 2 is not supported"),
        ({}, "'stable' .* is required"),
        ({"stable": []}, "'stable' must be a URL or a non-empty list"),
        ({"stable": ["http://a", "tcp://b"]}, r"'stable\[1\]' must be an http"),
        ({"stable": ["http://a", "http://a"]}, "lists an endpoint twice"),
        ({"stable": "http://s", "entityKey": "user"}, "'entityKey' must be 'header:NAME' or 'context:FIELD'"),
    ],
)
def test_bad_tables_are_rejected_with_the_field_at_fault(data, message) -> None:
    with pytest.raises(table.TableError, match=message):
        table.RoutingTable.from_json(data)


def test_a_variant_is_one_url_or_a_list_of_endpoints_and_both_round_trip(tmp_path) -> None:
    wire = {
        "stable": ["http://10.0.0.1:8080", "http://10.0.0.2:8080"],
        "candidate": "http://c",
        "weight": 10,
        "entityKey": "context:user",
    }
    t = table.RoutingTable.from_json(wire)
    assert table.endpoints(t.stable) == ("http://10.0.0.1:8080", "http://10.0.0.2:8080")
    assert table.endpoints(t.candidate) == ("http://c",) and table.endpoints(t.fallback) == ()
    assert t.urls() == {"http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://c"}
    out = t.to_json()
    assert out["stable"] == wire["stable"] and out["candidate"] == "http://c" and out["entityKey"] == "context:user"
    table.save(t, tmp_path / "t.json")
    assert table.load(tmp_path / "t.json") == t


def test_corrupt_table_file_says_how_to_recover(tmp_path) -> None:
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(table.TableError, match="fix or delete the file"):
        table.load(tmp_path / "t.json")


def test_sticky_buckets_are_uniform_and_only_grow_with_the_weight() -> None:
    keys = [f"user-{i}".encode() for i in range(20_000)]
    prev: set[bytes] = set()
    for weight in (0, 1, 5, 25, 50, 99, 100):
        chosen = {k for k in keys if assign.choose(weight, k, b"salt")[0]}
        assert prev <= chosen
        sigma = math.sqrt(len(keys) * weight / 100 * (1 - weight / 100))
        assert abs(len(chosen) - len(keys) * weight / 100) <= 4 * sigma + 1
        prev = chosen
    # a different salt (another rollout) picks different callers
    other = {k for k in keys if assign.choose(50, k, b"other")[0]}
    assert other != {k for k in keys if assign.choose(50, k, b"salt")[0]}


def test_random_assignment_probabilities() -> None:
    rng = random.Random(0)
    draws = [assign.choose(30, None, rng=rng) for _ in range(10_000)]
    share = sum(c for c, _ in draws) / len(draws)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(draws))
    assert {p for c, p in draws if c} == {0.3} and {p for c, p in draws if not c} == {0.7}
    assert assign.choose(0, None) == (False, 1.0) and assign.choose(100, b"k") == (True, 1.0)


@pytest.mark.parametrize(
    ("served", "shadow", "expected"),
    [
        (2, 2, (True, None)),
        (2, 1, (False, None)),
        ([0.5, -1.0], [0.0, 1.0], (None, 1.25)),
        ([[1.0], [2.0]], [[1.0], [2.0]], (None, 0.0)),
        ([1.0, 2.0], [1.0], (False, None)),
    ],
)
def test_shadow_comparison(served, shadow, expected) -> None:
    assert app.compare(served, shadow) == expected


def test_contracts_shared_with_other_packages() -> None:
    from policy_server import metrics as server_metrics

    assert router_metrics.LATENCY_BUCKETS == server_metrics.LATENCY_BUCKETS
    assert routing.CONFIGMAP_KEY == table.CONFIGMAP_KEY
    assert routing.TABLE_VERSION == table.TABLE_VERSION


def test_operator_tables_are_valid_router_tables() -> None:
    manifest = policy_rollout_manifest(name="pricing", namespace="shop", provider="router")
    manifest["spec"]["traffic"]["stickyKey"] = "x-user"
    rollout = api.PolicyRollout.model_validate(manifest)
    for weights in (Weights(0), Weights(30), Weights(0, shadow=True)):
        t = table.RoutingTable.from_json(routing.routing_table(rollout, weights, 3, 1e9))
        assert (t.weight, t.shadow, t.generation) == (weights.candidate, weights.shadow, 3)
        assert t.stable == "http://pricing-stable.shop.svc" and t.candidate == "http://pricing-candidate.shop.svc"
        assert t.sticky_key == "header:x-user" and t.salt == "shop/pricing"


# ----------------------------------------------------------------------------- operator -> ConfigMap -> router


def _wait_table(router: RouterProc, predicate, what: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = router.table()
        if predicate(got["table"]):
            return got
        assert time.monotonic() < deadline, f"router never applied {what}; it has {got}"
        time.sleep(0.002)


def _share(router: RouterProc, n: int) -> float:
    c = router.client()
    rng = random.Random(n)
    try:
        return sum(c.act([rng.gauss(0, 1) for _ in range(8)])["variant"] == "candidate" for _ in range(n)) / n
    finally:
        c.close()


@pytest.mark.integration
def test_operator_drives_the_router_through_a_configmap(kube_api: KubeAPI, stable, candidate, tmp_path) -> None:
    client = kube.Client.from_kubeconfig(kube_api.kubeconfig_path)
    rollout = api.PolicyRollout.model_validate(client.apply(policy_rollout_manifest(provider="router")))
    local = {"stable": url(stable), "candidate": url(candidate)}
    provider = RouterProvider(client, manage_router=False, urls=lambda _r, variant: local[variant])
    provider.reconcile(rollout)
    state = tmp_path / "routing.json"
    watch = ["--configmap", "default/pricing-routing", "--kubeconfig", str(kube_api.kubeconfig_path)]
    with start_router("--stable", url(stable), "--config", str(state), *watch) as router:
        _wait_table(router, lambda t: t["generation"] == 1, "the ConfigMap's first table")
        provider.set_weights(rollout, Weights(50))
        _wait_table(router, lambda t: t["weight"] == 50, "weight 50")
        assert 0.3 < _share(router, 200) < 0.7
        # rollback: the operator writes weight 0; how long until the router routes by it
        decided = time.time()
        provider.set_weights(rollout, Weights(0))
        got = _wait_table(router, lambda t: t["weight"] == 0, "the rollback")
        propagation_ms = (got["appliedAt"] - decided) * 1000
        print(f"rollback propagation: {propagation_ms:.1f} ms (operator write + watch event + apply)")
        assert got["source"].startswith("configmap@")
        assert _share(router, 100) == 0.0
        assert metric(router.client().metrics(), "policy_router_config_propagation_seconds") >= 0
        provider.set_weights(rollout, Weights(40))
        _wait_table(router, lambda t: t["weight"] == 40, "weight 40")
        assert provider.get_weights(rollout) == Weights(40)
        assert router.stop() == 0
    assert json.loads(state.read_text())["weight"] == 40

    # restart with no reachable API and flags saying weight 0: the last weights (40) still apply
    dead = tmp_path / "dead-kubeconfig.yaml"
    dead.write_text(kube_api.kubeconfig_path.read_text().replace(kube_api.url, "http://127.0.0.1:9"))
    with start_router(
        "--stable",
        url(stable),
        "--candidate",
        url(candidate),
        "--weight",
        "0",
        "--config",
        str(state),
        "--configmap",
        "default/pricing-routing",
        "--kubeconfig",
        str(dead),
    ) as router:
        got = router.table()
        assert got["source"] == "file" and got["table"]["weight"] == 40
        n = 600
        assert abs(_share(router, n) - 0.4) <= 4 * math.sqrt(0.4 * 0.6 / n)

    # a change made while the router was down is picked up when it comes back with the API
    provider.set_weights(rollout, Weights(0, shadow=True))
    with start_router("--stable", url(stable), "--config", str(state), *watch) as router:
        _wait_table(router, lambda t: t["shadow"] and t["weight"] == 0, "the shadow table")
    client.close()


@pytest.mark.integration
def test_a_broken_configmap_keeps_the_last_table(kube_api: KubeAPI, stable, candidate, tmp_path) -> None:
    client = kube.Client.from_kubeconfig(kube_api.kubeconfig_path)
    rollout = api.PolicyRollout.model_validate(client.apply(policy_rollout_manifest(provider="router")))
    local = {"stable": url(stable), "candidate": url(candidate)}
    provider = RouterProvider(client, manage_router=False, urls=lambda _r, variant: local[variant])
    provider.reconcile(rollout)
    provider.set_weights(rollout, Weights(30))
    with start_router(
        "--stable", url(stable), "--configmap", "default/pricing-routing", "--kubeconfig", str(kube_api.kubeconfig_path)
    ) as router:
        _wait_table(router, lambda t: t["weight"] == 30, "weight 30")
        client.patch("v1", "ConfigMap", "pricing-routing", "default", {"data": {"routing.json": '{"weight": 101'}})
        client.patch("v1", "ConfigMap", "pricing-routing", "default", {"metadata": {"labels": {"touched": "yes"}}})
        provider.set_weights(rollout, Weights(10))  # a valid table after the broken one is applied again
        got = _wait_table(router, lambda t: t["weight"] != 30, "the next valid table")
        assert got["table"]["weight"] == 10
    client.close()
