"""Synthetic decision logs with a known truth, written the way the policy server writes them.

A behaviour policy (a real artifact, run through `Policy.decide` exactly as the server does)
picks actions with exact propensities; rewards come from a known linear function plus noise;
both streams go through `DecisionLog`. Candidate artifacts are TorchScript models whose
Q-values are that same function (good), its negation (bad) or that always pick an action the
behaviour never takes (unsupported), so the right verdicts are known in advance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_server import artifact, policy
from policy_server.decision_log.writer import DecisionLog
from tests.support.policy_server import write_custom_artifact

OBS_DIM = 4
N_ACTIONS = 3
# True expected reward: E[r | x, a] = x @ W[:, a] + B[a]
W = np.array([[1.0, -1.0, 0.0], [0.5, 0.0, -0.5], [0.0, 1.0, -1.0], [-0.5, 0.5, 0.0]], dtype=np.float32)
B = np.array([0.2, 0.0, -0.2], dtype=np.float32)
NOISE = 0.3


def expected_reward(x: np.ndarray) -> np.ndarray:
    return x @ W + B


class _Linear(torch.nn.Module):
    """Q(x) = scale * (x @ W + B) (+ a large bonus on `favour`, if set)."""

    def __init__(self, scale: float, favour: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.from_numpy(W * scale), requires_grad=False)
        bias = B * scale
        if favour >= 0:
            bias = bias.copy()
            bias[favour] += 100.0
        self.b = torch.nn.Parameter(torch.from_numpy(bias), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


def candidate(out: Path, kind: str, version: str = "v2") -> Path:
    """`good` (argmax of the truth), `bad` (argmin), `unsupported` (always action N_ACTIONS - 1); epsilon 0.1."""
    scale, favour = {"good": (1.0, -1), "bad": (-1.0, -1), "unsupported": (1.0, N_ACTIONS - 1)}[kind]
    return write_custom_artifact(out, _Linear(scale, favour), {
        "name": f"candidate-{kind}",
        "version": version,
        "observation": {"shape": [OBS_DIM]},
        "action": {"type": "discrete", "n": N_ACTIONS},
        "output": "q_values",
        "exploration": {"kind": "epsilon_greedy", "epsilon": 0.1},
    })


def behaviour(out: Path, version: str = "v1") -> Path:
    """The logging (fallback) policy: a seeded random MLP with softmax exploration."""
    return artifact.write_example_model(out, n_actions=N_ACTIONS, obs_dim=OBS_DIM, version=version, seed=3,
                                        exploration={"kind": "softmax", "temperature": 3.0})


@dataclasses.dataclass(frozen=True)
class WrittenLog:
    url: str
    n: int
    mean_reward: float
    behaviour: Path


def write_log(directory: Path, behaviour_artifact: Path, n: int = 4000, seed: int = 0,
              mask_last_action: bool = False, cost_per_action: tuple[float, ...] | None = None) -> WrittenLog:
    """Decisions of `behaviour_artifact` on standard-normal observations, rewards from the known function.

    `mask_last_action`: the behaviour never takes the last action (a shield mask), so a candidate
    that does is unsupported by the log. `cost_per_action`: each reward also reports the cost
    `margin_violation`, 1 with that action's probability, else 0.
    """
    rng = np.random.default_rng(seed)
    loaded = artifact.load_artifact(str(behaviour_artifact))
    pol = policy.Policy.from_artifact(loaded)
    obs = rng.standard_normal((n, OBS_DIM)).astype(np.float32)
    masks = None
    if mask_last_action:
        masks = np.ones((n, N_ACTIONS), dtype=bool)
        masks[:, -1] = False
    decided = pol.decide(obs, rng, masks)
    truth = expected_reward(obs)
    rewards = truth[np.arange(n), decided.actions] + NOISE * rng.standard_normal(n)
    url = str(directory)
    with DecisionLog(url, flush_interval_s=0.2) as dlog:
        for i in range(n):
            record: dict[str, Any] = {
                "request_id": f"r{seed}-{i}",
                "time": 1_700_000_000.0 + i,
                "policy_version": loaded.manifest.version,
                "variant": "stable",
                "observation": obs[i].tolist(),
                "action": int(decided.actions[i]),
                "propensity": float(decided.propensities[i]),
                "probabilities": decided.probabilities[i].tolist(),
                "shield_reasons": [],
                "latency_ms": 0.5,
            }
            dlog.log_decision(record)
            reward: dict[str, Any] = {"request_id": record["request_id"], "time": record["time"] + 1.0,
                                      "reward": float(rewards[i])}
            if cost_per_action is not None:
                violated = rng.random() < cost_per_action[int(decided.actions[i])]
                reward["costs"] = {"margin_violation": float(violated)}
            dlog.log_reward(reward)
    return WrittenLog(url=url, n=n, mean_reward=float(rewards.mean()), behaviour=behaviour_artifact)
