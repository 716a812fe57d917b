"""The load generator as a client reporting rewards: retried on 5xx, given up on 4xx, every one accounted for.

A stand-in router on loopback answers `/v1/act` for two variants and `/v1/reward` with a 503 on
the first try of some ids (a replica restarting) and a 404 for others (an id no one issued); the
generator's ledgers must match what the server acknowledged, id for id.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from rollout_lab.local import loadgen, processes


class _Server:
    """Decides for "stable" and "candidate" in turn; rewards: 503 once for ids n % 3 == 1, 404 for n % 5 == 4."""

    def __init__(self) -> None:
        self.count = itertools.count()
        self.tries: dict[str, int] = {}
        self.accepted: set[str] = set()

    async def act(self, request: web.Request) -> web.Response:
        n = next(self.count)
        return web.json_response({"request_id": f"r{n}", "action": 0, "variant": ("stable", "candidate")[n % 2]})

    async def reward(self, request: web.Request) -> web.Response:
        rid = (await request.json())["request_id"]
        n = int(rid[1:])
        self.tries[rid] = self.tries.get(rid, 0) + 1
        if n % 5 == 4:
            return web.json_response({"error": f"unknown request id {rid}"}, status=404)
        if n % 3 == 1 and self.tries[rid] == 1:
            return web.json_response({"error": "replica restarting"}, status=503)
        self.accepted.add(rid)
        return web.json_response({"status": "accepted"})


@pytest.fixture()
def server() -> Iterator[tuple[_Server, str]]:
    state, port = _Server(), processes.free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/act", state.act)
    app.router.add_post("/v1/reward", state.reward)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


class _Env:
    """Customers with a short feedback delay, except every 10th, whose outcome comes after the traffic stops."""

    def __init__(self) -> None:
        self.n = 0

    def next_customer(self) -> np.ndarray:
        return np.zeros(2, dtype=np.float32)

    def outcome(self, obs: np.ndarray, action: int) -> dict[str, Any]:
        self.n += 1
        return {"reward": 1.0, "costs": {}, "delay_s": 60.0 if self.n % 10 == 0 else 0.05}


def test_every_reward_is_accepted_or_refused_and_retries_only_follow_5xx(server: tuple[_Server, str]) -> None:
    state, url = server
    gen = loadgen.TrafficGenerator(url, _Env(), rate=100, concurrency=8, drain_s=2.0)
    gen.start()
    deadline = time.monotonic() + 20
    while gen.sent < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    gen.stop()
    ledgers = gen.reward_ledgers()
    assert set(ledgers) == {"stable", "candidate"}
    decided = sum(b.decisions for b in gen.totals().values())
    assert sum(r.posted for r in ledgers.values()) == decided >= 40
    for ledger in ledgers.values():
        assert ledger.posted == ledger.accepted + ledger.refused
    accepted = [rid for r in ledgers.values() for rid in r.accepted_ids]
    assert sorted(accepted) == sorted(state.accepted), "acknowledged by the server exactly when the client says so"
    assert not any(int(rid[1:]) % 5 == 4 for rid in accepted), "a 4xx is a refusal, not retried"
    assert all(state.tries[rid] == 1 for rid in state.tries if int(rid[1:]) % 5 == 4)
    retried = [rid for rid in accepted if int(rid[1:]) % 3 == 1]
    assert retried and all(state.tries[rid] == 2 for rid in retried), "a 503 is retried once it passes"
    assert sum(r.retried for r in ledgers.values()) == len([r for r in state.tries if int(r[1:]) % 3 == 1
                                                            and int(r[1:]) % 5 != 4])
    # rewards still waiting for their delay when the traffic stopped were never delivered: refused
    assert sum(r.refused for r in ledgers.values()) > len([r for r in state.tries if int(r[1:]) % 5 == 4])


def test_late_feedback_replaces_the_environments_delay(server: tuple[_Server, str]) -> None:
    # every outcome is "late", with a delay drawn from [0, 0]: none waits for the environment's 60 s
    state, url = server
    gen = loadgen.TrafficGenerator(url, _Env(), rate=100, concurrency=8, drain_s=5.0, late_share=1.0, late_max_s=0.0)
    gen.start()
    deadline = time.monotonic() + 20
    while gen.sent < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    gen.stop()
    ledgers = gen.reward_ledgers().values()
    refused = [rid for rid in state.tries if int(rid[1:]) % 5 == 4]
    assert sum(r.posted for r in ledgers) >= 20
    assert sum(r.refused for r in ledgers) == len(refused), "only the ids no one issued were refused"
