"""Production traffic for local mode: customers of a simulated environment calling the router.

Each customer is drawn from a Gymnasium environment of `policy_server.sim`, sent to the router's
`POST /v1/act`, and the outcome of the served action (reward, costs) is posted to
`POST /v1/reward` after the environment's feedback delay, as a real client would report a
purchase seconds later. Requests leave at a fixed rate (an open loop, so a slow variant does not
slow the traffic down); what each variant served and earned is kept per second for the report.

Rewards go to the router, as a client posts them to the Service, whichever replica decided; a
5xx or a connection error is retried (a 409 on a retry means an earlier try was logged), a 4xx
is a refusal. ``rewards`` counts per variant what was posted, accepted (2xx) and refused, and
keeps the accepted request ids, so the run's decision log can say which were joined.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import threading
import time
from typing import Any

__all__ = ["Bucket", "RewardLedger", "TrafficGenerator"]

RETRIES = 5  # tries of one reward post on a 5xx or connection error
RETRY_BACKOFF_S = 0.2  # doubled after each failed try


@dataclasses.dataclass
class Bucket:
    decisions: int = 0
    rewards: int = 0
    reward_sum: float = 0.0
    violations: int = 0
    errors: int = 0


@dataclasses.dataclass
class RewardLedger:
    """What the client reported for one variant: every reward it had to post ends as accepted or refused."""

    posted: int = 0
    accepted: int = 0
    refused: int = 0  # a 4xx, tries used up, or still waiting for its delay when the traffic stopped
    retried: int = 0  # extra tries after a 5xx or connection error
    accepted_ids: list[str] = dataclasses.field(default_factory=list)


class TrafficGenerator:
    """Plays `env` against `url` at `rate` requests per second in a background thread."""

    def __init__(self, url: str, env: Any, rate: float = 150.0, concurrency: int = 32, cost: str = "margin_violation",
                 drain_s: float = 0.0, late_share: float = 0.0, late_max_s: float = 0.0, seed: int = 0):
        self.url = url.rstrip("/")
        self.env = env
        self.rate = rate
        self.concurrency = concurrency
        self.cost = cost
        self.drain_s = drain_s  # on stop, wait this long for delayed rewards still to be posted
        # Late feedback (a return, a churn): this share of outcomes is reported after a uniform random delay up
        # to late_max_s instead of the environment's own delay.
        self.late_share = late_share
        self.late_max_s = late_max_s
        self._rng = random.Random(seed)
        self.started_at = time.time()
        # second since start -> variant -> Bucket
        self.buckets: dict[int, dict[str, Bucket]] = collections.defaultdict(lambda: collections.defaultdict(Bucket))
        self.sent = 0
        self.rewards: dict[str, RewardLedger] = collections.defaultdict(RewardLedger)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.drain_s + 15)

    def totals(self, since: float = 0.0) -> dict[str, Bucket]:
        """Per variant sums over the buckets from `since` (epoch seconds) on."""
        first = int(since - self.started_at) if since else 0
        out: dict[str, Bucket] = collections.defaultdict(Bucket)
        with self._lock:
            for second, variants in self.buckets.items():
                if second < first:
                    continue
                for variant, b in variants.items():
                    t = out[variant]
                    t.decisions += b.decisions
                    t.rewards += b.rewards
                    t.reward_sum += b.reward_sum
                    t.violations += b.violations
                    t.errors += b.errors
        return dict(out)

    def series(self) -> list[dict[str, Any]]:
        """One row per second and variant (for plots)."""
        with self._lock:
            return [
                {"t": self.started_at + s, "variant": v, **dataclasses.asdict(b)}
                for s, variants in sorted(self.buckets.items())
                for v, b in sorted(variants.items())
            ]

    def _bucket(self, variant: str, at: float) -> Bucket:
        return self.buckets[int(at - self.started_at)][variant]

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.concurrency * 2)
        timeout = aiohttp.ClientTimeout(total=5)
        semaphore = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            begin = time.monotonic()
            while not self._stop.is_set():
                due = int((time.monotonic() - begin) * self.rate)
                while self.sent < due and not self._stop.is_set():
                    if semaphore.locked():  # saturated: skip rather than queue without bound
                        self.sent = due
                        break
                    await semaphore.acquire()
                    task = asyncio.create_task(self._one(session, semaphore))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    self.sent += 1
                await asyncio.sleep(0.01)
            if tasks and self.drain_s > 0:
                await asyncio.wait(list(tasks), timeout=self.drain_s)
            for task in list(tasks):
                task.cancel()
            for task in list(tasks):
                with contextlib.suppress(BaseException):
                    await task

    def reward_ledgers(self) -> dict[str, RewardLedger]:
        """Per variant: rewards posted, accepted and refused (a copy, safe to read while traffic runs)."""
        with self._lock:
            return {v: dataclasses.replace(r, accepted_ids=list(r.accepted_ids)) for v, r in self.rewards.items()}

    async def _post_reward(self, session: Any, payload: dict[str, Any]) -> tuple[bool, int]:
        """(accepted, extra tries): retried on 5xx/connection errors; a 409 after a failed try was logged."""
        for attempt in range(RETRIES):
            try:
                async with session.post(f"{self.url}/v1/reward", json=payload) as resp:
                    await resp.read()
                    status = resp.status
            except asyncio.CancelledError:
                raise
            except Exception:
                status = None
            if status is not None and 200 <= status < 300:
                return True, attempt
            if status == 409 and attempt > 0:  # the earlier try reached a server before its answer was lost
                return True, attempt
            if status is not None and status < 500:
                return False, attempt
            if attempt + 1 < RETRIES:
                await asyncio.sleep(RETRY_BACKOFF_S * 2**attempt)
        return False, RETRIES - 1

    async def _deliver_reward(self, session: Any, variant: str, request_id: str, reward: float,
                              costs: dict[str, float], delay_s: float) -> None:
        """Post one decision's feedback after `delay_s` and account for it in the ledger and the series.

        A reward still waiting when the traffic stops was never delivered: refused, so counted lost."""
        ok, retried = False, 0
        try:
            await asyncio.sleep(delay_s)
            payload = {"request_id": request_id, "reward": reward, "costs": costs}
            ok, retried = await self._post_reward(session, payload)
        finally:
            with self._lock:
                ledger = self.rewards[variant]
                ledger.posted += 1
                ledger.retried += retried
                if ok:
                    ledger.accepted += 1
                    ledger.accepted_ids.append(request_id)
                else:
                    ledger.refused += 1
        with self._lock:
            bucket = self._bucket(variant, time.time())
            if ok:
                bucket.rewards += 1
                bucket.reward_sum += reward
                bucket.violations += int(costs.get(self.cost, 0.0) > 0)
            else:
                bucket.errors += 1

    async def _one(self, session: Any, semaphore: asyncio.Semaphore) -> None:
        obs = self.env.next_customer()
        try:
            try:
                async with session.post(f"{self.url}/v1/act", json={"observation": obs.tolist()}) as resp:
                    body = await resp.json(content_type=None)
                    ok = resp.status == 200
            except Exception:
                ok, body = False, None
        finally:
            semaphore.release()
        now = time.time()
        if not ok or not isinstance(body, dict):
            with self._lock:
                self._bucket("error", now).errors += 1
            return
        variant = str(body.get("variant") or "unknown")
        outcome = self.env.outcome(obs, int(body["action"]))
        with self._lock:
            self._bucket(variant, now).decisions += 1
        rid = str(body["request_id"])
        delay = outcome["delay_s"]
        if self.late_share > 0 and self._rng.random() < self.late_share:
            delay = self._rng.uniform(0.0, self.late_max_s)
        await self._deliver_reward(session, variant, rid, outcome["reward"], outcome["costs"], delay)
