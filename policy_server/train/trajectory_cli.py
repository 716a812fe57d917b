"""`policy-server train --algorithm constrained-cql`: trajectories in, a budget-respecting artifact out.

Kept apart from the bandit path of `cli.py`: it reads trajectories (not decisions), may run as one
rank of a torchrun job, checkpoints and resumes, and reports the held-out trajectory OPE of the
trained policy (WPDIS, a learning-curve figure; the gate is `policy-server ope --trajectories`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policy_server import artifact
from policy_server.errors import PolicyServerError

__all__ = ["run"]

RESULT_VERSION = 1


def _config(args: argparse.Namespace, exploration: artifact.Exploration) -> Any:
    from policy_server.train import constrained

    if len(args.cost) != len(args.cost_budget):
        raise PolicyServerError("give one --cost-budget per --cost, in the same order (--cost heat --cost-budget 1)")
    checkpoint_dir = args.checkpoint_dir
    if checkpoint_dir is None and (args.checkpoint_every or args.resume):
        checkpoint_dir = f"{args.out.rstrip('/')}/checkpoints"
    return constrained.Config(
        gamma=args.gamma, costs=tuple(args.cost), budgets=tuple(args.cost_budget), steps=args.steps,
        batch_size=args.batch_size, hidden=args.hidden, lr=args.learning_rate, alpha=args.cql_alpha,
        lambda_lr=args.lambda_lr, target_every=args.target_every, exploration=exploration, seed=args.seed,
        device=args.device, checkpoint_every=args.checkpoint_every, checkpoint_dir=checkpoint_dir,
        resume=args.resume, tensorboard=args.tensorboard, log_every=args.log_every,
        eval_every=args.eval_every, held_out=args.held_out,
    )


def run(args: argparse.Namespace, exploration: artifact.Exploration,
        upload: Callable[[Path, str], None]) -> dict[str, Any]:
    import numpy as np

    from policy_server.ope import cli as ope_cli
    from policy_server.train import constrained, episodes, lineage, trainer

    options = ope_cli.dataset_options(args) if args.logs else None
    data = episodes.load(args.logs, args.trajectory_arrays, options)
    cfg = _config(args, exploration)
    result = constrained.train(data, cfg)
    mask = np.asarray(data.mask, dtype=bool)
    observations = np.asarray(data.observations, dtype=np.float32)[mask]
    n_actions = episodes.n_actions_of(data)
    rewards = np.where(mask, np.nan_to_num(np.asarray(data.rewards, dtype=np.float64)), 0.0)
    behaviour = float((rewards @ cfg.gamma ** np.arange(mask.shape[1])).mean())
    wpdis = result.held_out.get("ope/held_out_reward_wpdis")
    ope = artifact.OPEReportLineage(uri=f"{args.out.rstrip('/')}/training.json", estimator="wpdis", estimate=wpdis,
                                    baseline_value=behaviour) if wpdis is not None else None
    rows = int(mask.sum())
    dataset = (lineage.dataset_of_log(args.logs, rows) if args.logs
               else lineage.dataset_of_arrays(args.trajectory_arrays, rows))
    record = lineage.build(args, dataset, ope)
    if int(os.environ.get("RANK", "0")) == 0:
        model = trainer.TrainedModel(result.module, "q_values", "constrained-cql", result.steps, result.seconds)
        remote = "://" in args.out and not args.out.startswith("file://")
        with tempfile.TemporaryDirectory(prefix="policy-artifact-") as tmp:
            local = Path(tmp) if remote else Path(args.out.removeprefix("file://"))
            trainer.export_artifact(model, types.SimpleNamespace(observations=observations, n_actions=n_actions),
                                    local, version=args.version, name=args.name, exploration=exploration)
            report = {"kind": "trajectory-training", "gamma": cfg.gamma, "heldOut": result.held_out,
                      "criticEstimates": result.estimates, "lambdas": result.lambdas,
                      "budgets": dict(zip(cfg.costs, cfg.budgets, strict=True))}
            (local / "training.json").write_text(json.dumps(report, indent=2) + "\n")
            lineage.write_into(local, record)
            if remote:
                upload(local, args.out)
    out: dict[str, Any] = {
        "v": RESULT_VERSION, "kind": "train", "artifact": args.out, "version": args.version,
        "algorithm": "constrained-cql", "steps": result.steps, "resumedFrom": result.resumed_from,
        "workers": result.world_size, "seconds": round(result.seconds, 3), "episodes": int(mask.shape[0]),
        "n": int(mask.sum()), "lambdas": result.lambdas, "costs": {c: result.estimates[f"cost/{c}"] for c in cfg.costs},
        "budgets": dict(zip(cfg.costs, cfg.budgets, strict=True)), "lineage": record.wire(),
    }
    if "ope/held_out_reward_wpdis" in result.held_out:
        out["ope"] = {"estimator": "wpdis", "estimate": result.held_out["ope/held_out_reward_wpdis"],
                      "baselineValue": behaviour}
    return out
