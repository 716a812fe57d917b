"""Whole rollouts through `decide` with the sequential judge: harm rolls back, sufficiency ends a
timed pause early only when allowed, missing sums roll back at the limit, and status.judge persists.
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
from engine_harness import PASS, Driver, guardrail, make_rollout
from rollout_operator import api, engine
from rollout_operator.engine import judges
from rollout_operator.engine.types import Measurement

P = api.Phase


def sequential_rollout(steps: list[dict[str, object]], **judge: object) -> api.PolicyRollout:
    rollout = make_rollout(steps, guardrails=[guardrail()])
    analysis = rollout.spec.analysis.model_copy(
        update={"judge": api.JudgeSpec.model_validate({"kind": "sequential", **judge})}
    )
    return rollout.model_copy(update={"spec": rollout.spec.model_copy(update={"analysis": analysis})})


class RewardWorld:
    """Cumulative reward counters whose candidate mean is `gap` away from stable's (1.0)."""

    def __init__(self, gap: float, seed: int = 1) -> None:
        self.gap, self.rng = gap, np.random.default_rng(seed)
        self.values = dict.fromkeys(("candidate_sum", "candidate_count", "stable_sum", "stable_count"), 0.0)

    def step(self, n_c: int = 300, n_s: int = 2700) -> dict[str, Measurement]:
        self.values["candidate_sum"] += self.rng.normal((1 + self.gap) * n_c, math.sqrt(n_c))
        self.values["candidate_count"] += n_c
        self.values["stable_sum"] += self.rng.normal(n_s, math.sqrt(n_s))
        self.values["stable_count"] += n_s
        return {judges.SERIES_PREFIX + k: Measurement(v) for k, v in self.values.items()}


def drive(driver: Driver, world: RewardWorld, ticks: int, done: object = None, missing: bool = False) -> None:
    """Tick once a minute; when analysis is due feed the guardrail (passing) and the reward counters."""
    for _ in range(ticks):
        due = engine.analysis_due(driver.rollout, driver.now)
        series = world.step()
        if missing:
            series = {k: Measurement(None, "no data") for k in series}
        measurements = {"error-rate": Measurement(PASS), **series} if due else {}
        driver.tick(0, measurements=measurements)
        if done is not None and done(driver):  # type: ignore[operator]
            return
        driver.now += timedelta(seconds=60)


def test_a_regression_rolls_back_by_the_sequential_judge_naming_the_reward() -> None:
    driver = Driver(sequential_rollout([{"setWeight": 10}, {"pause": {"duration": "2h"}}, {"setWeight": 100}]))
    drive(driver, RewardWorld(gap=-0.2), 120, done=lambda d: d.status.phase.terminal)
    assert driver.status.phase is P.ROLLED_BACK
    assert "SequentialHarm" in driver.reasons()
    assert "reward is worse" in (driver.status.message or "")
    assert driver.status.judge is not None and driver.status.judge.decision == "Harm"


def test_sufficient_evidence_ends_a_timed_pause_early_only_when_allowed() -> None:
    steps = [{"setWeight": 10}, {"pause": {"duration": "3h"}}, {"setWeight": 50}, {"pause": {}}]
    early = Driver(sequential_rollout(steps, allowEarlyAdvance=True, minDetectableEffect=0.05))
    drive(early, RewardWorld(gap=0.0), 150, done=lambda d: d.status.current_step_index == 3)
    assert early.status.current_step_index == 3, early.status.message
    assert "SequentialNoWorse" in early.reasons()
    held = Driver(sequential_rollout(steps, minDetectableEffect=0.05))
    drive(held, RewardWorld(gap=0.0), 150)
    assert held.status.current_step_index == 1 and held.status.phase is P.PAUSED
    assert held.status.judge is not None and held.status.judge.decision == "NoWorseThanMargin"


def test_untimed_pauses_wait_for_a_human_whatever_the_evidence() -> None:
    driver = Driver(sequential_rollout([{"setWeight": 10}, {"pause": {}}], allowEarlyAdvance=True))
    drive(driver, RewardWorld(gap=0.0), 150)
    assert driver.status.current_step_index == 1 and driver.status.phase is P.PAUSED


def test_missing_reward_sums_roll_back_at_the_judges_inconclusive_limit() -> None:
    driver = Driver(sequential_rollout([{"setWeight": 10}, {"pause": {"duration": "1h"}}], inconclusiveLimit=2))
    drive(driver, RewardWorld(gap=0.0), 10, done=lambda d: d.status.phase.terminal, missing=True)
    assert driver.status.phase is P.ROLLED_BACK
    assert "judge.inconclusiveLimit 2" in (driver.status.message or "")


def test_judge_state_survives_a_round_trip_through_the_wire_and_a_retry_clears_it() -> None:
    driver = Driver(sequential_rollout([{"setWeight": 10}, {"pause": {}}]))
    drive(driver, RewardWorld(gap=0.0), 8)
    state = driver.status.judge
    assert state is not None and state.intervals >= 5
    wire = api.PolicyRolloutStatus.model_validate(driver.status.wire())
    assert wire.judge == state
    driver.tick(0, action="abort/1")
    driver.tick(0, action="retry/2")
    assert driver.status.judge is None
