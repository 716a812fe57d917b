"""/v1/reward through the router, over real HTTP with stand-in endpoints (standin.py) that verify ids
with the rollout key as the policy servers do: a signed id is forwarded to a live endpoint of the
deciding variant (retried on the next after a 5xx or a dead endpoint) and the upstream's answer is
returned (202, 409 duplicate); a forged or malformed id is refused by the router itself; a bare
client-chosen id goes to the endpoint that served it, and one the router does not know gets a 404
that says to post the reward_id; a router without the key sends every id to the endpoint that served it."""

from __future__ import annotations

import pytest

from policy_server import attribution
from tests.policy_server.router.conftest import HttpClient, standins, start_router
from tests.support.policy_server import metric

pytestmark = pytest.mark.integration

KEY = {attribution.ENV_VAR: "k" * 40}


def _received(endpoints) -> dict[str, list[dict]]:
    return {s.name: s.received() for s in endpoints}


def _forge(signed: str) -> str:
    """The same payload with another tag: what someone without the key can do at best."""
    head, _, tag = signed.rpartition(".")
    return f"{head}.{'A' * len(tag)}"


def test_signed_ids_are_verified_forwarded_to_the_deciding_variant_and_forgeries_refused() -> None:
    with (
        standins("stable", 2, env=KEY) as stable,
        standins("candidate", 2, env=KEY) as cand,
        start_router(
            "--stable", *[s.url for s in stable], "--candidate", *[s.url for s in cand], "--weight", "50", env=KEY
        ) as router,
    ):
        c = router.client()
        bodies = [c.act([0.0]) for _ in range(40)]
        assert {b["variant"] for b in bodies} == {"stable", "candidate"}
        assert all(attribution.is_signed(b["request_id"]) for b in bodies)
        for b in bodies:
            status, resp = c.request("POST", "/v1/reward", {"request_id": b["request_id"], "reward": 1.0})
            assert status == 202, resp
        got = _received(stable + cand)
        for b in bodies:  # each reward reached exactly one endpoint, of the variant that decided
            where = [name for name, rewards in got.items() if b["request_id"] in [r["request_id"] for r in rewards]]
            assert len(where) == 1 and where[0][0] == b["variant"][0], (b["variant"], where)
        # a repeat is the upstream's 409, passed through; another event of the same decision is accepted
        status, resp = c.request("POST", "/v1/reward", {"request_id": bodies[0]["request_id"], "reward": 1.0})
        assert status == 409, resp
        status, _ = c.request(
            "POST", "/v1/reward", {"request_id": bodies[0]["request_id"], "reward": 2, "event_id": "e"}
        )
        assert status == 202

        n_before = sum(len(v) for v in _received(stable + cand).values())
        for bad, expected in ((_forge(bodies[1]["request_id"]), (404, "unknown")),
                              ("r1.not-base64!.x", (400, "malformed")), ("r1.", (400, "malformed"))):
            status, resp = c.request("POST", "/v1/reward", {"request_id": bad, "reward": 1.0})
            assert (status, resp["error"].split()[0]) == expected, (bad, resp)  # as a policy server answers
        assert sum(len(v) for v in _received(stable + cand).values()) == n_before  # refused without a round trip
        m = c.metrics()
        assert metric(m, "policy_router_rewards_total", outcome="refused") == 3
        assert metric(m, "policy_router_rewards_total", outcome="forwarded") == len(bodies) + 1
        assert metric(m, "policy_router_rewards_total", outcome="rejected") == 1


def test_a_reward_moves_to_the_next_endpoint_after_a_5xx_or_a_dead_endpoint() -> None:
    with (
        standins("stable", 1, env=KEY) as live,
        standins("stable", 1, env=KEY, fail_rewards=1000) as failing,
        standins("stable", 1, env=KEY) as dead,
    ):
        dead[0].kill()
        endpoints = [dead[0].url, failing[0].url, live[0].url]
        signer = attribution.IdSigner(attribution.RewardKeys.parse(KEY[attribution.ENV_VAR]), variant="stable")
        with start_router("--stable", *endpoints, env=KEY) as router:
            c = router.client()
            ids = [signer.generate(1.8e9) for _ in range(6)]  # decided by a replica long gone: still attributable
            for rid in ids:
                status, resp = c.request("POST", "/v1/reward", {"request_id": rid, "reward": 0.5})
                assert status == 202, resp
            assert sorted(r["request_id"] for r in live[0].received()) == sorted(ids)
            assert failing[0].received() == []


def test_client_chosen_ids_go_to_the_endpoint_that_served_them() -> None:
    with (
        standins("stable", 3, env=KEY) as stable,
        start_router("--stable", *[s.url for s in stable], env=KEY) as router,
    ):
        c = router.client()
        served = {f"order-{i}": c.act([0.0], request_id=f"order-{i}") for i in range(12)}
        for rid, body in served.items():
            assert body["request_id"] == rid and attribution.is_signed(body["reward_id"])
            status, resp = c.request("POST", "/v1/reward", {"request_id": rid, "reward": 1.0})
            assert status == 202, resp
        got = _received(stable)
        for rid, body in served.items():
            assert [r["request_id"] for r in got[body["endpoint"]]].count(rid) == 1
        status, resp = c.request("POST", "/v1/reward", {"request_id": "order-never", "reward": 1.0})
        assert status == 404 and "reward_id" in resp["error"]
        # the signed reward_id is accepted by any endpoint, as a verified id
        status, _ = HttpClient(router.port).request(
            "POST", "/v1/reward", {"request_id": served["order-0"]["reward_id"], "reward": 1.0, "event_id": "x"}
        )
        assert status == 202


def test_without_the_key_the_router_forwards_each_id_to_the_endpoint_that_served_it() -> None:
    with (
        standins("stable", 3, env=KEY) as stable,  # the servers sign; the router has no key to verify with
        start_router("--stable", *[s.url for s in stable], env={attribution.ENV_VAR: ""}) as router,
    ):
        c = router.client()
        served = [c.act([0.0]) for _ in range(9)]
        for b in served:
            status, resp = c.request("POST", "/v1/reward", {"request_id": b["request_id"], "reward": 1.0})
            assert status == 202, resp
        got = _received(stable)
        for b in served:
            assert [r["request_id"] for r in got[b["endpoint"]]].count(b["request_id"]) == 1
        signer = attribution.IdSigner(attribution.RewardKeys.parse(KEY[attribution.ENV_VAR]), variant="stable")
        status, resp = c.request("POST", "/v1/reward", {"request_id": signer.generate(1.8e9), "reward": 1.0})
        assert status == 404 and attribution.ENV_VAR in resp["error"]
