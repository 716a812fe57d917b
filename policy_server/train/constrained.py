"""`constrained-cql`: offline RL on trajectories under cost budgets (Lagrangian relaxation, learned multipliers).

A reward critic Q_r and one cost critic Q_c,j per budgeted cost are fitted with discrete CQL on the
logged transitions (discount `gamma`). The policy is the exploration rule the artifact will serve
(softmax by default, or epsilon-greedy) over the Lagrangian values Q_r - sum_j lambda_j Q_c,j, and
both critics evaluate exactly that policy (expected-SARSA targets), so what is trained, what is
budgeted and what is served with exact propensities are one policy. Each multiplier follows projected
dual ascent: lambda_j <- clip(lambda_j + lr * (J_c,j - budget_j), 0, lambda_max), with J_c,j the
policy's expected discounted cost per episode estimated by Q_c,j at the episodes' first states.
A softmax policy makes J_c continuous in lambda, so the multiplier settles where the budget binds
instead of flipping between a deterministic policy above and one below it. The cost critic's CQL
term is mirrored (it pushes unseen actions' costs up, not down): offline, unknown means unsafe.

Our own torch loop rather than d3rlpy's CQL/IQL: d3rlpy has no cost critic or multiplier, its
`fit` loop cannot take a dual step between gradient steps, and its state is not ours to checkpoint
and restore bit-for-bit or to wrap in DistributedDataParallel; the loop is ~100 lines.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from policy_server import artifact
from policy_server.errors import PolicyServerError
from policy_server.train import checkpoint, curves, distributed, episodes

__all__ = ["Config", "LagrangianQ", "Result", "policy_probabilities", "train"]

INITIAL_STATES_PER_DUAL_STEP = 4096  # more episodes than this: each dual step estimates costs on a sample


@dataclass(frozen=True)
class Config:
    gamma: float = 0.99
    costs: tuple[str, ...] = ()
    budgets: tuple[float, ...] = ()  # expected discounted cost per episode, one per cost
    steps: int = 2000
    batch_size: int = 256
    hidden: int = 64
    lr: float = 1e-3
    alpha: float = 0.5  # CQL weight
    lambda_lr: float = 0.05
    lambda_max: float = 100.0
    target_every: int = 100  # hard target-network update period (steps)
    exploration: artifact.Exploration = field(default_factory=lambda: artifact.Exploration(kind="softmax",
                                                                                           temperature=0.5))
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    resume: bool = False
    tensorboard: str | None = None
    log_every: int = 50
    eval_every: int = 200
    held_out: float = 0.1  # fraction of episodes kept for the held-out OPE curve

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed (not steps: a longer run may continue a shorter one)."""
        return {"gamma": self.gamma, "costs": list(self.costs), "budgets": list(self.budgets),
                "batch_size": self.batch_size, "hidden": self.hidden, "lr": self.lr, "alpha": self.alpha,
                "seed": self.seed, "exploration": self.exploration.model_dump()}


@dataclass(frozen=True)
class Result:
    module: torch.nn.Module  # float32 (B, d) -> (B, K) Lagrangian values, served as q_values
    steps: int
    resumed_from: int
    seconds: float
    lambdas: dict[str, float]
    estimates: dict[str, float]  # critic estimates of the final policy: reward and each cost, per episode
    held_out: dict[str, float]  # WPDIS on held-out episodes (empty without any)
    world_size: int


class _MLP(torch.nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(obs_dim, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, n_actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Critics(torch.nn.Module):
    """Q_r and every Q_c,j: (B, d) -> (B, 1 + C, K)."""

    def __init__(self, obs_dim: int, n_actions: int, n_costs: int, hidden: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList(_MLP(obs_dim, n_actions, hidden) for _ in range(1 + n_costs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([h(x) for h in self.heads], dim=1)


class LagrangianQ(torch.nn.Module):
    """The exported program: Q_r - sum_j lambda_j Q_c,j, with the multipliers frozen at the end of training."""

    def __init__(self, critics: _Critics, lambdas: torch.Tensor) -> None:
        super().__init__()
        self.critics = critics
        self.register_buffer("lambdas", lambdas.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _lagrangian(self.critics(x.flatten(1)), self.lambdas)


def _lagrangian(q: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    return q[:, 0] - (lambdas[None, :, None] * q[:, 1:]).sum(dim=1)


def policy_probabilities(values: torch.Tensor, exploration: artifact.Exploration) -> torch.Tensor:
    """pi(a | s) the server will serve for these output values (as `policy_server.policy`, ties aside)."""
    if exploration.kind == "softmax":
        return torch.softmax(values / exploration.temperature, dim=-1)
    greedy = torch.nn.functional.one_hot(values.argmax(dim=-1), values.shape[-1]).to(values.dtype)
    if exploration.kind == "epsilon_greedy":
        return exploration.epsilon / values.shape[-1] + (1.0 - exploration.epsilon) * greedy
    return greedy


class _Run:
    """One training run's state: everything a checkpoint holds."""

    def __init__(self, cfg: Config, data: episodes.Transitions, device: str) -> None:
        torch.manual_seed(cfg.seed)
        self.critics = _Critics(data.obs.shape[1], data.n_actions, len(cfg.costs), cfg.hidden).to(device)
        self.target = copy.deepcopy(self.critics).requires_grad_(False)
        self.optimiser = torch.optim.Adam(self.critics.parameters(), lr=cfg.lr)
        self.lambdas = torch.zeros(len(cfg.costs), device=device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0

    def state(self, cfg: Config) -> dict[str, Any]:
        return {"critics": self.critics.state_dict(), "target": self.target.state_dict(),
                "optimiser": self.optimiser.state_dict(), "lambdas": self.lambdas.cpu(),
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "config": cfg.identity()}

    def restore(self, state: dict[str, Any], cfg: Config, device: str) -> None:
        if state.get("config") != cfg.identity():
            raise PolicyServerError(
                "the newest checkpoint is of a different training configuration; use a new --checkpoint-dir "
                "or the same flags as the run that wrote it"
            )
        self.critics.load_state_dict(state["critics"])
        self.target.load_state_dict(state["target"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.lambdas = state["lambdas"].to(device)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])


def _tensors(data: episodes.Transitions, device: str) -> dict[str, torch.Tensor]:
    arrays = {"obs": data.obs, "actions": data.actions, "rewards": data.rewards, "costs": data.costs,
              "next_obs": data.next_obs, "done": data.done, "initial_obs": data.initial_obs}
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def _update(run: _Run, model: torch.nn.Module, t: dict[str, torch.Tensor], cfg: Config,
            world: distributed.World) -> dict[str, float]:
    """One gradient step on this rank's slice of the global batch, then one dual step on the multipliers."""
    m = t["obs"].shape[0]
    idx = torch.randint(0, m, (cfg.batch_size,), generator=run.generator)[world.shard(cfg.batch_size)]
    idx = idx.to(t["obs"].device)
    obs, act = t["obs"][idx], t["actions"][idx]
    signal = torch.cat([t["rewards"][idx, None], t["costs"][idx]], dim=1)  # (b, 1 + C)
    with torch.no_grad():
        q_next = run.target(t["next_obs"][idx])
        pi_next = policy_probabilities(_lagrangian(q_next, run.lambdas), cfg.exploration)
        v_next = (q_next * pi_next[:, None, :]).sum(dim=-1)
        y = signal + cfg.gamma * (1.0 - t["done"][idx, None]) * v_next
    q = model(obs)
    q_sa = q.gather(2, act[:, None, None].expand(-1, q.shape[1], 1))[..., 0]
    td = torch.nn.functional.mse_loss(q_sa, y)
    cql = (torch.logsumexp(q[:, 0], dim=-1) - q_sa[:, 0]).mean()
    if q.shape[1] > 1:  # mirrored for costs: unseen actions are pushed towards high cost
        cql = cql + (torch.logsumexp(-q[:, 1:], dim=-1) + q_sa[:, 1:]).mean()
    loss = td + cfg.alpha * cql
    run.optimiser.zero_grad(set_to_none=True)
    loss.backward()
    run.optimiser.step()
    run.step += 1
    if run.step % cfg.target_every == 0:
        run.target.load_state_dict(run.critics.state_dict())
    first = t["initial_obs"]
    if first.shape[0] > INITIAL_STATES_PER_DUAL_STEP:  # the same sample on every rank: one generator
        pick = torch.randint(0, first.shape[0], (INITIAL_STATES_PER_DUAL_STEP,), generator=run.generator)
        first = first[pick.to(first.device)]
    estimates = _estimates(run, first, cfg)
    if cfg.costs:
        gap = torch.tensor([estimates[f"cost/{c}"] for c in cfg.costs], device=run.lambdas.device)
        run.lambdas = (run.lambdas + cfg.lambda_lr * (gap - torch.tensor(cfg.budgets, device=gap.device)))
        run.lambdas = run.lambdas.clamp(0.0, cfg.lambda_max)
    return {"loss/td": float(td.detach()), "loss/cql": float(cql.detach()),
            "q/mean_reward": float(q_sa[:, 0].detach().mean()), **estimates}


def _estimates(run: _Run, first: torch.Tensor, cfg: Config) -> dict[str, float]:
    """The current policy's expected discounted reward and costs per episode, by the critics at first states."""
    with torch.no_grad():
        q0 = run.critics(first)
        v0 = (q0 * policy_probabilities(_lagrangian(q0, run.lambdas), cfg.exploration)[:, None, :]).sum(-1).mean(0)
    return {"reward": float(v0[0]), **{f"cost/{c}": float(v0[1 + j]) for j, c in enumerate(cfg.costs)}}


def _held_out(run: _Run, data: episodes.TrajectoryLike | None, cfg: Config, device: str) -> dict[str, float]:
    """WPDIS of the current policy on episodes it was not trained on (a learning curve, not the gate)."""
    if data is None:
        return {}
    from policy_server.ope import sequential

    mask = np.asarray(data.mask, dtype=bool)
    n, horizon = mask.shape
    obs = torch.from_numpy(np.asarray(data.observations, dtype=np.float32).reshape(n * horizon, -1)).to(device)
    with torch.no_grad():
        pi = policy_probabilities(_lagrangian(run.critics(obs), run.lambdas), cfg.exploration).cpu().numpy()
    actions = np.asarray(data.actions).reshape(-1).clip(0, pi.shape[1] - 1)
    target = np.where(mask, pi[np.arange(n * horizon), actions].reshape(n, horizon), 1.0)
    pscore = np.where(mask, np.asarray(data.propensities, dtype=np.float64), 1.0)
    out = {"ope/held_out_reward_wpdis": sequential.wpdis(np.where(mask, data.rewards, 0.0), pscore, target,
                                                         cfg.gamma, mask)}
    for c in cfg.costs:
        cost = np.where(mask, np.nan_to_num(np.asarray(data.costs[c], dtype=np.float64)), 0.0)
        out[f"ope/held_out_cost_{c}_wpdis"] = sequential.wpdis(cost, pscore, target, cfg.gamma, mask)
    return out


def train(data: episodes.TrajectoryLike, cfg: Config) -> Result:
    """Fit the critics and multipliers for `cfg.steps` total steps (resuming from a checkpoint when asked)."""
    if len(cfg.costs) != len(cfg.budgets):
        raise PolicyServerError("give one --cost-budget per --cost (in the same order)")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise PolicyServerError(f"--device {cfg.device} asked for CUDA but torch sees no GPU; use --device cpu")
    started = time.perf_counter()
    world = distributed.setup(cfg.device)
    if cfg.batch_size % world.size:
        raise PolicyServerError(f"--batch-size {cfg.batch_size} must be a multiple of the {world.size} workers")
    try:
        train_part, held_out = episodes.split(data, cfg.held_out, cfg.seed)
        flat = episodes.flatten(train_part, list(cfg.costs))
        t = _tensors(flat, world.device)
        run = _Run(cfg, flat, world.device)
        resumed_from = 0
        if cfg.resume and cfg.checkpoint_dir:
            state = checkpoint.latest(cfg.checkpoint_dir)
            if state is not None:
                run.restore(state, cfg, world.device)
                resumed_from = run.step
        model: torch.nn.Module = run.critics
        if world.size > 1:
            model = torch.nn.parallel.DistributedDataParallel(run.critics)
        writer = curves.CurveWriter(cfg.tensorboard if world.main else None, purge_step=resumed_from)
        try:
            while run.step < cfg.steps:
                scalars = _update(run, model, t, cfg, world)
                if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                    scalars.update({f"lambda/{c}": float(run.lambdas[j]) for j, c in enumerate(cfg.costs)})
                    if run.step % cfg.eval_every == 0 or run.step == cfg.steps:
                        scalars.update(_held_out(run, held_out, cfg, world.device))
                    writer.scalars(run.step, scalars)
                if cfg.checkpoint_every and cfg.checkpoint_dir and run.step % cfg.checkpoint_every == 0 \
                        and run.step < cfg.steps and world.main:
                    checkpoint.save(cfg.checkpoint_dir, run.step, run.state(cfg))
                    writer.sync()
        finally:
            writer.close()
        module = LagrangianQ(copy.deepcopy(run.critics).cpu(), run.lambdas.cpu()).eval()
        return Result(module=module, steps=run.step, resumed_from=resumed_from,
                      seconds=time.perf_counter() - started,
                      lambdas={c: float(run.lambdas[j]) for j, c in enumerate(cfg.costs)},
                      estimates=_estimates(run, t["initial_obs"], cfg),
                      held_out=_held_out(run, held_out, cfg, world.device),
                      world_size=world.size)
    finally:
        distributed.teardown(world)
