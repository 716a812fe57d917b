"""Trainers that turn logged decisions into a servable, explorable policy artifact.

Bandit logs (one decision per request, its reward joined later) are learned as a Q-function
q(x, a) ~ E[reward | x, a]; the artifact serves its Q-values with an exploration rule
(epsilon-greedy by default), so the policy server can keep logging exact propensities and the
next offline evaluation has support. Not d3rlpy's `save_policy`: that exports only the greedy
action, which makes propensities 0/1 and every later OPE blind.

- `reward-model`: a small torch MLP regressing the logged reward on the logged action's output
  (the direct method's model, made a policy). Fast; the default for bandit data.
- `discrete-cql`: d3rlpy's DiscreteCQL with every decision a one-step episode; its conservative
  penalty keeps Q low for actions the log rarely took (safer under thin support).
- `discrete-bc`: d3rlpy's DiscreteBC, imitating the logged policy (a baseline, outputs logits).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_server import artifact
from policy_server.errors import PolicyServerError
from policy_server.ope.logged import LoggedData

__all__ = ["ALGORITHMS", "TrainError", "TrainedModel", "export_artifact", "train"]

ALGORITHMS = ("reward-model", "discrete-cql", "discrete-bc")
log = logging.getLogger(__name__)


class TrainError(PolicyServerError):
    """Training cannot run; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class TrainedModel:
    module: torch.nn.Module  # float32 (B, *shape) -> (B, K)
    output: str  # "q_values" | "logits"
    algorithm: str
    steps: int
    seconds: float


class _MLP(torch.nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(obs_dim, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def _train_reward_model(data: LoggedData, steps: int, device: str, seed: int, batch_size: int,
                        hidden: int, lr: float) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = data.actions.shape[0]
    obs = torch.from_numpy(data.observations.reshape(n, -1).astype(np.float32)).to(device)
    act = torch.from_numpy(data.actions).to(device)
    rew = torch.from_numpy(data.rewards.astype(np.float32)).to(device)
    model = _MLP(obs.shape[1], data.n_actions, hidden).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen).to(device)
        pred = model(obs[idx]).gather(1, act[idx, None])[:, 0]
        loss = torch.nn.functional.mse_loss(pred, rew[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return model.eval().cpu()


@contextlib.contextmanager
def _in_temp_dir() -> Iterator[str]:
    """d3rlpy writes `d3rlpy_logs/` into the working directory: keep it out of the caller's."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="policy-train-") as tmp:
        os.chdir(tmp)
        try:
            yield tmp
        finally:
            os.chdir(previous)


class _D3QFunction(torch.nn.Module):
    """d3rlpy's Q-function (encoder + head) as a plain module returning (B, K) Q-values."""

    def __init__(self, q_func: torch.nn.Module) -> None:
        super().__init__()
        self.q_func = q_func

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_func(x).q_value


class _D3Logits(torch.nn.Module):
    def __init__(self, imitator: torch.nn.Module) -> None:
        super().__init__()
        self.imitator = imitator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.imitator(x).logits


def _train_d3rlpy(data: LoggedData, algorithm: str, steps: int, device: str, seed: int,
                  batch_size: int) -> tuple[torch.nn.Module, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import d3rlpy
            from d3rlpy.dataset import MDPDataset
            from d3rlpy.logging import NoopAdapterFactory
        except ImportError as exc:
            raise TrainError(f"{algorithm} needs d3rlpy: pip install 'policy-rollouts[train]' ({exc})") from exc
    with contextlib.redirect_stdout(sys.stderr):  # d3rlpy logs to stdout; ours carries the JSON result
        return _fit_d3rlpy(d3rlpy, MDPDataset, NoopAdapterFactory, data, algorithm, steps, device, seed, batch_size)


def _fit_d3rlpy(d3rlpy: Any, MDPDataset: Any, NoopAdapterFactory: Any, data: LoggedData, algorithm: str,
                steps: int, device: str, seed: int, batch_size: int) -> tuple[torch.nn.Module, str]:
    d3rlpy.seed(seed)
    n = data.actions.shape[0]
    dataset = MDPDataset(
        observations=data.observations.reshape(n, -1).astype(np.float32),
        actions=data.actions.astype(np.int64),
        rewards=data.rewards.astype(np.float32),
        terminals=np.ones(n, dtype=np.float32),  # bandit data: each decision is a one-step episode
        action_size=data.n_actions,
    )
    d3_device = "cuda:0" if device.startswith("cuda") else "cpu:0"
    if algorithm == "discrete-cql":
        algo = d3rlpy.algos.DiscreteCQLConfig(batch_size=batch_size, learning_rate=3e-4,
                                              target_update_interval=max(1, steps // 10)).create(device=d3_device)
    else:
        algo = d3rlpy.algos.DiscreteBCConfig(batch_size=batch_size).create(device=d3_device)
    with _in_temp_dir():
        algo.fit(dataset, n_steps=steps, n_steps_per_epoch=steps, logger_adapter=NoopAdapterFactory(),
                 show_progress=False, save_interval=steps + 1)
    modules = algo.impl.modules
    if algorithm == "discrete-cql":
        return _D3QFunction(modules.q_funcs[0]).eval().cpu(), "q_values"
    return _D3Logits(modules.imitator).eval().cpu(), "logits"


def train(data: LoggedData, algorithm: str = "reward-model", *, steps: int = 2000, device: str = "cpu",
          seed: int = 0, batch_size: int = 256, hidden: int = 64, lr: float = 3e-3) -> TrainedModel:
    if algorithm not in ALGORITHMS:
        raise TrainError(f"unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {device} asked for CUDA but torch sees no GPU; use --device cpu or a GPU node")
    started = time.perf_counter()
    if algorithm == "reward-model":
        module, output = _train_reward_model(data, steps, device, seed, batch_size, hidden, lr), "q_values"
    else:
        module, output = _train_d3rlpy(data, algorithm, steps, device, seed, batch_size)
    return TrainedModel(module, output, algorithm, steps, time.perf_counter() - started)


def export_artifact(model: TrainedModel, data: LoggedData | Any, out_dir: str | Path, *, version: str, name: str,
                    exploration: artifact.Exploration) -> Path:
    """Write a TorchScript artifact (manifest + program) that `policy-server serve` loads.

    `data` needs only `observations` (n, *shape: the example input and drift reference) and `n_actions`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = data.observations.shape[0]
    obs_shape = list(data.observations.shape[1:])
    example = torch.from_numpy(data.observations[: min(n, 8)].astype(np.float32))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation notices; it stays loadable in 2.x
        scripted = torch.jit.trace(model.module, example, check_trace=False)
        torch.jit.save(scripted, buf)
    program = buf.getvalue()
    (out / "policy.pt").write_bytes(program)
    flat = data.observations.reshape(n, -1)
    manifest: dict[str, Any] = {
        "schema_version": artifact.SCHEMA_VERSION,
        "name": name,
        "version": version,
        "format": "torchscript",
        "program": "policy.pt",
        "observation": {"shape": obs_shape, "dtype": "float32",
                        "reference": artifact._reference_stats(flat.astype(np.float64))},
        "action": {"type": "discrete", "n": data.n_actions},
        "output": model.output,
        "exploration": exploration.model_dump(),
        "sha256": hashlib.sha256(program).hexdigest(),
    }
    artifact.Manifest.model_validate(manifest)
    (out / artifact.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
