"""The router at production topology, over real HTTP with stand-in endpoint processes (standin.py):
three endpoints per variant all take traffic, a SIGKILLed endpoint costs no client request and is
taken out, then comes back after a restart on its port; one entity keeps its endpoint, and an
endpoint leaving moves only its own entities; a new endpoint list applies under load and fails no
request."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import threading
import time

import pytest

from tests.policy_server.router.conftest import HttpClient, RouterProc, standins, start_router
from tests.support.policy_server import metric

pytestmark = pytest.mark.integration


def _endpoints_ready(router: RouterProc, variant: str, want: int, timeout: float = 15.0) -> None:
    c = router.client()
    deadline = time.monotonic() + timeout
    try:
        while metric(c.metrics(), "policy_router_endpoints", variant=variant, state="ready") != want:
            assert time.monotonic() < deadline, f"{variant} never had {want} ready endpoints"
            time.sleep(0.05)
    finally:
        c.close()


def test_three_endpoints_per_variant_all_take_traffic() -> None:
    with (
        standins("stable", 3) as stable,
        standins("candidate", 3) as cand,
        start_router(
            "--stable", *[s.url for s in stable], "--candidate", *[s.url for s in cand], "--weight", "50"
        ) as router,
    ):

        def run(_: int) -> list[dict]:
            c = router.client()
            try:
                return [c.act([0.0]) for _ in range(300)]
            finally:
                c.close()

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            bodies = [b for part in pool.map(run, range(2)) for b in part]
        per_variant = collections.Counter(b["variant"] for b in bodies)
        per_endpoint = collections.Counter(b["endpoint"] for b in bodies)
        print(f"per variant {dict(per_variant)}, per endpoint {dict(sorted(per_endpoint.items()))}")
        for b in bodies:  # each answer came from an endpoint of the variant it is labelled with
            assert b["endpoint"][0] == b["variant"][0]
        for variant, names in (("stable", "s0 s1 s2"), ("candidate", "c0 c1 c2")):
            share = per_variant[variant] / 3
            for name in names.split():
                assert 0.5 * share <= per_endpoint[name] <= 1.5 * share, (name, per_endpoint)
        m = router.client().metrics()
        assert metric(m, "policy_router_endpoints", variant="stable", state="ready") == 3
        assert metric(m, "policy_router_endpoints", variant="candidate", state="ready") == 3
        assert metric(m, "policy_router_endpoints", variant="candidate", state="out") == 0


def test_a_killed_endpoint_costs_no_request_is_taken_out_and_comes_back_after_restart() -> None:
    with standins("stable", 3) as stable, start_router("--stable", *[s.url for s in stable]) as router:
        doomed = stable[1]
        results: list[tuple[int, str]] = []
        errors: list[BaseException] = []

        def client_loop(n: int) -> None:
            c = HttpClient(router.port)
            try:
                for _ in range(n):
                    status, body = c.request("POST", "/v1/act", {"observation": [0.0]})
                    results.append((status, body.get("endpoint") if isinstance(body, dict) else None))
            except BaseException as exc:  # a connection error is a failed request too
                errors.append(exc)
            finally:
                c.close()

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(client_loop, 400) for _ in range(3)]
            deadline = time.monotonic() + 30
            while sum(1 for _, e in results if e == doomed.name) < 20:
                assert time.monotonic() < deadline and not errors, errors
                time.sleep(0.01)
            doomed.kill()
            n_at_kill = len(results)
            concurrent.futures.wait(futures, timeout=60)
        assert not errors, errors
        assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:5]
        after = [e for _, e in results[n_at_kill + 50 :]]  # in-flight ones aside, the dead endpoint gets nothing
        assert after and doomed.name not in after and set(after) == {"s0", "s2"}
        m = router.client().metrics()
        assert metric(m, "policy_router_endpoints", variant="stable", state="out") == 1
        assert total_failed(m) == 0

        doomed.start()  # same port: the router's probe of /readyz brings it back
        _endpoints_ready(router, "stable", 3)
        c = router.client()
        back = collections.Counter(c.act([0.0])["endpoint"] for _ in range(60))
        assert back[doomed.name] > 0, back


def total_failed(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("policy_router_failed_requests_total"))


@pytest.mark.parametrize("how", ["context", "header"])
def test_an_entity_keeps_its_endpoint_and_only_the_departed_endpoints_entities_move(how: str) -> None:
    flags = ("--entity-context", "user") if how == "context" else ("--entity-header", "X-Entity")
    users = [f"user-{i}" for i in range(120)]

    def ask(c: HttpClient, user: str) -> str:
        if how == "context":
            return c.act([0.0], context={"user": user})["endpoint"]
        return c.act([0.0], headers={"X-Entity": user})["endpoint"]

    with standins("stable", 3) as stable, start_router("--stable", *[s.url for s in stable], *flags) as router:
        c = router.client()
        first = {u: ask(c, u) for u in users}
        assert {u: ask(c, u) for u in users} == first  # stable while the endpoints are
        assert set(first.values()) == {"s0", "s1", "s2"}  # and spread over all of them
        stable[2].kill()
        moved = {u: ask(c, u) for u in users}  # the first of these meet the dead endpoint: retried, not failed
        for u in users:
            if first[u] == "s2":
                assert moved[u] in ("s0", "s1")
            else:
                assert moved[u] == first[u], (u, first[u], moved[u])
        assert {u: ask(c, u) for u in users} == moved


def test_a_new_endpoint_list_applies_while_requests_flow_and_none_fails(tmp_path) -> None:
    with standins("stable", 3) as stable:
        state = tmp_path / "routing.json"
        state.write_text(json.dumps({"version": 1, "stable": [stable[0].url, stable[1].url]}))
        with start_router("--stable", stable[0].url, "--config", str(state), "--watch-config") as router:
            results: list[tuple[int, str]] = []
            stop = threading.Event()

            def client_loop() -> None:
                c = HttpClient(router.port)
                try:
                    while not stop.is_set() and len(results) < 5000:
                        status, body = c.request("POST", "/v1/act", {"observation": [0.0]})
                        results.append((status, body.get("endpoint") if isinstance(body, dict) else str(body)))
                finally:
                    c.close()

            threads = [threading.Thread(target=client_loop) for _ in range(2)]
            for t in threads:
                t.start()
            try:
                deadline = time.monotonic() + 20
                while len(results) < 100:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                state.write_text(json.dumps({"version": 1, "stable": [stable[1].url, stable[2].url]}))
                while router.table()["table"]["stable"] != [stable[1].url, stable[2].url]:
                    assert time.monotonic() < deadline, router.table()
                    time.sleep(0.02)
                n_applied = len(results)
                while len(results) < n_applied + 200:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            finally:
                stop.set()
                for t in threads:
                    t.join(10)
        assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:5]
        assert {e for _, e in results[:100]} == {"s0", "s1"}
        assert {e for _, e in results[n_applied + 10 :]} == {"s1", "s2"}  # the old list's in-flight ones aside
