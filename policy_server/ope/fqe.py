"""Fitted-Q evaluation (Le, Voloshin & Yue 2019) for long horizons, where importance weights explode.

FQE regresses Q_{k+1}(s, a) onto r + gamma * (1 - done) * sum_a' pi_e(a' | s') Q_k(s', a') over logged transitions,
then reports the evaluation policy's value at the initial states. It needs no propensities (so no weight blow-up)
but inherits the function approximator's bias. The Q-function is a small MLP from observations to one value per
action (the usual discrete-action form of Q over (obs, action)), warm-started from the previous iteration.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from policy_server.ope import _checks

__all__ = ["FQEResult", "fitted_q_evaluation"]


@dataclasses.dataclass(frozen=True)
class FQEResult:
    """value: the estimate; initial_values: V(s0) per initial state; q_function: the fitted obs -> Q(., a) net."""

    value: float
    initial_values: np.ndarray
    q_function: nn.Module
    final_loss: float


def _probabilities(x: object, name: str, rows: int, n_actions: int) -> torch.Tensor:
    arr = _checks.as_float_array(x, name, 2)
    if arr.shape != (rows, n_actions):
        raise _checks.OPEInputError(f"`{name}` must have shape ({rows}, {n_actions}), got {arr.shape}")
    if arr.min() < 0 or not np.allclose(arr.sum(axis=1), 1.0):
        raise _checks.OPEInputError(f"`{name}` rows must be the evaluation policy's action probabilities (sum to 1)")
    return torch.as_tensor(arr, dtype=torch.float32)


def fitted_q_evaluation(
    obs: object,
    action: object,
    reward: object,
    next_obs: object,
    done: object,
    next_target_dist: object,
    initial_obs: object,
    initial_target_dist: object,
    *,
    gamma: float,
    n_iterations: int = 60,
    steps_per_iteration: int = 50,
    hidden: int = 64,
    lr: float = 3e-3,
    batch_size: int = 4096,
    seed: int = 0,
    num_threads: int | None = 1,
) -> FQEResult:
    """Estimate the evaluation policy's discounted value from logged transitions.

    Shapes: obs/next_obs (n, obs_dim); action, reward, done (n,); next_target_dist (n, n_actions) holds
    pi_e(. | next_obs); initial_obs (m, obs_dim) and initial_target_dist (m, n_actions) describe where episodes start.
    `num_threads` caps torch's intra-op threads while fitting (restored afterwards): a net this small gains nothing
    from threads and slows down by an order of magnitude when they compete with other processes for the cores.
    """
    gamma = _checks.check_gamma(gamma)
    s = _checks.as_float_array(obs, "obs", 2)
    n, obs_dim = s.shape
    s_next = _checks.as_float_array(next_obs, "next_obs", 2)
    if s_next.shape != s.shape:
        raise _checks.OPEInputError(f"`next_obs` must have the shape of `obs` {s.shape}, got {s_next.shape}")
    a = np.asarray(action)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise _checks.OPEInputError(f"`action` must be {n} integer action indices, got shape {a.shape} ({a.dtype})")
    n_actions = np.asarray(next_target_dist).shape[-1]
    if a.min() < 0 or a.max() >= n_actions:
        raise _checks.OPEInputError(f"`action` values must lie in [0, {n_actions}) (columns of next_target_dist)")
    r = _checks.as_float_array(reward, "reward", 1)
    d = _checks.as_float_array(done, "done", 1)
    if r.shape != (n,) or d.shape != (n,):
        raise _checks.OPEInputError(f"`reward` and `done` must have shape ({n},), got {r.shape} and {d.shape}")
    pi_next = _probabilities(next_target_dist, "next_target_dist", n, n_actions)
    s0 = _checks.as_float_array(initial_obs, "initial_obs", 2)
    if s0.shape[1] != obs_dim:
        raise _checks.OPEInputError(f"`initial_obs` must have {obs_dim} columns like `obs`, got {s0.shape}")
    pi0 = _probabilities(initial_target_dist, "initial_target_dist", s0.shape[0], n_actions)

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        q_net, loss_value = _fit(
            s, a, r, d, s_next, pi_next, gamma, n_iterations, steps_per_iteration, hidden, lr, batch_size, seed
        )
    finally:
        torch.set_num_threads(previous_threads)
    with torch.no_grad():
        v0 = (q_net(torch.as_tensor(s0, dtype=torch.float32)) * pi0).sum(dim=1).double().numpy()
    return FQEResult(value=float(v0.mean()), initial_values=v0, q_function=q_net, final_loss=loss_value)


def _fit(
    s: np.ndarray,
    a: np.ndarray,
    r: np.ndarray,
    d: np.ndarray,
    s_next: np.ndarray,
    pi_next: torch.Tensor,
    gamma: float,
    n_iterations: int,
    steps_per_iteration: int,
    hidden: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> tuple[nn.Module, float]:
    """The FQE loop: freeze targets from the current Q, regress onto them, repeat (warm-started)."""
    n, obs_dim = s.shape
    n_actions = pi_next.shape[1]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    q_net = nn.Sequential(
        nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_actions)
    )
    optimiser = torch.optim.Adam(q_net.parameters(), lr=lr)
    s_t = torch.as_tensor(s, dtype=torch.float32)
    s_next_t = torch.as_tensor(s_next, dtype=torch.float32)
    a_t = torch.as_tensor(a, dtype=torch.long)
    r_t = torch.as_tensor(r, dtype=torch.float32)
    not_done = 1.0 - torch.as_tensor(d, dtype=torch.float32)
    loss_value = float("nan")
    for _ in range(n_iterations):
        with torch.no_grad():
            target = r_t + gamma * not_done * (q_net(s_next_t) * pi_next).sum(dim=1)
        for _ in range(steps_per_iteration):
            rows = torch.randint(0, n, (min(batch_size, n),), generator=gen) if n > batch_size else slice(None)
            pred = q_net(s_t[rows]).gather(1, a_t[rows].unsqueeze(1)).squeeze(1)
            loss = torch.mean((pred - target[rows]) ** 2)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            loss_value = float(loss.detach())
    return q_net, loss_value
