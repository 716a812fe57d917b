"""A Q-value policy whose critic is off by a known affine map, and the reward process it predicts.

The true value of action ``a`` in state ``s`` is ``(s @ W + B)[a]`` and that is exactly the reward
the test posts for it, so a calibrated artifact (scale 1, offset 0) predicts every reward, and an
artifact with ``offset`` c has a critic error of exactly ``|c|`` per decision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.support.policy_server import write_custom_artifact

W = np.array([[1.0, 0.0, -1.0], [0.5, 1.0, 0.25]], dtype=np.float32)  # obs_dim 2 -> 3 actions
B = np.array([1.0, 2.0, 3.0], dtype=np.float32)


class AffineQ(torch.nn.Module):
    """Q(s) = scale * (s @ W + B) + offset."""

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.from_numpy(W.copy()), requires_grad=False)
        self.b = torch.nn.Parameter(torch.from_numpy(B.copy()), requires_grad=False)
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x @ self.w + self.b) + self.offset


def true_values(observation: list[float]) -> np.ndarray:
    """The value of each action in this state: the reward the test's environment pays for it."""
    return np.asarray(observation, dtype=np.float32) @ W + B


def write_q_artifact(out: Path, *, scale: float = 1.0, offset: float = 0.0, version: str = "q1") -> Path:
    """A greedy ``output: q_values`` artifact over :class:`AffineQ`."""
    return write_custom_artifact(
        out,
        AffineQ(scale, offset),
        {
            "version": version,
            "observation": {"shape": [2]},
            "action": {"type": "discrete", "n": 3},
            "output": "q_values",
            "exploration": {"kind": "greedy"},
        },
    )
