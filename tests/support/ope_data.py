"""Synthetic logged bandit feedback with a known truth, for the OPE tests."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LoggedBandit:
    reward: np.ndarray  # (n,)
    action: np.ndarray  # (n,) int
    pscore: np.ndarray  # (n,) behaviour probability of the logged action
    behavior_dist: np.ndarray  # (n, k)
    expected_reward: np.ndarray  # (n, k) the true E[r | x, a]

    @property
    def n(self) -> int:
        return int(self.action.shape[0])

    def true_value(self, target_dist: np.ndarray) -> float:
        """The evaluation policy's value on these contexts: the quantity IPS/DR estimate without bias."""
        return float(np.sum(target_dist * self.expected_reward) / self.n)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def make_contexts(n: int, n_actions: int, rng: np.random.Generator, dim: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Contexts and their true expected rewards (a logistic model per action)."""
    x = rng.normal(size=(n, dim))
    theta = rng.normal(size=(dim, n_actions))
    bias = np.linspace(-1.0, 1.0, n_actions)
    expected = 1.0 / (1.0 + np.exp(-(x @ theta + bias)))
    return x, expected


def log_bandit(expected: np.ndarray, behavior_dist: np.ndarray, rng: np.random.Generator) -> LoggedBandit:
    """Sample actions from behavior_dist and Bernoulli rewards from the true expected reward."""
    n = expected.shape[0]
    cum = behavior_dist.cumsum(axis=1)
    action = (rng.random(n)[:, None] > cum).sum(axis=1)
    action = np.minimum(action, behavior_dist.shape[1] - 1)
    rows = np.arange(n)
    reward = (rng.random(n) < expected[rows, action]).astype(np.float64)
    return LoggedBandit(reward, action, behavior_dist[rows, action], behavior_dist, expected)


def uniform_logged(n: int, n_actions: int, seed: int) -> tuple[LoggedBandit, np.ndarray]:
    """Uniform logging over all actions; returns the log and the contexts."""
    rng = np.random.default_rng(seed)
    x, expected = make_contexts(n, n_actions, rng)
    return log_bandit(expected, np.full((n, n_actions), 1.0 / n_actions), rng), x
