"""Episode estimators: a hand-computed example, the DR recursion, unbiasedness on a tiny MDP with an exact value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policy_server.ope import OPEInputError, sequential

GAMMA = 0.9

# Two episodes, horizon 3; the second ends after 2 steps. Its third step holds junk that the mask must neutralise.
PSCORE = np.array([[0.5, 0.5, 0.25], [0.8, 0.5, 0.3]])
TARGET = np.array([[1.0, 0.5, 0.5], [0.4, 1.0, 0.9]])
REWARD = np.array([[1.0, 0.0, 2.0], [3.0, 1.0, 5.0]])
MASK = np.array([[1, 1, 1], [1, 1, 0]], dtype=bool)


def test_pdis_on_a_hand_computed_example():
    # episode 1: ratios 2, 1, 2 -> cumulative 2, 2, 4 -> 2*1 + 0.9*2*0 + 0.81*4*2 = 8.48
    # episode 2: ratios 0.5, 2 -> cumulative 0.5, 1 -> 0.5*3 + 0.9*1*1 = 2.4
    per_episode = sequential.pdis_episodes(REWARD, PSCORE, TARGET, GAMMA, mask=MASK)
    np.testing.assert_allclose(per_episode, [8.48, 2.4], rtol=1e-12)
    assert sequential.pdis(REWARD, PSCORE, TARGET, GAMMA, mask=MASK) == pytest.approx(5.44, rel=1e-12)


def test_wpdis_on_a_hand_computed_example():
    # step 0: (2*1 + 0.5*3) / (2 + 0.5) = 1.4; step 1: (2*0 + 1*1) / (2 + 1) = 1/3;
    # step 2: (4*2 + 1*0) / (4 + 1) = 1.6 (the finished episode keeps its weight 1 and adds reward 0)
    expected = 1.4 + GAMMA / 3 + GAMMA**2 * 1.6
    assert sequential.wpdis(REWARD, PSCORE, TARGET, GAMMA, mask=MASK) == pytest.approx(expected, rel=1e-12)


def test_padding_and_mask_are_equivalent():
    padded_p, padded_t, padded_r = PSCORE.copy(), TARGET.copy(), REWARD.copy()
    padded_p[1, 2] = padded_t[1, 2] = 1.0
    padded_r[1, 2] = 0.0
    for fn in (sequential.pdis, sequential.wpdis):
        assert fn(padded_r, padded_p, padded_t, GAMMA) == pytest.approx(fn(REWARD, PSCORE, TARGET, GAMMA, mask=MASK))


def _dr_by_recursion(reward, pscore, target, q_hat, v_hat, gamma):
    """Jiang & Li's backward recursion V_DR(t) = v_t + rho_t (r_t + gamma V_DR(t+1) - q_t), V_DR(H) = 0."""
    values = []
    for i in range(reward.shape[0]):
        v = 0.0
        for t in reversed(range(reward.shape[1])):
            rho = target[i, t] / pscore[i, t]
            v = v_hat[i, t] + rho * (reward[i, t] + gamma * v - q_hat[i, t])
        values.append(v)
    return np.array(values)


def test_dr_equals_the_jiang_li_recursion():
    rng = np.random.default_rng(0)
    shape = (20, 6)
    pscore = rng.uniform(0.2, 1.0, shape)
    target = rng.uniform(0.0, 1.0, shape)
    reward = rng.normal(size=shape)
    q_hat = rng.normal(size=shape)
    v_hat = rng.normal(size=shape)
    got = sequential.dr_sequential_episodes(reward, pscore, target, q_hat, v_hat, GAMMA)
    np.testing.assert_allclose(got, _dr_by_recursion(reward, pscore, target, q_hat, v_hat, GAMMA), rtol=1e-10)
    zeros = np.zeros(shape)
    assert sequential.dr_sequential(reward, pscore, target, zeros, zeros, GAMMA) == pytest.approx(
        sequential.pdis(reward, pscore, target, GAMMA), rel=1e-12
    )


# A two-state MDP: action 1 moves to state 1 with probability 0.8, action 0 to state 0 with probability 0.8.
# Reward: 1 in state 1, plus 0.2 for action 0, plus N(0, 0.1) noise. Start in state 0; horizon 5.
HORIZON = 5
P_TO_1 = np.array([[0.2, 0.8], [0.2, 0.8]])  # [state, action] -> P(next state = 1)
R_MEAN = np.array([[0.2, 0.0], [1.2, 1.0]])  # [state, action]
PI_E = np.array([0.3, 0.7])  # evaluation policy: P(action 0), P(action 1) in every state
PI_B = np.array([0.5, 0.5])


def _exact_q():
    q = np.zeros((HORIZON + 1, 2, 2))
    for t in reversed(range(HORIZON)):
        v_next = q[t + 1] @ PI_E
        q[t] = R_MEAN + GAMMA * ((1 - P_TO_1) * v_next[0] + P_TO_1 * v_next[1])
    return q[:HORIZON]


def _rollouts(n, rng):
    state = np.zeros(n, dtype=int)
    arrays = {name: np.zeros((n, HORIZON)) for name in ("reward", "pscore", "target", "q", "v")}
    q = _exact_q()
    for t in range(HORIZON):
        action = (rng.random(n) < PI_B[1]).astype(int)
        arrays["reward"][:, t] = R_MEAN[state, action] + rng.normal(0, 0.1, n)
        arrays["pscore"][:, t] = PI_B[action]
        arrays["target"][:, t] = PI_E[action]
        arrays["q"][:, t] = q[t][state, action]
        arrays["v"][:, t] = q[t][state] @ PI_E
        state = (rng.random(n) < P_TO_1[state, action]).astype(int)
    return arrays


def test_pdis_and_dr_are_unbiased_and_dr_has_lower_variance():
    truth = float(_exact_q()[0][0] @ PI_E)
    a = _rollouts(20_000, np.random.default_rng(1))
    pdis = sequential.pdis_episodes(a["reward"], a["pscore"], a["target"], GAMMA)
    dr = sequential.dr_sequential_episodes(a["reward"], a["pscore"], a["target"], a["q"], a["v"], GAMMA)
    for values in (pdis, dr):
        assert abs(values.mean() - truth) < 4 * values.std(ddof=1) / math.sqrt(values.size)
    assert dr.std() < 0.5 * pdis.std()
    assert sequential.wpdis(a["reward"], a["pscore"], a["target"], GAMMA) == pytest.approx(truth, rel=0.03)


def test_diagnostics_of_trajectory_weights_and_support():
    weights = np.prod(np.where(MASK, TARGET / PSCORE, 1.0), axis=1)  # 4 and 1
    diag = sequential.diagnostics(PSCORE, TARGET, mask=MASK)
    assert diag.ess == pytest.approx(weights.sum() ** 2 / (weights**2).sum())
    assert diag.max_weight == pytest.approx(4.0)
    assert diag.unsupported_mass is None
    behavior = np.tile([0.0, 1.0], (2, 3, 1))
    target = np.tile([0.25, 0.75], (2, 3, 1))
    assert sequential.diagnostics(PSCORE, TARGET, MASK, target, behavior).unsupported_mass == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pscore": np.array([[0.0, 0.5, 0.25], [0.8, 0.5, 0.3]])}, "pscore"),
        ({"target_prob": np.ones((2, 2))}, "shape"),
        ({"gamma": 1.5}, "gamma"),
        ({"mask": np.ones((3, 3))}, "mask"),
    ],
)
def test_bad_episode_inputs(kwargs, message):
    args = {"reward": REWARD, "pscore": PSCORE, "target_prob": TARGET, "gamma": GAMMA, "mask": MASK}
    args.update(kwargs)
    with pytest.raises(OPEInputError, match=message):
        sequential.pdis(**args)
