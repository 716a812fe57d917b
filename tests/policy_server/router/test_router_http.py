"""The router over real HTTP with real policy servers: weighted split within 4 sigma over 3,000
requests, sticky assignment (header and context field, and consistency as the weight grows),
shadow never changes a served answer and exports agreement, a stalled candidate (SIGSTOP) and a
killed one (SIGKILL, under concurrent load) cost zero failed requests, rewards reach the server
that made the decision, and the router's decision log records variant, served_by and the
assignment probability."""

from __future__ import annotations

import concurrent.futures
import math
import random
import signal
import threading
import time

import pytest

from policy_server.decision_log import reader
from tests.policy_server.router.conftest import HttpClient, start_router, total, url
from tests.support.policy_server import cli_server, metric

pytestmark = pytest.mark.integration


def _obs(rng: random.Random) -> list[float]:
    return [rng.gauss(0, 1) for _ in range(8)]


def test_weight_30_splits_3000_requests_within_4_sigma(stable, candidate) -> None:
    n, p = 3000, 0.30
    before_s, before_c = stable.client().metrics(), candidate.client().metrics()
    with start_router("--stable", url(stable), "--candidate", url(candidate), "--weight", "30") as router:

        def run(seed: int) -> list[dict]:
            client, rng = router.client(), random.Random(seed)
            try:
                return [client.act(_obs(rng)) for _ in range(n // 4)]
            finally:
                client.close()

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            bodies = [b for part in pool.map(run, range(4)) for b in part]
        assert len(bodies) == n
        served = {"stable": 0, "candidate": 0}
        for body in bodies:
            served[body["variant"]] += 1
            # the policy server that answered says who it is; the router adds the assignment probability
            assert body["policy_version"] == {"stable": "v1", "candidate": "v2"}[body["variant"]]
            assert body["served_by"] == body["variant"]
            assert body["assignment_probability"] == pytest.approx(p if body["variant"] == "candidate" else 1 - p)
        sigma = math.sqrt(n * p * (1 - p))
        c = router.client()
        print(f"weight 30: {served} of {n} (expected {n * p:.0f} +- 4 sigma = {4 * sigma:.0f})")
        assert abs(served["candidate"] - n * p) <= 4 * sigma, served
        m = c.metrics()
        assert (
            metric(m, "policy_router_requests_total", variant="candidate", served_by="candidate") == served["candidate"]
        )
        assert metric(m, "policy_router_requests_total", variant="stable", served_by="stable") == served["stable"]
        assert metric(m, "policy_router_weight", variant="candidate") == 30
        assert metric(m, "policy_router_latency_seconds_count", variant="candidate") == served["candidate"]
        assert total(m, "policy_router_fallbacks_total") == 0
    # each policy server really answered its share
    after_s, after_c = stable.client().metrics(), candidate.client().metrics()
    assert total(after_c, "policy_decisions_total") - total(before_c, "policy_decisions_total") == served["candidate"]
    assert total(after_s, "policy_decisions_total") - total(before_s, "policy_decisions_total") == served["stable"]


def test_sticky_header_keeps_a_caller_on_one_variant_and_grows_consistently(stable, candidate) -> None:
    users = [f"user-{i}" for i in range(250)]
    rng = random.Random(2)
    on_candidate: dict[int, set[str]] = {}
    routes = {}
    for weight in (20, 60):
        with start_router(
            "--stable", url(stable), "--candidate", url(candidate), "--weight", str(weight), "--sticky-header", "X-User"
        ) as router:
            c = router.client()
            seen: dict[str, set[str]] = {}
            for _ in range(2):
                for user in users:
                    body = c.act(_obs(rng), headers={"x-user": user})
                    seen.setdefault(user, set()).add(body["variant"])
            assert all(len(v) == 1 for v in seen.values()), "a sticky caller moved between variants"
            on_candidate[weight] = {u for u, v in seen.items() if v == {"candidate"}}
            routes[weight] = seen
            share = len(on_candidate[weight]) / len(users)
            sigma = math.sqrt(weight / 100 * (1 - weight / 100) / len(users))
            assert abs(share - weight / 100) <= 4 * sigma, (weight, share)
    # consistent hashing: raising the weight only moves callers from stable to candidate
    assert on_candidate[20] <= on_candidate[60]
    assert len(on_candidate[60]) > len(on_candidate[20])


def test_sticky_context_field(stable, candidate) -> None:
    rng = random.Random(3)
    with start_router(
        "--stable", url(stable), "--candidate", url(candidate), "--weight", "50", "--sticky-context", "user"
    ) as router:
        c = router.client()
        variants = {}
        for user in range(60):
            got = {c.act(_obs(rng), context={"user": user})["variant"] for _ in range(3)}
            assert len(got) == 1
            variants[user] = got.pop()
        assert set(variants.values()) == {"stable", "candidate"}


def test_shadow_rewards_give_an_off_policy_estimate_of_the_candidate(stable, candidate) -> None:
    """Rewards posted through the router are joined to the mirrored decisions: the exported estimate is
    SNIPS over the stable's decisions (greedy stable: propensity 1, so the agreeing requests' mean)."""
    rng = random.Random(11)
    observations = [_obs(rng) for _ in range(200)]
    direct_c = candidate.client()
    candidate_actions = [direct_c.act(o)["action"] for o in observations]
    with start_router("--stable", url(stable), "--candidate", url(candidate), "--weight", "0", "--shadow") as router:
        c = router.client()
        served = [c.act(o) for o in observations]
        deadline = time.monotonic() + 20
        while metric(c.metrics(), "policy_router_shadow_compared_total") < len(observations):
            assert time.monotonic() < deadline, "shadow comparisons did not complete"
            time.sleep(0.05)
        rewards, costs = [], []
        for decision in served:
            reward, cost = float(decision["action"] % 2), float(decision["action"] == 0)
            posted = {"request_id": decision["request_id"], "reward": reward, "costs": {"margin": cost}}
            status, body = c.request("POST", "/v1/reward", posted)
            assert status == 202, body
            rewards.append(reward)
            costs.append(cost)
        m = c.metrics()
    agreeing = [i for i, d in enumerate(served) if d["action"] == candidate_actions[i]]
    assert 30 <= len(agreeing) < len(served), "the example policies agree on some observations only"

    def estimate(quantity: str, bound: str) -> float:
        return metric(m, "policy_router_shadow_estimate", variant="candidate", quantity=quantity, bound=bound)

    assert estimate("reward", "point") == pytest.approx(sum(rewards[i] for i in agreeing) / len(agreeing))
    assert estimate("reward", "baseline") == pytest.approx(sum(rewards) / len(rewards))
    assert estimate("cost:margin", "point") == pytest.approx(sum(costs[i] for i in agreeing) / len(agreeing))
    assert estimate("reward", "lower") <= estimate("reward", "point") <= estimate("reward", "upper")
    assert metric(m, "policy_router_shadow_rewards_joined", variant="candidate", quantity="reward") == len(served)


def test_shadow_at_weight_0_serves_only_stable_and_exports_agreement(stable, candidate) -> None:
    rng = random.Random(4)
    observations = [_obs(rng) for _ in range(300)]
    direct_s, direct_c = stable.client(), candidate.client()
    expected_s = [direct_s.act(o)["action"] for o in observations]
    expected_c = [direct_c.act(o)["action"] for o in observations]
    agreement = sum(a == b for a, b in zip(expected_s, expected_c, strict=True)) / len(observations)
    assert 0 < agreement < 1, "the two example policies should agree on some observations only"
    before_c = total(direct_c.metrics(), "policy_decisions_total")
    with start_router("--stable", url(stable), "--candidate", url(candidate), "--weight", "0", "--shadow") as router:
        c = router.client()
        for o, action in zip(observations, expected_s, strict=True):
            body = c.act(o)
            assert body["variant"] == "stable" and body["served_by"] == "stable"
            assert body["policy_version"] == "v1"
            assert body["action"] == action  # the candidate never changes what is served
            assert body["assignment_probability"] == 1.0
        deadline = time.monotonic() + 20
        while (m := c.metrics()) and metric(m, "policy_router_shadow_compared_total") < len(observations):
            assert time.monotonic() < deadline, "shadow comparisons did not complete"
            time.sleep(0.05)
        assert metric(m, "policy_router_shadow_requests_total", outcome="ok") == len(observations)
        assert metric(m, "policy_router_shadow_agreement_ratio", variant="candidate") == pytest.approx(agreement)
        assert metric(m, "policy_router_shadow_agreements_total") == round(agreement * len(observations))
        assert metric(m, "policy_router_shadow_latency_seconds_count", variant="candidate") == len(observations)
        assert metric(m, "policy_router_shadow_enabled", variant="candidate") == 1
        assert metric(m, "policy_router_requests_total", variant="candidate", served_by="candidate") == 0
    # the candidate really saw every mirrored observation
    assert total(direct_c.metrics(), "policy_decisions_total") - before_c == len(observations)


def test_stalled_candidate_is_answered_by_stable_within_the_budget(stable, candidate) -> None:
    with start_router(
        "--stable", url(stable), "--candidate", url(candidate), "--weight", "50", "--latency-budget-ms", "50"
    ) as router:
        c = router.client()
        rng = random.Random(5)
        for _ in range(20):  # warm connections to both
            c.act(_obs(rng))
        candidate.proc.send_signal(signal.SIGSTOP)
        try:
            bodies = [c.act(_obs(rng)) for _ in range(60)]
        finally:
            candidate.proc.send_signal(signal.SIGCONT)
        assert all(b["variant"] == "stable" for b in bodies)
        fallbacks = [b for b in bodies if b["served_by"] == "fallback"]
        assert fallbacks and all(b["fallback_reason"] == "timeout" for b in fallbacks)
        assert all(b["assignment_probability"] == 0.5 for b in fallbacks)
        m = c.metrics()
        assert metric(m, "policy_router_fallbacks_total", reason="timeout") == len(fallbacks)
        assert metric(m, "policy_router_requests_total", variant="stable", served_by="fallback") == len(fallbacks)
        assert total(m, "policy_router_failed_requests_total") == 0


def test_killing_the_candidate_at_weight_50_fails_no_request(router_models, stable) -> None:
    # The doomed server labels itself "canary": the router must still answer variant="candidate".
    with (
        cli_server("--model", str(router_models["candidate"]), "--variant", "canary") as doomed,
        start_router("--stable", url(stable), "--candidate", url(doomed), "--weight", "50") as router,
    ):
        results: list[tuple[int, str, float]] = []
        errors: list[BaseException] = []
        stop = threading.Event()
        lock = threading.Lock()

        def client_loop(seed: int) -> None:
            rng = random.Random(seed)
            c = HttpClient(router.port)
            try:
                while not stop.is_set():
                    status, body = c.request("POST", "/v1/act", {"observation": _obs(rng)})
                    with lock:
                        results.append(
                            (status, body.get("variant") if isinstance(body, dict) else None, time.monotonic())
                        )
            except BaseException as exc:  # a connection error is a failed request too
                errors.append(exc)
            finally:
                c.close()

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 30
            while sum(1 for r in results if r[1] == "candidate") < 100:
                assert time.monotonic() < deadline and not errors, errors
                time.sleep(0.01)
            doomed.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            n_at_kill = len(results)
            # 600 more answers, and at least a second of them (the check below skips the first half second)
            while len(results) < n_at_kill + 600 or time.monotonic() < killed_at + 1.5:
                assert time.monotonic() < deadline + 30 and not errors, errors
                time.sleep(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert not errors, errors
        assert all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200][:5]
        after = [v for _, v, t in results if t > killed_at + 0.5]
        assert after and set(after) == {"stable"}
        m = router.client().metrics()
        assert metric(m, "policy_router_fallbacks_total", reason="error") > 0
        assert total(m, "policy_router_failed_requests_total") == 0


def test_rewards_reach_the_server_that_decided(stable, candidate) -> None:
    with start_router("--stable", url(stable), "--candidate", url(candidate), "--weight", "50") as router:
        c = router.client()
        rng = random.Random(6)
        bodies = [c.act(_obs(rng)) for _ in range(40)]
        assert {b["variant"] for b in bodies} == {"stable", "candidate"}
        for b in bodies:  # each server only knows the ids it served: a misrouted reward would be 404
            status, resp = c.request("POST", "/v1/reward", {"request_id": b["request_id"], "reward": 1.0})
            assert status == 202, (b["variant"], resp)
        status, resp = c.request("POST", "/v1/reward", {"request_id": "nobody-served-this", "reward": 1.0})
        assert status == 404 and "unknown request_id" in resp["error"]


def test_decision_log_records_variant_served_by_and_assignment_probability(stable, candidate, tmp_path) -> None:
    logdir = tmp_path / "log"
    with start_router(
        "--stable", url(stable), "--candidate", url(candidate), "--weight", "40", "--shadow", "--log-dir", str(logdir)
    ) as router:
        c = router.client()
        rng = random.Random(7)
        served = {b["request_id"]: b for b in (c.act(_obs(rng), context={"page": "home"}) for _ in range(100))}
        deadline = time.monotonic() + 20
        n_stable = sum(b["variant"] == "stable" for b in served.values())
        while metric(c.metrics(), "policy_router_shadow_compared_total") < n_stable:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert router.stop() == 0  # SIGTERM flushes the log
    rows = reader.read_decisions(str(logdir)).to_pylist()
    shadow = [r for r in rows if r["served_by"] == "shadow"]
    live = [r for r in rows if r["served_by"] != "shadow"]
    assert {r["request_id"] for r in live} == set(served)
    for r in live:
        b = served[r["request_id"]]
        assert r["variant"] == b["variant"] == r["served_by"]
        assert r["assignment_probability"] == pytest.approx(0.4 if b["variant"] == "candidate" else 0.6)
        assert r["action_index"] == b["action"] and r["policy_version"] == b["policy_version"]
        assert r["context_json"] == '{"page":"home"}'
    # every stable-served decision was shadowed; the shadow row joins it by request id, never served
    assert sorted(r["request_id"] for r in shadow) == sorted(k for k, b in served.items() if b["variant"] == "stable")
    assert all(r["variant"] == "candidate" and r["assignment_probability"] is None for r in shadow)
    assert {r["policy_version"] for r in shadow} == {"v2"}
