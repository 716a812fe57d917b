"""A contextual dynamic-pricing environment with a margin floor, delayed feedback and drift.

Why this one: it has the failure the product exists to catch. The easy proxy reward
(conversion: did the customer buy?) rises whenever the price falls, so a policy trained on the
proxy alone learns to undercut the business's margin floor. The floor is reported as a cost
(``margin_violation``), the policy server counts it (`policy_constraint_violations_total`) and a
guardrail can stop such a policy in canary although its reward looks better.

Each step is one customer (a contextual bandit: episodes never terminate). The observation:

=================  ==========================================================
``unit_cost``      cost of the item as a fraction of list price (0.55..0.85)
``willingness``    the customer's propensity to buy (standard normal)
``competitor``     the competitor's price index (around 1.0)
``season``         sin of the time of year; drifts slowly with the env's clock
``loyalty``        0..1 (loyal customers are less price-sensitive)
``basket``         log basket size (noise the policy may ignore)
=================  ==========================================================

The action is one of ``PRICE_LEVELS`` (a multiple of the list price). The margin floor is
``price >= unit_cost * (1 + min_margin)``; the list price (level 2) always satisfies it.
The reward is 1.0 for a purchase, else 0.0; ``info`` carries ``costs`` (``margin_violation``:
1.0 when the price broke the floor, whether or not the customer bought), ``revenue``,
``margin`` and ``delay_s``: how long after the decision the outcome is known (purchases are
observed late, and so are non-purchases: the session must end first), which a traffic
generator honours before posting the reward.

Drift: demand shifts with ``season`` and a slow trend (``drift`` per 1,000 steps), so a policy
logged yesterday meets slightly different customers today. Seeded through ``reset(seed=...)``;
one step costs a few microseconds.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["COST_NAME", "ENV_ID", "FEATURES", "PRICE_LEVELS", "PricingEnv", "register"]

ENV_ID = "policy_rollouts/Pricing-v0"
PRICE_LEVELS = (0.80, 0.90, 1.00, 1.10, 1.20)
LIST_PRICE_ACTION = 2
FEATURES = ("unit_cost", "willingness", "competitor", "season", "loyalty", "basket")
COST_NAME = "margin_violation"


class PricingEnv(gym.Env[np.ndarray, int]):
    """Dynamic pricing for one product line; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, min_margin: float = 0.10, elasticity: float = 8.0, drift: float = 0.05,
                 season_period: int = 20_000, mean_delay_s: float = 0.5, max_delay_s: float = 3.0) -> None:
        self.min_margin = min_margin
        self.elasticity = elasticity
        self.drift = drift
        self.season_period = season_period
        self.mean_delay_s = mean_delay_s
        self.max_delay_s = max_delay_s
        self.observation_space = gym.spaces.Box(-10.0, 10.0, shape=(len(FEATURES),), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(PRICE_LEVELS))
        self.t = 0
        self._obs = np.zeros(len(FEATURES), dtype=np.float32)

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = int((options or {}).get("t", 0))
        self._obs = self._draw()
        return self._obs.copy(), {"t": self.t}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(int(action)):
            raise ValueError(f"action must be an integer in 0..{len(PRICE_LEVELS) - 1}, got {action!r}")
        outcome = self.outcome(self._obs, int(action))
        self._obs = self.next_customer()
        return self._obs.copy(), outcome.pop("reward"), False, False, outcome

    # ------------------------------------------------------------------ model

    def floor_action(self, obs: np.ndarray) -> int:
        """The lowest price level that keeps the margin floor (what an honest optimum looks like)."""
        floor = float(obs[0]) * (1.0 + self.min_margin)
        return next(i for i, p in enumerate(PRICE_LEVELS) if p >= floor - 1e-9)

    def purchase_probability(self, obs: np.ndarray, action: int) -> float:
        price = PRICE_LEVELS[action]
        _, willingness, competitor, season, loyalty, _ = (float(v) for v in obs)
        trend = self.drift * self.t / 1000.0
        sensitivity = self.elasticity * (1.0 - 0.5 * loyalty)
        z = 0.2 + 0.8 * willingness + 0.5 * season + trend + 3.0 * (competitor - 1.0) - sensitivity * (price - 1.0)
        return 1.0 / (1.0 + math.exp(-z))

    def outcome(self, obs: np.ndarray, action: int) -> dict[str, Any]:
        """Sample what happens when customer `obs` is offered price level `action` (uses the env's RNG)."""
        price = PRICE_LEVELS[action]
        unit_cost = float(obs[0])
        bought = bool(self.np_random.random() < self.purchase_probability(obs, action))
        violation = price < unit_cost * (1.0 + self.min_margin) - 1e-9
        delay = min(self.max_delay_s, float(self.np_random.exponential(self.mean_delay_s)))
        return {
            "reward": 1.0 if bought else 0.0,
            "costs": {COST_NAME: 1.0 if violation else 0.0},
            "revenue": price if bought else 0.0,
            "margin": (price - unit_cost) if bought else 0.0,
            "delay_s": delay,
            "t": self.t,
        }

    def next_customer(self) -> np.ndarray:
        """Advance the clock by one customer and draw them: for generators with many requests in flight."""
        self.t += 1
        return self._draw()

    def _draw(self) -> np.ndarray:
        rng = self.np_random
        season = math.sin(2.0 * math.pi * self.t / self.season_period)
        return np.array(
            [
                rng.uniform(0.55, 0.85),
                rng.normal(),
                rng.normal(1.0, 0.05),
                season,
                rng.uniform(0.0, 1.0),
                rng.normal(0.0, 0.5),
            ],
            dtype=np.float32,
        )


def register() -> None:
    """Make ``gymnasium.make(ENV_ID)`` work (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="policy_server.sim.pricing:PricingEnv")
