"""Cooling a server room over a day: a sequential environment with delayed effects and a safety cost.

Why this one: it is the smallest problem where a one-step view of the log is wrong. Cooling is
paid for now (energy, at the hour's tariff) but acts later: the chiller cools a chilled-water
tank, the tank cools the room, so an action changes the room's temperature one to several hours
on. A policy that maximises the energy reward alone stops cooling and overheats the room in the
afternoon; a policy within a cost budget pre-cools in the cheap night and morning hours. The
temperature above the limit is reported as a cost (``overheat``, degree-hours), which the
trajectory gate bounds and the constrained trainer budgets.

One episode is one day of ``hours`` steps (default 24), from midnight; the last step is terminal.

=================  ==========================================================
``room``           room temperature, (T - 24 °C) / 4
``water``          chilled-water tank temperature, (W - 16 °C) / 4
``outside``        outside temperature, (O - 26 °C) / 6
``hour_sin``       sin(2 pi hour / 24)
``hour_cos``       cos(2 pi hour / 24)
``load``           IT load (heat), 0..1.5
``tariff``         this hour's energy price, 0.4 (off-peak) or 1.0 (12:00-19:00)
``warm``           degrees above 25 °C (0 below): the alarm panel's reading, which linear value models need
=================  ==========================================================

Actions: ``COOLING_LEVELS`` (off, low, medium, high). Reward: ``1 - tariff * power / max power``
(the energy bill saved against running flat out; in 0..1, so reward-ratio guardrails read as
usual). Cost: ``overheat = max(0, T_next - LIMIT_C)`` after the step. ``info`` carries ``costs``,
``energy``, ``temperature`` and ``delay_s`` (when the meter reading reaches the client).

The dynamics are plain numpy on a batch of rooms (`dynamics`), so `simulate` plays thousands of
days of a policy in milliseconds: the demo uses it for each candidate's true value in the
simulator. `thermostat_probabilities` is the behaviour (fallback) policy: a thermostat rule that
explores (epsilon-greedy), so logged propensities support every action.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = [
    "COOLING_LEVELS",
    "COST_NAME",
    "ENV_ID",
    "FEATURES",
    "LIMIT_C",
    "CoolingEnv",
    "Rollouts",
    "register",
    "simulate",
    "thermostat_action",
    "thermostat_probabilities",
]

ENV_ID = "policy_rollouts/Cooling-v0"
FEATURES = ("room", "water", "outside", "hour_sin", "hour_cos", "load", "tariff", "warm")
COOLING_LEVELS = ("off", "low", "medium", "high")
COOLING_C = np.array([0.0, 0.9, 1.8, 2.7])  # °C per hour the chiller takes out of the tank
POWER = np.array([0.0, 1.0, 2.1, 3.3])  # kW: the chiller's efficiency drops at high output
LIMIT_C = 27.0
COST_NAME = "overheat"
HOURS = 24
PEAK = (12, 19)
SETPOINT_C = 21.0  # the fallback thermostat's
EPSILON = 0.3  # the fallback's exploration  # tariff 1.0 in [12, 19), 0.4 otherwise


@dataclass
class State:
    """A batch of B rooms: temperatures in °C, the episode's weather, the hour."""

    room: np.ndarray  # (B,)
    water: np.ndarray  # (B,)
    base: np.ndarray  # (B,) the day's mean outside temperature
    swing: np.ndarray  # (B,) its daily amplitude
    load: np.ndarray  # (B,) this hour's IT load
    hour: int


def tariff(hour: int) -> float:
    return 1.0 if PEAK[0] <= hour % 24 < PEAK[1] else 0.4


def outside(state: State) -> np.ndarray:
    return state.base + state.swing * math.sin(2.0 * math.pi * (state.hour - 9) / 24.0)


def observe(state: State) -> np.ndarray:
    """The (B, 8) float32 observations of `FEATURES`."""
    b = state.room.shape[0]
    angle = 2.0 * math.pi * state.hour / 24.0
    cols = [
        (state.room - 24.0) / 4.0,
        (state.water - 16.0) / 4.0,
        (outside(state) - 26.0) / 6.0,
        np.full(b, math.sin(angle)),
        np.full(b, math.cos(angle)),
        state.load,
        np.full(b, tariff(state.hour)),
        np.maximum(0.0, state.room - 25.0),
    ]
    return np.stack(cols, axis=1).astype(np.float32)


def _load(rng: np.random.Generator, hour: int, b: int) -> np.ndarray:
    day = 0.35 if 8 <= hour < 20 else 0.0
    return np.clip(0.7 + day + rng.normal(0.0, 0.08, b), 0.0, 1.5)


def initial(rng: np.random.Generator, b: int) -> State:
    return State(room=rng.uniform(22.0, 24.0, b), water=rng.uniform(14.0, 18.0, b), base=rng.normal(26.0, 1.5, b),
                 swing=rng.uniform(4.0, 7.0, b), load=_load(rng, 0, b), hour=0)


def dynamics(state: State, actions: np.ndarray, rng: np.random.Generator) -> tuple[State, np.ndarray, np.ndarray]:
    """One hour for every room: (next state, reward (B,), overheat cost (B,)).

    The action cools the tank now; the tank cools the room from the next hour on (a delayed,
    lasting effect): the room's next temperature does not depend on this hour's action.
    """
    actions = np.asarray(actions, dtype=np.int64)
    reward = 1.0 - tariff(state.hour) * POWER[actions] / POWER[-1]
    room = (state.room + 0.12 * (outside(state) - state.room) + 1.8 * state.load
            - 0.35 * (state.room - state.water) + rng.normal(0.0, 0.15, actions.shape[0]))
    water = np.clip(state.water + 0.2 * (state.room - state.water) - COOLING_C[actions], 7.0, 35.0)
    hour = state.hour + 1
    nxt = State(room=room, water=water, base=state.base, swing=state.swing,
                load=_load(rng, hour, actions.shape[0]), hour=hour)
    cost = np.maximum(0.0, room - LIMIT_C)
    return nxt, reward, cost


def thermostat_action(obs: np.ndarray, setpoint: float = SETPOINT_C) -> np.ndarray:
    """The rule the fallback serves: one cooling level per 1.5 °C above `setpoint` (room, as observed)."""
    room_c = 24.0 + 4.0 * np.asarray(obs, dtype=np.float64)[..., 0]
    return np.clip(np.round((room_c - setpoint) / 1.5), 0, len(COOLING_LEVELS) - 1).astype(np.int64)


def thermostat_probabilities(obs: np.ndarray, epsilon: float = EPSILON, setpoint: float = SETPOINT_C) -> np.ndarray:
    """The fallback's action probabilities: the thermostat's level, uniform with probability `epsilon`."""
    k = len(COOLING_LEVELS)
    greedy = thermostat_action(obs, setpoint)
    probs = np.full((*greedy.shape, k), epsilon / k)
    np.put_along_axis(probs, greedy[..., None], 1.0 - epsilon + epsilon / k, axis=-1)
    return probs


@dataclass(frozen=True)
class Rollouts:
    """Per-step arrays of `simulate`: (episodes, hours)."""

    rewards: np.ndarray
    costs: np.ndarray
    actions: np.ndarray
    temperatures: np.ndarray

    def discounted(self, gamma: float) -> dict[str, float]:
        """Mean discounted return of the reward and of the cost per episode (what the gate estimates)."""
        w = gamma ** np.arange(self.rewards.shape[1])
        return {"reward": float((self.rewards @ w).mean()), COST_NAME: float((self.costs @ w).mean())}


def simulate(policy: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int = 0,
             hours: int = HOURS) -> Rollouts:
    """Play `episodes` days at once; `policy` maps (B, 8) observations to (B, K) action probabilities."""
    rng = np.random.default_rng(seed)
    state = initial(rng, episodes)
    rewards, costs, actions, temps = [], [], [], []
    for _ in range(hours):
        probs = np.asarray(policy(observe(state)), dtype=np.float64)
        cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
        a = np.minimum((rng.random((episodes, 1)) > cum).sum(axis=1), probs.shape[1] - 1)
        state, r, c = dynamics(state, a, rng)
        rewards.append(r)
        costs.append(c)
        actions.append(a)
        temps.append(state.room)
    stack = lambda xs: np.stack(xs, axis=1)  # noqa: E731
    return Rollouts(stack(rewards), stack(costs), stack(actions), stack(temps))


class CoolingEnv(gym.Env[np.ndarray, int]):
    """One server room over one day; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, hours: int = HOURS, mean_delay_s: float = 0.3, max_delay_s: float = 1.5) -> None:
        if not 1 <= hours <= 48:
            raise ValueError(f"hours must be within 1..48 (a day or two), got {hours}")
        self.hours = hours
        self.mean_delay_s = mean_delay_s
        self.max_delay_s = max_delay_s
        self.observation_space = gym.spaces.Box(-10.0, 10.0, shape=(len(FEATURES),), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(COOLING_LEVELS))
        self._state: State | None = None

    @property
    def hour(self) -> int:
        return 0 if self._state is None else self._state.hour

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._state = initial(self.np_random, 1)
        return observe(self._state)[0], {"hour": 0, "temperature": float(self._state.room[0])}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(int(action)):
            raise ValueError(f"action must be an integer in 0..{len(COOLING_LEVELS) - 1}, got {action!r}")
        hour = self._state.hour
        self._state, reward, cost = dynamics(self._state, np.array([int(action)]), self.np_random)
        delay = min(self.max_delay_s, float(self.np_random.exponential(self.mean_delay_s)))
        info = {"costs": {COST_NAME: float(cost[0])}, "energy": float(POWER[int(action)]), "hour": hour,
                "temperature": float(self._state.room[0]), "delay_s": delay}
        terminated = self._state.hour >= self.hours
        return observe(self._state)[0], float(reward[0]), terminated, False, info


def register() -> None:
    """Make ``gymnasium.make(ENV_ID)`` work (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="policy_server.sim.cooling:CoolingEnv", max_episode_steps=HOURS)
