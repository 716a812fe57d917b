"""A 1-D cooling MDP small enough to evaluate any policy exactly (a stand-in for the #19 demo environment).

Each of `HORIZON` steps the operator picks a load: 0 (cool: temperature -1, reward 0), 1 (hold:
temperature unchanged, reward 1) or 2 (push: temperature +1, reward 2). Temperature starts at 0
and never goes below it. Every step ends with a cost equal to how far the temperature is above
`LIMIT`. Pushing every step earns the most and overheats; the best safe policy pushes up to the
limit and holds. The observation is (temperature / 5, step / HORIZON).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from policy_server.train import constrained, episodes

HORIZON = 10
LIMIT = 2
N_ACTIONS = 3
GAMMA = 0.9


def _obs(temp: int, t: int) -> list[float]:
    return [temp / 5.0, t / HORIZON]


def _step(temp: int, action: int) -> tuple[int, float, float]:
    nxt = max(0, temp + action - 1)
    return nxt, float(action), float(max(0, nxt - LIMIT))


def logged_episodes(n: int, seed: int) -> episodes.EpisodeArrays:
    """n episodes of the uniformly random behaviour policy (propensity 1/3 each step)."""
    rng = np.random.default_rng(seed)
    obs = np.zeros((n, HORIZON, 2), np.float32)
    nxt = np.zeros_like(obs)
    actions = rng.integers(0, N_ACTIONS, (n, HORIZON))
    rewards = np.zeros((n, HORIZON))
    costs = np.zeros((n, HORIZON))
    for i in range(n):
        temp = 0
        for t in range(HORIZON):
            obs[i, t] = _obs(temp, t)
            temp, rewards[i, t], costs[i, t] = _step(temp, int(actions[i, t]))
            nxt[i, t] = _obs(temp, t + 1)
    done = np.zeros((n, HORIZON), bool)
    done[:, -1] = True
    return episodes.EpisodeArrays(
        observations=obs, actions=actions, propensities=np.full((n, HORIZON), 1 / N_ACTIONS), rewards=rewards,
        next_observations=nxt, done=done, mask=np.ones((n, HORIZON), bool), costs={"overheat": costs},
        n_actions=N_ACTIONS,
    )


def save_logged(path: Path, n: int, seed: int) -> str:
    episodes.save_npz(logged_episodes(n, seed), path)
    return str(path)


def true_values(module: torch.nn.Module, temperature: float) -> tuple[float, float]:
    """Exact expected discounted (reward, cost) of the softmax policy over `module`'s outputs."""
    dist = {0: 1.0}
    reward = cost = 0.0
    for t in range(HORIZON):
        temps = sorted(dist)
        with torch.no_grad():
            values = module(torch.tensor([_obs(s, t) for s in temps], dtype=torch.float32))
        probs = constrained.policy_probabilities(values, _softmax(temperature)).numpy()
        nxt: dict[int, float] = {}
        for row, temp in enumerate(temps):
            for a in range(N_ACTIONS):
                p = dist[temp] * float(probs[row, a])
                s2, r, c = _step(temp, a)
                reward += GAMMA**t * p * r
                cost += GAMMA**t * p * c
                nxt[s2] = nxt.get(s2, 0.0) + p
        dist = nxt
    return reward, cost


def _softmax(temperature: float) -> object:
    from policy_server import artifact

    return artifact.Exploration(kind="softmax", temperature=temperature)
