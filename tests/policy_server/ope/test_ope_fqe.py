"""Fitted-Q evaluation on a chain MDP whose value is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from policy_server.ope import OPEInputError
from policy_server.ope.fqe import fitted_q_evaluation

N_STATES = 5  # states 0..4; reaching 4 ends the episode with reward 1
GAMMA = 0.9
P_RIGHT = 0.8  # the evaluation policy moves right with probability 0.8, left otherwise


def _step(state: int, action: int) -> tuple[int, float, bool]:
    nxt = min(state + 1, N_STATES - 1) if action == 1 else max(state - 1, 0)
    goal = nxt == N_STATES - 1
    return nxt, float(goal), goal


def _exact_value() -> float:
    """Solve V = sum_a pi(a) (r + gamma (1 - done) V(s')) over the non-terminal states."""
    m = N_STATES - 1
    a_mat, b = np.eye(m), np.zeros(m)
    for s in range(m):
        for action, prob in ((1, P_RIGHT), (0, 1 - P_RIGHT)):
            nxt, r, done = _step(s, action)
            b[s] += prob * r
            if not done:
                a_mat[s, nxt] -= prob * GAMMA
    return float(np.linalg.solve(a_mat, b)[0])


def _one_hot(states) -> np.ndarray:
    return np.eye(N_STATES)[np.asarray(states)]


def _uniform_transitions(copies: int = 50):
    """Every (state, action) pair of the non-terminal states, as a uniform behaviour policy would log them."""
    rows = [(s, a, *_step(s, a)) for s in range(N_STATES - 1) for a in (0, 1) for _ in range(copies)]
    s, a, nxt, r, done = (np.array(col) for col in zip(*rows, strict=True))
    pi = np.tile([1 - P_RIGHT, P_RIGHT], (len(rows), 1))
    return _one_hot(s), a.astype(int), r, _one_hot(nxt), done.astype(float), pi


def test_fqe_recovers_the_chain_value():
    obs, action, reward, next_obs, done, pi_next = _uniform_transitions()
    truth = _exact_value()
    assert 0.3 < truth < 0.9  # a value that a wrong discount or sign would miss
    result = fitted_q_evaluation(
        obs,
        action,
        reward,
        next_obs,
        done,
        pi_next,
        _one_hot([0]),
        np.array([[1 - P_RIGHT, P_RIGHT]]),
        gamma=GAMMA,
        seed=0,
    )
    assert result.value == pytest.approx(truth, abs=0.03)
    assert result.initial_values.shape == (1,)


def test_fqe_depends_on_the_evaluation_policy():
    """A policy that mostly moves left is worth much less: FQE must use the target distribution, not the data's."""
    obs, action, reward, next_obs, done, _ = _uniform_transitions()
    left = np.tile([0.9, 0.1], (obs.shape[0], 1))
    result = fitted_q_evaluation(
        obs, action, reward, next_obs, done, left, _one_hot([0]), np.array([[0.9, 0.1]]), gamma=GAMMA, seed=1
    )
    assert result.value < 0.5 * _exact_value()


def test_fqe_rejects_bad_shapes():
    obs, action, reward, next_obs, done, pi_next = _uniform_transitions(copies=2)
    with pytest.raises(OPEInputError, match="next_obs"):
        fitted_q_evaluation(obs, action, reward, next_obs[:, :2], done, pi_next, obs[:1], pi_next[:1], gamma=GAMMA)
    with pytest.raises(OPEInputError, match="initial_target_dist"):
        fitted_q_evaluation(obs, action, reward, next_obs, done, pi_next, obs[:1], pi_next[:2], gamma=GAMMA)
