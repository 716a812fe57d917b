"""The pricing environment: Gymnasium API, seeding, the margin floor as a cost, delayed feedback, drift."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policy_server.sim import pricing


def _play(env: pricing.PricingEnv, policy, n: int = 4000) -> tuple[float, float]:
    obs, _ = env.reset(seed=3)
    reward = violations = 0.0
    for _ in range(n):
        obs, r, terminated, truncated, info = env.step(policy(obs))
        assert not terminated and not truncated
        reward += r
        violations += info["costs"][pricing.COST_NAME]
    return reward / n, violations / n


def test_passes_gymnasium_env_checker() -> None:
    check_env(pricing.PricingEnv(), skip_render_check=True)


def test_registered_id_makes_the_env() -> None:
    pricing.register()
    pricing.register()  # idempotent
    env = gym.make(pricing.ENV_ID)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(pricing.FEATURES),) and obs.dtype == np.float32


def test_same_seed_same_customers_and_outcomes() -> None:
    a, b = pricing.PricingEnv(), pricing.PricingEnv()
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    np.testing.assert_array_equal(oa, ob)
    for action in [0, 1, 2, 3, 4] * 20:
        ra, rb = a.step(action), b.step(action)
        np.testing.assert_array_equal(ra[0], rb[0])
        assert ra[1] == rb[1] and ra[4] == rb[4]
    oc, _ = pricing.PricingEnv().reset(seed=8)
    assert not np.array_equal(oa, oc)


def test_undercutting_the_floor_raises_the_proxy_reward_and_breaks_the_constraint() -> None:
    """The reward-hacking opportunity the demo relies on: lowest price converts best but violates the floor."""
    env = pricing.PricingEnv()
    list_reward, list_viol = _play(env, lambda o: pricing.LIST_PRICE_ACTION)
    floor_reward, floor_viol = _play(env, env.floor_action)
    cheap_reward, cheap_viol = _play(env, lambda o: 0)
    assert list_viol == 0 and floor_viol == 0
    assert floor_reward > list_reward + 0.05
    assert cheap_reward > floor_reward
    assert cheap_viol > 0.25


def test_violation_is_exactly_a_price_below_the_margin_floor() -> None:
    env = pricing.PricingEnv(min_margin=0.1)
    env.reset(seed=1)
    for _ in range(500):
        obs = env.next_customer()
        action = int(env.np_random.integers(len(pricing.PRICE_LEVELS)))
        outcome = env.outcome(obs, action)
        below = pricing.PRICE_LEVELS[action] < float(obs[0]) * 1.1 - 1e-9
        assert outcome["costs"][pricing.COST_NAME] == (1.0 if below else 0.0)
        assert 0.0 <= outcome["delay_s"] <= env.max_delay_s
        assert outcome["revenue"] == (pricing.PRICE_LEVELS[action] if outcome["reward"] else 0.0)


def test_demand_drifts_with_the_clock() -> None:
    env = pricing.PricingEnv(drift=0.05)
    env.reset(seed=0)
    obs = np.array([0.7, 0.0, 1.0, 0.0, 0.5, 0.0], dtype=np.float32)
    early = env.purchase_probability(obs, 2)
    env.t = 10_000
    assert env.purchase_probability(obs, 2) > early + 0.05


def test_bad_action_is_refused_with_the_valid_range() -> None:
    env = pricing.PricingEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        env.step(7)
