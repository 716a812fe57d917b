"""The data plane at production topology, with real processes over HTTP.

Three replicas per variant (stable v1, candidate v2) of `policy-server serve` share the
rollout's reward key, one decision log directory and a write-ahead log each (``--durable``),
behind the router balancing across the endpoints of each variant. A client makes decisions for
a few dozen entities through the router, sending each entity's current action (the per-entity
shield guarantee), and posts every decision's reward to a random replica of either variant after
a random delay of up to longer than a step, retrying on 5xx and connection errors. Mid-run a
candidate replica is SIGKILLed and restarted on its port (replaying its WAL), and the rollout is
rolled back (the candidate's weight goes to 0) while rewards for its decisions are still
arriving.

Afterwards:
- the joined dataset (policy_server.join) holds every acknowledged decision once and every
  acknowledged reward exactly once, joined to its decision;
- the reward sums by deciding variant equal the ground truth the client recorded, in the joined
  data and in each surviving process's /metrics (per process: what it acknowledged, by the
  variant that decided; the killed incarnation's counters died with it, as in any
  Prometheus-scraped system, and its rewards are in the log through its WAL);
- no entity's action moved by more than ``maxActionDelta`` between its consecutive decisions.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rollout_operator.cluster.ports import free_port

from policy_server import artifact
from tests.support.policy_server import REPO, Client, metric

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPLICAS = 3
STEP_S = 4.0  # one "step" of the run: the kill lands after one, the rollback after two
MAX_REWARD_DELAY_S = 1.5 * STEP_S  # feedback may arrive later than a whole step
RUN_S = 3 * STEP_S
ENTITIES = 24
MAX_DELTA = 1
DECISIONS_PER_S = 60


@dataclass
class Proc:
    """One server or router process on a fixed port (a restart keeps the port, like a pod's Service endpoint)."""

    name: str
    argv: list[str]
    port: int
    env: dict[str, str]
    logfile: Path
    popen: subprocess.Popen | None = None
    incarnation: int = 0

    def start(self) -> Proc:
        self.incarnation += 1
        with self.logfile.open("a") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "policy_server.cli", *self.argv, "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **self.env},
            )  # fmt: skip
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str = "/readyz", timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None and self.popen.poll() is None, self.logfile.read_text()[-2000:]
            try:
                if Client(self.port, timeout=2).get(path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready in {timeout} s: {self.logfile.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


@dataclass
class Truth:
    """What the client saw: acknowledged decisions and rewards, and each entity's actions in order."""

    decisions: dict[str, str] = field(default_factory=dict)  # request id -> deciding variant
    rewards: dict[str, float] = field(default_factory=dict)  # request id -> reward value (acknowledged)
    acked_by: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)  # (proc, inc) -> variant sums
    actions: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    retries: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _models(tmp: Path) -> dict[str, Path]:
    softmax = artifact.Exploration(kind="softmax", temperature=5.0)  # entities want to move: the shield works
    return {
        variant: artifact.write_example_model(
            tmp / variant, n_actions=6, version=version, seed=seed, exploration=softmax, shield={"max_delta": MAX_DELTA}
        )
        for variant, version, seed in (("stable", "v1", 0), ("candidate", "v2", 1))
    }


@pytest.fixture()
def topology(tmp_path: Path) -> Iterator[tuple[dict[str, list[Proc]], Proc, Path, Path]]:
    models = _models(tmp_path)
    logs, env = tmp_path / "log", {"POLICY_SERVER_REWARD_KEY": secrets.token_urlsafe(32)}
    servers: dict[str, list[Proc]] = {}
    for variant, model in models.items():
        servers[variant] = []
        for i in range(REPLICAS):
            argv = ["serve", "--model", str(model), "--variant", variant, "--log-dir", str(logs), "--seed", str(i),
                    "--wal-dir", str(tmp_path / "wal" / f"{variant}-{i}"), "--durable"]  # fmt: skip
            servers[variant].append(Proc(f"{variant}-{i}", argv, free_port(), env, tmp_path / f"{variant}-{i}.log"))
    table = tmp_path / "routing.json"
    _write_table(table, servers, weight=50)
    router = Proc("router", ["route", "--config", str(table), "--watch-config"], free_port(), env,
                  tmp_path / "router.log")  # fmt: skip
    every = [p for group in servers.values() for p in group]
    try:
        for proc in every:
            proc.start()
        for proc in every:
            proc.wait_ready()
        router.start().wait_ready("/healthz")
        yield servers, router, table, logs
    finally:
        for proc in [router, *every]:
            proc.stop(signal.SIGKILL if proc.popen and proc.popen.poll() is None and proc is router else signal.SIGTERM)


def _write_table(path: Path, servers: dict[str, list[Proc]], *, weight: float) -> None:
    table = {
        "stable": [p.url for p in servers["stable"]],
        "candidate": [p.url for p in servers["candidate"]],
        "weight": weight,
        "stickyKey": "context:entity",
        "entityKey": "context:entity",
        "generation": int(time.time() * 1000),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    tmp.replace(path)


class RewardPoster(threading.Thread):
    """Posts each due reward to a random replica of either variant; retries elsewhere on 5xx or a dead socket."""

    def __init__(self, servers: list[Proc], truth: Truth, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.servers, self.truth, self.rng = servers, truth, rng
        self.due: list[tuple[float, str, float]] = []
        self.cv = threading.Condition()
        self.closing = False
        self.failures: list[str] = []

    def schedule(self, at: float, request_id: str, value: float) -> None:
        with self.cv:
            heapq.heappush(self.due, (at, request_id, value))
            self.cv.notify()

    def run(self) -> None:
        while True:
            with self.cv:
                while not self.due and not self.closing:
                    self.cv.wait(0.2)
                if not self.due:
                    return
                at, request_id, value = self.due[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self.cv.wait(min(wait, 0.2))
                    continue
                heapq.heappop(self.due)
            self._post(request_id, value)

    def _post(self, request_id: str, value: float) -> None:
        for attempt in range(30):
            proc = self.rng.choice(self.servers)
            incarnation = proc.incarnation
            try:
                reward = {"request_id": request_id, "reward": value}
                status, body = Client(proc.port, timeout=5).post("/v1/reward", reward)
            except OSError:
                status, body = 0, "connection error"
            if status in (202, 409):  # 409: an earlier attempt that we saw fail was recorded after all
                with self.truth.lock:
                    self.truth.rewards[request_id] = value
                    if status == 202:
                        variant = self.truth.decisions[request_id]
                        sums = self.truth.acked_by.setdefault((proc.name, incarnation), defaultdict(float))
                        sums[variant] += value
                    self.truth.retries[attempt] += 1
                return
            if status and status < 500:
                self.failures.append(f"{request_id}: {status} {body}")
                return
            time.sleep(0.05)
        self.failures.append(f"{request_id}: no replica accepted it in 30 attempts")


def _drive(servers: dict[str, list[Proc]], router: Proc, table: Path, truth: Truth) -> RewardPoster:
    rng = random.Random(7)
    poster = RewardPoster([p for group in servers.values() for p in group], truth, rng)
    poster.start()
    client = Client(router.port)
    victim = servers["candidate"][0]
    started = time.monotonic()
    killed = rolled_back = False
    n = 0
    while (now := time.monotonic()) - started < RUN_S:
        if not killed and now - started > STEP_S:
            victim.stop(signal.SIGKILL)
            victim.start()  # as the Deployment would; its WAL is replayed into the log on start
            killed = True
        if not rolled_back and now - started > 2 * STEP_S:
            _write_table(table, servers, weight=0)
            rolled_back = True
        entity = f"e{rng.randrange(ENTITIES)}"
        previous = truth.actions[entity]
        context = {"entity": entity} | ({"current_action": previous[-1]} if previous else {})
        observation = [rng.gauss(0, 2) for _ in range(8)]
        for _ in range(20):
            try:
                status, body = client.post("/v1/act", {"observation": observation, "context": context})
            except OSError:
                client = Client(router.port)
                status = 0
            if status == 200:
                break
            time.sleep(0.05)
        assert status == 200, body
        with truth.lock:
            truth.decisions[body["request_id"]] = body["variant"]
            truth.actions[entity].append(body["action"])
        mean = 1.0 if body["variant"] == "stable" else 2.0  # distinct per variant: a misattribution shows
        poster.schedule(now + rng.uniform(0, MAX_REWARD_DELAY_S), body["request_id"], round(rng.gauss(mean, 1), 3))
        n += 1
        time.sleep(max(0.0, started + n / DECISIONS_PER_S - time.monotonic()))
    victim.wait_ready()
    with poster.cv:
        poster.closing = True
        poster.cv.notify()
    poster.join(MAX_REWARD_DELAY_S + 60)
    assert not poster.is_alive(), "rewards still being posted"
    return poster


def test_three_replicas_late_rewards_a_sigkill_and_a_rollback_lose_nothing(topology) -> None:
    servers, router, table, logs = topology
    truth = Truth()
    poster = _drive(servers, router, table, truth)
    assert not poster.failures, poster.failures[:5]

    scraped = {p.name: (p.incarnation, Client(p.port).metrics()) for group in servers.values() for p in group}
    for group in servers.values():
        for proc in group:
            assert proc.stop() == 0, proc.logfile.read_text()[-2000:]

    variants = Counter(truth.decisions.values())
    assert variants["stable"] > 50 and variants["candidate"] > 50  # both served (weight 50, then rollback)
    late = [rid for rid in truth.rewards if truth.decisions[rid] == "candidate"]
    assert late, "rewards for the rolled-back candidate's decisions were posted"

    # every acknowledged reward joined exactly once, to its decision, with its value
    joined = _joined(logs)
    assert set(joined) >= set(truth.decisions), "an acknowledged decision is missing from the log"
    rewarded = {rid: row for rid, row in joined.items() if row["reward_events"]}
    assert set(rewarded) == set(truth.rewards)
    assert all(row["reward_events"] == 1 for row in rewarded.values())
    for rid, value in truth.rewards.items():
        assert rewarded[rid]["reward"] == pytest.approx(value)
        assert rewarded[rid]["variant"] == truth.decisions[rid]
    truth_sums = defaultdict(float)
    for rid, value in truth.rewards.items():
        truth_sums[truth.decisions[rid]] += value
    joined_sums = defaultdict(float)
    for row in rewarded.values():
        joined_sums[row["variant"]] += row["reward"]
    assert joined_sums == pytest.approx(truth_sums)

    # live metrics: each surviving process counted exactly what it acknowledged, under the deciding variant
    for name, (incarnation, samples) in scraped.items():
        acked = truth.acked_by.get((name, incarnation), {})
        for variant in ("stable", "candidate"):
            got = metric(samples, "policy_reward_sum", variant=variant) if acked.get(variant) else 0.0
            assert got == pytest.approx(acked.get(variant, 0.0), abs=1e-6), (name, variant)

    # the per-entity shield held across replicas, the kill and the rollback
    moves = [abs(b - a) for actions in truth.actions.values() for a, b in itertools.pairwise(actions)]
    assert max(moves) <= MAX_DELTA
    assert moves.count(MAX_DELTA) > 20  # entities did move: the bound was exercised


def _joined(logs: Path) -> dict[str, dict]:
    """The joined dataset by request id (the joiner's library, as the offline-evaluation Job runs it)."""
    from policy_server import join

    options = join.JoinOptions(window=None, reward_function=join.RewardFunction.SUM, default_reward=0.0)
    table, _ = join.join_log(f"file://{logs}", options)
    rows = table.select(["request_id", "variant", "reward", "reward_events"]).to_pylist()
    by_id: dict[str, dict] = {}
    for row in rows:
        assert row["request_id"] not in by_id, f"decision {row['request_id']} appears twice"
        by_id[row["request_id"]] = row
    return by_id
