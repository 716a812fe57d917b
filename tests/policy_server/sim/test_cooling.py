"""The cooling environment: Gymnasium API, seeding, delayed effects of cooling, the overheat cost, the behaviour."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policy_server.sim import cooling

OFF, LOW, MEDIUM, HIGH = range(4)


def _day(actions: list[int], seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Observations before each step, rewards, costs and infos of one day played with `actions`."""
    env = cooling.CoolingEnv()
    obs, _ = env.reset(seed=seed)
    seen, rewards, costs, infos = [obs], [], [], []
    for a in actions:
        obs, r, _, _, info = env.step(a)
        seen.append(obs)
        rewards.append(r)
        costs.append(info["costs"][cooling.COST_NAME])
        infos.append(info)
    return np.stack(seen), np.array(rewards), np.array(costs), infos


def test_passes_gymnasium_env_checker() -> None:
    check_env(cooling.CoolingEnv(), skip_render_check=True)


def test_registered_id_makes_the_env_and_a_day_ends_after_its_hours() -> None:
    cooling.register()
    cooling.register()  # idempotent
    env = gym.make(cooling.ENV_ID)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(cooling.FEATURES),) and obs.dtype == np.float32
    ends = [env.step(LOW)[2] for _ in range(cooling.HOURS)]
    assert ends == [False] * (cooling.HOURS - 1) + [True]


def test_observation_dimension_actions_and_horizon_are_small() -> None:
    env = cooling.CoolingEnv()
    assert env.observation_space.shape[0] <= 8 and env.action_space.n <= 5 and 20 <= env.hours <= 50
    with pytest.raises(ValueError, match="hours must be within"):
        cooling.CoolingEnv(hours=0)


def test_same_seed_same_day_other_seed_other_day() -> None:
    plan = [OFF, LOW, MEDIUM, HIGH] * 6
    a, b = _day(plan, seed=7), _day(plan, seed=7)
    for x, y in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[3] == b[3]
    assert not np.array_equal(a[0], _day(plan, seed=8)[0])


def test_cooling_costs_energy_now_and_lowers_the_temperature_only_from_the_next_hours_on() -> None:
    """The delayed effect: one hour of cooling at 10:00 is paid at once, the room cools from 12:00 on."""
    base = [OFF] * cooling.HOURS
    cooled = list(base)
    cooled[10] = HIGH
    obs_off, r_off, c_off, _ = _day(base)
    obs_on, r_on, c_on, _ = _day(cooled)
    assert r_on[10] < r_off[10]  # paid now
    np.testing.assert_array_equal(r_on[:10], r_off[:10])
    np.testing.assert_array_equal(r_on[11:], r_off[11:])
    room = 0  # feature index
    np.testing.assert_array_equal(obs_on[:12, room], obs_off[:12, room])  # the room at 11:00 does not see it yet
    assert np.all(obs_on[12:, room] < obs_off[12:, room])  # from 12:00 to the end of the day it is cooler
    assert c_off[16] > 0 and c_on[16] < c_off[16]  # and it overheats less six hours later
    np.testing.assert_array_equal(c_on[:11], c_off[:11])


def test_overheat_cost_is_the_degrees_above_the_limit_after_each_hour() -> None:
    _, rewards, costs, infos = _day([OFF] * cooling.HOURS)
    temperatures = np.array([i["temperature"] for i in infos])
    np.testing.assert_allclose(costs, np.maximum(0.0, temperatures - cooling.LIMIT_C))
    assert costs.sum() > 0  # a day without cooling overheats
    np.testing.assert_allclose(rewards, 1.0)  # and costs no energy
    _, rewards, costs, infos = _day([HIGH] * cooling.HOURS)
    assert costs.sum() == 0
    tariffs = np.array([cooling.tariff(i["hour"]) for i in infos])
    np.testing.assert_allclose(rewards, 1.0 - tariffs)  # flat out costs the whole tariff


def test_the_reward_alone_prefers_no_cooling_and_the_thermostat_keeps_the_limit() -> None:
    """The trade-off a constrained policy must strike, measured on 2,000 simulated days per policy."""
    def constant(action: int):
        return lambda obs: np.eye(4)[np.full(obs.shape[0], action)]

    off = cooling.simulate(constant(OFF), 2000, seed=1).discounted(0.95)
    thermostat = cooling.simulate(cooling.thermostat_probabilities, 2000, seed=1).discounted(0.95)
    high = cooling.simulate(constant(HIGH), 2000, seed=1).discounted(0.95)
    assert off["reward"] > thermostat["reward"] > high["reward"]
    assert off[cooling.COST_NAME] > 5.0
    assert thermostat[cooling.COST_NAME] < 0.1 and high[cooling.COST_NAME] == 0.0


def test_simulate_is_seeded_and_shapes_are_episodes_by_hours() -> None:
    a = cooling.simulate(cooling.thermostat_probabilities, 50, seed=3)
    b = cooling.simulate(cooling.thermostat_probabilities, 50, seed=3)
    np.testing.assert_array_equal(a.costs, b.costs)
    assert a.rewards.shape == a.costs.shape == a.actions.shape == (50, cooling.HOURS)


@pytest.mark.parametrize("epsilon", [0.0, 0.3, 1.0])
def test_thermostat_explores_every_level_with_epsilon(epsilon: float) -> None:
    obs = cooling.observe(cooling.initial(np.random.default_rng(0), 200))
    obs[:, 0] = np.linspace(-2.0, 2.0, 200)  # rooms from 16 °C to 32 °C
    probs = cooling.thermostat_probabilities(obs, epsilon)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs.min() == pytest.approx(epsilon / 4)
    greedy = cooling.thermostat_action(obs)
    assert list(np.unique(greedy)) == [OFF, LOW, MEDIUM, HIGH]  # hotter rooms get more cooling
    assert np.all(np.diff(greedy) >= 0)
