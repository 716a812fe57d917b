"""Policies with fixed preferences, for envelope tests: the candidate prefers an action the envelope forbids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.support.policy_server import write_custom_artifact

OBS = [0.5, -0.5]


class Fixed(torch.nn.Module):
    """The same logits for every observation."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([logits], dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 0.0 + self.logits


def write_preferring(out: Path, logits: list[float], exploration: dict[str, Any] | None = None, **extra: Any) -> Path:
    """A discrete artifact (observation of 2 numbers, len(logits) actions) with these logits."""
    return write_custom_artifact(
        out,
        Fixed(logits),
        {
            "version": out.name,
            "observation": {"shape": [2]},
            "action": {"type": "discrete", "n": len(logits)},
            "output": "logits",
            "exploration": exploration or {"kind": "greedy"},
            **extra,
        },
    )
