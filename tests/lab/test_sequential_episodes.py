"""Episodes of the cooling environment logged through a real policy server serving the thermostat fallback.

Specification: every day is played to its terminal hour, each step carries its episode id and step
(terminal on the last), the per-step reward and overheat cost reach the log joined to their decision,
and the logged propensities are the thermostat's own (what the trajectory gate divides by).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from rollout_lab.demo import sequential
from rollout_lab.local import episodes, processes

from policy_server import decision_log
from policy_server.sim import cooling

DAYS = 6


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, episodes.EpisodeGenerator]:
    tmp = tmp_path_factory.mktemp("episodes")
    fallback = sequential.write_fallback(tmp / "fallback")
    logs = tmp / "log"
    port = processes.free_port()
    server = processes.LocalProcess("fallback", processes.policy_server_command(
        "serve", "--model", str(fallback), "--host", "127.0.0.1", "--port", str(port), "--variant", "stable",
        "--log-dir", str(logs), "--threads", "1"), tmp)
    gen = episodes.EpisodeGenerator(f"http://127.0.0.1:{port}", cooling.CoolingEnv, rate=400.0, concurrency=3,
                                    episodes=DAYS, seed=11, prefix="day", drain_s=5.0)
    try:
        server.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=90)
        gen.start()
        deadline = time.monotonic() + 60
        while not gen.finished and time.monotonic() < deadline:
            time.sleep(0.2)
        gen.stop()
    finally:
        server.stop(grace=30)
    return logs, gen


def _decisions(logs: Path):  # -> pyarrow.Table
    return decision_log.join_rewards(str(logs), how="inner")


def test_every_day_is_played_to_its_last_hour(logged) -> None:
    _, gen = logged
    assert gen.finished and gen.episodes_done == DAYS and gen.failed_episodes == 0
    totals = gen.totals()["stable"]
    assert totals.decisions == totals.rewards == DAYS * cooling.HOURS


def test_each_step_is_logged_with_its_episode_step_and_terminal_flag(logged) -> None:
    logs, _ = logged
    table = _decisions(logs)
    contexts = [json.loads(c) for c in table["context_json"].to_pylist()]
    by_episode: dict[str, list[dict]] = {}
    for ctx in contexts:
        by_episode.setdefault(ctx["episode_id"], []).append(ctx)
    assert sorted(by_episode) == sorted(f"day-{i}" for i in range(DAYS))
    for steps in by_episode.values():
        assert sorted(c["step"] for c in steps) == list(range(cooling.HOURS))
        assert [c["step"] for c in steps if c.get("terminal")] == [cooling.HOURS - 1]


def test_rewards_and_overheat_costs_are_joined_to_their_steps(logged) -> None:
    logs, _ = logged
    table = _decisions(logs)
    rewards = np.array(table["reward"].to_pylist())
    costs = [dict(c or {}) for c in table["costs"].to_pylist()]
    assert np.all((rewards >= 0.0) & (rewards <= 1.0))
    assert all(set(c) == {cooling.COST_NAME} and c[cooling.COST_NAME] >= 0.0 for c in costs)
    actions = np.array(table["action_index"].to_pylist())
    assert set(np.unique(actions)) == set(range(len(cooling.COOLING_LEVELS)))  # the fallback explores


def test_logged_propensities_are_the_thermostats(logged) -> None:
    logs, _ = logged
    table = _decisions(logs)
    obs = np.array(table["observation"].to_pylist(), dtype=np.float32)
    actions = np.array(table["action_index"].to_pylist())
    expected = cooling.thermostat_probabilities(obs, sequential.FALLBACK_EPSILON, sequential.FALLBACK_SETPOINT_C)
    np.testing.assert_allclose(table["propensity"].to_numpy(), expected[np.arange(len(actions)), actions],
                               rtol=1e-5)
