"""Policies that treat two fairness groups alike or not, and the reward process that shows it.

A request's observation is ``[in_group_b, noise]`` and its context carries ``{"region": "a" | "b"}``.
Action 0 is the right one for everybody: it pays 1 (+ noise), action 1 pays 0. The *fair* candidate
always takes action 0; the *unfair* one takes action 0 for group a and action 1 for group b, so its mean
reward differs between the groups by exactly 1 while the fair one's differs by 0. The *explorer* (uniform
softmax over both actions) is the logging policy of the offline gate's decision log.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.support.policy_server import write_custom_artifact

GROUP_KEY = "region"
GROUPS = ("a", "b")


class GroupLogits(torch.nn.Module):
    """logits(x) = [1 - slope * x0, 0] * scale: slope 2 flips group b's choice to action 1."""

    def __init__(self, slope: float, scale: float = 1.0) -> None:
        super().__init__()
        self.slope, self.scale = slope, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = 1.0 - self.slope * x[:, :1]
        return self.scale * torch.cat([first, torch.zeros_like(first)], dim=1)


def write(out: Path, kind: str, version: str | None = None) -> Path:
    """`fair`, `unfair` (greedy) or `explorer` (uniform over both actions)."""
    module, exploration = {
        "fair": (GroupLogits(0.0), {"kind": "greedy"}),
        "unfair": (GroupLogits(2.0), {"kind": "greedy"}),
        "explorer": (GroupLogits(0.0, scale=0.0), {"kind": "softmax", "temperature": 1.0}),
    }[kind]
    return write_custom_artifact(
        out,
        module,
        {
            "name": f"group-{kind}",
            "version": version or kind,
            "observation": {"shape": [2]},
            "action": {"type": "discrete", "n": 2},
            "output": "logits",
            "exploration": exploration,
        },
    )


def request(group: str, rng: np.random.Generator) -> tuple[list[float], dict[str, str]]:
    """An observation and context of a user in `group`."""
    return [1.0 if group == "b" else 0.0, round(float(rng.uniform(-1, 1)), 3)], {GROUP_KEY: group}


def reward(action: int, rng: np.random.Generator, noise: float = 0.0) -> float:
    return (1.0 if action == 0 else 0.0) + (float(rng.normal(0.0, noise)) if noise else 0.0)
