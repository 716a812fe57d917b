"""Sequential production traffic for local mode: episodes of a simulated environment played through the router.

Why beside `loadgen`: a bandit customer is one request, an episode is a chain of them. Step t+1's
observation exists only once step t's action is known, so each episode runs as its own task, and
many run at once. Every step calls `POST /v1/act` with the trajectory keys (`context.episode_id`,
`context.step`, `context.terminal` on the episode's last step), applies the served action to the
environment and posts the step's reward and costs to `POST /v1/reward` after the environment's
feedback delay, without holding the next step back (a meter reading arrives late; the room goes on).
Steps leave at most `rate` per second across all episodes; an episode whose request fails ends
there (its remaining steps are not played, so the log holds a shorter trajectory, not a gap).
The per-variant, per-second counters, the reward ledgers and the retried reward posts are
`loadgen.TrafficGenerator`'s, so the live view, `rewards.account` and the reports read either generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from rollout_lab.local import loadgen

__all__ = ["EpisodeGenerator"]


class EpisodeGenerator(loadgen.TrafficGenerator):
    """Plays episodes of `make_env()` against `url`, `concurrency` at a time, in a background thread.

    **Parameters:** `episodes`: stop after starting this many (None: until `stop()`); `seed`: episode i
    resets its environment with `seed + i`; `prefix`: episode ids are `f"{prefix}-{i}"`; `sticky_header`:
    the header that carries the episode id (a rollout's `traffic.stickyKey`), so that the router serves
    a whole episode from one variant and a canary's episodes are the candidate's own.
    """

    def __init__(self, url: str, make_env: Callable[[], Any], *, rate: float = 200.0, concurrency: int = 16,
                 episodes: int | None = None, seed: int = 0, prefix: str = "ep", cost: str = "overheat",
                 drain_s: float = 0.0, sticky_header: str | None = "X-Episode-Id") -> None:
        super().__init__(url, None, rate=rate, concurrency=concurrency, cost=cost, drain_s=drain_s)
        self.make_env = make_env
        self.episodes = episodes
        self.seed = seed
        self.prefix = prefix
        self.sticky_header = sticky_header  # sent with the episode id: the router keeps an episode on one variant
        self.episodes_started = 0
        self.episodes_done = 0  # played to their terminal step, every step answered
        self.failed_episodes = 0  # ended early by a failed request
        self._next_slot = 0.0

    @property
    def finished(self) -> bool:
        """Every requested episode has been played (always False without an episode count)."""
        return self.episodes is not None and self.episodes_done + self.failed_episodes >= self.episodes

    async def _pace(self) -> None:
        """Wait for this step's slot: one every 1/rate seconds across all episodes."""
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _main(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.concurrency * 2)
        timeout = aiohttp.ClientTimeout(total=5)
        rewards: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            running: set[asyncio.Task[None]] = set()
            while not self._stop.is_set():
                while (len(running) < self.concurrency and not self._stop.is_set()
                       and (self.episodes is None or self.episodes_started < self.episodes)):
                    task = asyncio.create_task(self._episode(session, self.episodes_started, rewards))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    self.episodes_started += 1
                if not running:
                    break
                await asyncio.sleep(0.02)
            for task in list(running):
                task.cancel()
            pending = [t for t in rewards if not t.done()]
            if pending and self.drain_s > 0:
                await asyncio.wait(pending, timeout=self.drain_s)
            for task in [*running, *rewards]:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _episode(self, session: Any, index: int, rewards: set[asyncio.Task[None]]) -> None:
        env = self.make_env()
        obs, _ = env.reset(seed=self.seed + index)
        episode_id = f"{self.prefix}-{index}"
        step, ended = 0, False
        while not ended and not self._stop.is_set():
            await self._pace()
            last = step == env.hours - 1  # the environment's horizon (`hours` of policy_server.sim.cooling)
            context: dict[str, Any] = {"episode_id": episode_id, "step": step}
            if last:
                context["terminal"] = True
            headers = {self.sticky_header: episode_id} if self.sticky_header else None
            body = await self._act(session, {"observation": obs.tolist(), "context": context}, headers)
            self.sent += 1
            if body is None:
                self.failed_episodes += 1
                return
            variant = str(body.get("variant") or "unknown")
            obs, reward, terminated, truncated, info = env.step(int(body["action"]))
            ended = terminated or truncated
            with self._lock:
                self._bucket(variant, time.time()).decisions += 1
            task = asyncio.create_task(self._reward(session, variant, body["request_id"], reward, info))
            rewards.add(task)
            task.add_done_callback(rewards.discard)
            step += 1
        if ended:
            self.episodes_done += 1

    async def _act(self, session: Any, payload: dict[str, Any], headers: dict[str, str] | None
                   ) -> dict[str, Any] | None:
        try:
            async with session.post(f"{self.url}/v1/act", json=payload, headers=headers) as resp:
                body = await resp.json(content_type=None)
                ok = resp.status == 200 and isinstance(body, dict)
        except Exception:
            ok, body = False, None
        if not ok:
            with self._lock:
                self._bucket("error", time.time()).errors += 1
            return None
        return body  # type: ignore[no-any-return]

    async def _reward(self, session: Any, variant: str, request_id: str, reward: float, info: dict[str, Any]) -> None:
        costs = dict(info.get("costs") or {})
        await self._deliver_reward(session, variant, request_id, reward, costs, float(info.get("delay_s", 0.0)))
