"""A 2-state, 2-action MDP of horizon 4 whose values are computed exactly, for the trajectory OPE tests.

Delayed effects: action 1 pays less now and moves to state 1, where action 0 pays most and mostly stays.
``simulate`` logs trajectories under a behaviour policy as :class:`policy_server.ope.trajectory.Inputs`
(one-hot observations) with per-step rewards and a per-step cost (1 in state 1: "time in the hot state").
"""

from __future__ import annotations

import numpy as np

from policy_server.join.trajectories import Trajectories
from policy_server.ope import trajectory as tr

GAMMA = 0.9
H = 4
MU0 = np.array([0.7, 0.3])
P = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.7], [0.6, 0.4]]])  # P[s, a] = next-state distribution
R = np.array([[1.0, 0.0], [3.0, 2.5]])  # mean reward R[s, a]
PI_B = np.array([[0.5, 0.5], [0.7, 0.3]])
PI_T = np.array([[0.2, 0.8], [0.8, 0.2]])


HOT = np.array([[0.0, 0.0], [1.0, 1.0]])  # the cost: 1 per step in state 1


def exact_value(pi: np.ndarray, gamma: float = GAMMA, reward: np.ndarray = R) -> float:
    """V = mu0 . V_0 with V_H = 0 and V_t(s) = sum_a pi(a|s) (R[s, a] + gamma sum_s' P[s, a, s'] V_{t+1}(s'))."""
    v = np.zeros(2)
    for _ in range(H):
        v = (pi * (reward + gamma * P @ v)).sum(axis=1)
    return float(MU0 @ v)


def simulate(n: int, seed: int, behaviour: np.ndarray = PI_B, target: np.ndarray = PI_T
             ) -> tuple[tr.Inputs, np.ndarray]:
    """n trajectories under ``behaviour``, rewards R + uniform noise in [-0.5, 0.5]; ``target`` is pi_e."""
    rng = np.random.default_rng(seed)
    s = np.zeros((n, H), np.int64)
    a = np.zeros((n, H), np.int64)
    r = np.zeros((n, H))
    s[:, 0] = rng.random(n) < MU0[1]
    for t in range(H):
        a[:, t] = rng.random(n) < behaviour[s[:, t], 1]
        r[:, t] = R[s[:, t], a[:, t]] + rng.uniform(-0.5, 0.5, n)
        if t + 1 < H:
            s[:, t + 1] = rng.random(n) < P[s[:, t], a[:, t], 1]
    done = np.zeros((n, H), bool)
    done[:, -1] = True
    x = tr.Inputs(observations=np.eye(2)[s], actions=a, propensities=behaviour[s, a], target=target[s], done=done,
                  mask=np.ones((n, H), bool))
    return x, r




def as_trajectories(x: tr.Inputs, rewards: np.ndarray, *, behaviour: np.ndarray = PI_B) -> Trajectories:
    """The simulated log as the joiner's Trajectories (cost ``hot``: 1 per step spent in state 1)."""
    n = x.mask.shape[0]
    state = x.observations[..., 1].astype(np.int64)
    return Trajectories(
        ids=[f"e{i}" for i in range(n)], observations=x.observations.astype(np.float32), actions=x.actions,
        propensities=x.propensities, behavior_probabilities=behaviour[state], rewards=rewards,
        costs={"hot": state.astype(np.float64)}, next_observations=x.observations.astype(np.float32), done=x.done,
        mask=x.mask, truncated=np.zeros(n, bool), n_actions=2,
    )
