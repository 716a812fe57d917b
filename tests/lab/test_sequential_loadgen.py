"""EpisodeGenerator against a scripted server: the episode header, the trajectory keys, rewards, failures.

A real server would hide what the generator sends; this one records it (loopback, one thread, stopped
by the fixture).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from rollout_lab.local import episodes

from policy_server.sim import cooling

HOURS = 24


class Scripted:
    """/v1/act answers action 1 (or 500 for `fail`: (episode id, step)); /v1/reward answers 200."""

    def __init__(self, fail: tuple[str, int] | None = None) -> None:
        self.fail = fail
        self.acts: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.rewards: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _act(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.acts.append((dict(request.headers), body))
        ctx = body["context"]
        if self.fail == (ctx["episode_id"], ctx["step"]):
            return web.json_response({"error": "scripted"}, status=500)
        return web.json_response({"action": 1, "request_id": f"{ctx['episode_id']}/{ctx['step']}",
                                  "variant": "stable"})

    async def _reward(self, request: web.Request) -> web.Response:
        self.rewards.append(await request.json())
        return web.json_response({"ok": True})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.add_routes([web.post("/v1/act", self._act), web.post("/v1/reward", self._reward)])
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> Scripted:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _play(server: Scripted, days: int, rate: float = 2000.0) -> episodes.EpisodeGenerator:
    gen = episodes.EpisodeGenerator(f"http://127.0.0.1:{server.port}", lambda: cooling.CoolingEnv(mean_delay_s=0.01,
                                    max_delay_s=0.02), rate=rate, concurrency=4, episodes=days, prefix="d",
                                    drain_s=2.0)
    gen.start()
    deadline = time.monotonic() + 30
    while not gen.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    gen.stop()
    return gen


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with Scripted() as server:
        yield server


def test_every_step_carries_the_episode_in_its_context_and_its_sticky_header(scripted: Scripted) -> None:
    gen = _play(scripted, days=3)
    assert gen.episodes_done == 3 and gen.sent == 3 * HOURS
    for headers, body in scripted.acts:
        ctx = body["context"]
        assert headers["X-Episode-Id"] == ctx["episode_id"]
        assert ctx.get("terminal", False) == (ctx["step"] == HOURS - 1)
        assert len(body["observation"]) == len(cooling.FEATURES)
    steps = sorted((b["context"]["episode_id"], b["context"]["step"]) for _, b in scripted.acts)
    assert steps == sorted((f"d-{i}", s) for i in range(3) for s in range(HOURS))


def test_each_step_posts_its_reward_and_overheat_cost_under_its_request_id(scripted: Scripted) -> None:
    gen = _play(scripted, days=2)
    ids = sorted(r["request_id"] for r in scripted.rewards)
    ledger = gen.reward_ledgers()["stable"]
    assert ledger.posted == ledger.accepted == 2 * HOURS and sorted(ledger.accepted_ids) == ids
    assert ids == sorted(f"d-{i}/{s}" for i in range(2) for s in range(HOURS))
    assert all(set(r["costs"]) == {cooling.COST_NAME} and 0.0 <= r["reward"] <= 1.0 for r in scripted.rewards)


def test_a_failed_step_ends_its_episode_and_the_others_finish() -> None:
    with Scripted(fail=("d-1", 5)) as server:
        gen = _play(server, days=3)
        episode_1 = sorted(b["context"]["step"] for _, b in server.acts if b["context"]["episode_id"] == "d-1")
    assert gen.finished and gen.episodes_done == 2 and gen.failed_episodes == 1
    assert episode_1 == list(range(6))  # steps 0..5 sent, nothing after the failure
    assert gen.totals()["error"].errors == 1

