"""`policy-server train`: learn a policy from the decision log, export an artifact plus its OPE report.

    policy-server train --logs URL --out DIR_OR_URL --version V [--algorithm reward-model|discrete-cql|discrete-bc]
                        [--steps N] [--device cpu|cuda] [--write-result /dev/termination-log]
                        [--reward-window 1h] [--reward-function first] [--default-reward X | --exclude-unrewarded]
    policy-server train --algorithm constrained-cql (--logs URL | --trajectory-arrays FILE.npz) --out ... --version V
                        [--gamma G] [--cost NAME --cost-budget B ...] [--checkpoint-every N] [--checkpoint-dir URL]
                        [--resume] [--tensorboard DIR]
    torchrun --nproc-per-node 2 -m policy_server.cli train --algorithm constrained-cql ...   (data-parallel)

The exported artifact is loaded back through `artifact.load_artifact` (what `serve` does) before
it is reported, and evaluated off-policy against the logged behaviour (`ope.json` next to the
manifest). The compact result (artifact URL, version, OPE estimate vs behaviour) goes to
`--write-result`: in a Job, the termination message the operator reads back. Exit code 2 when
the inputs cannot be trained on (the message says why).

`constrained-cql` trains on trajectories (`policy_server.train.constrained`); it alone checkpoints,
resumes, writes TensorBoard curves and runs data-parallel under torchrun. Under torchrun every rank
trains and writes the same compact result; rank 0 alone writes the artifact and checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policy_server.join import cli as join_cli

if TYPE_CHECKING:
    from policy_server import artifact as artifact_types

ALGORITHMS = ("reward-model", "discrete-cql", "discrete-bc", "constrained-cql")

__all__ = ["add_parser", "main", "run"]

RESULT_VERSION = 1


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a policy on the decision log and export a servable artifact")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--logs", help="decision log URL (directory with decisions/ and rewards/)")
    data.add_argument("--trajectory-arrays", metavar="FILE.npz",
                      help="constrained-cql: trajectories saved by policy_server.train.episodes.save_npz")
    p.add_argument("--out", required=True, help="artifact directory or fsspec URL to write")
    p.add_argument("--version", required=True, help="version of the trained policy (manifest and result)")
    join_cli.add_reward_args(p, window_flag="--reward-window", window_default=None)
    p.add_argument("--name", default="trained-policy")
    p.add_argument("--algorithm", choices=list(ALGORITHMS), default="reward-model")
    p.add_argument("--steps", type=int, default=2000, help="gradient steps")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    p.add_argument("--exploration", choices=["epsilon_greedy", "softmax"], default=None,
                   help="how the served policy explores (keeps propensities > 0 for the next evaluation); "
                   "default epsilon_greedy, softmax for constrained-cql")
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature (0.1; constrained-cql 0.5)")
    p.add_argument("--min-ess", type=float, default=100.0, help="of the OPE report's gate")
    p.add_argument("--bound", choices=["bernstein", "student_t", "bootstrap", "bootstrap_t"], default="bernstein",
                   help="lower bound of the OPE report's gate (as `policy-server ope --bound`)")
    add_constrained_args(p)
    p.add_argument("--write-result", default=None, metavar="PATH",
                   help="also write the compact JSON result here (a Job's /dev/termination-log)")
    return p


def add_constrained_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("constrained-cql (trajectories)")
    g.add_argument("--gamma", type=float, default=0.99, help="discount of returns and of cost budgets")
    g.add_argument("--cost", action="append", default=[], metavar="NAME", help="a budgeted cost (repeatable)")
    g.add_argument("--cost-budget", action="append", type=float, default=[], metavar="B",
                   help="expected discounted cost per episode allowed for the --cost of the same position")
    g.add_argument("--learning-rate", type=float, default=1e-3)
    g.add_argument("--cql-alpha", type=float, default=0.5, help="weight of the conservative (CQL) terms")
    g.add_argument("--lambda-lr", type=float, default=0.1, help="dual ascent step of the Lagrange multipliers")
    g.add_argument("--target-every", type=int, default=100, help="steps between target-network updates")
    g.add_argument("--hidden", type=int, default=64)
    g.add_argument("--held-out", type=float, default=0.1, help="fraction of episodes for the held-out OPE curve")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="checkpoint every N steps (0: never)")
    g.add_argument("--checkpoint-dir", default=None, metavar="URL", help="fsspec URL (default {out}/checkpoints)")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint, if there is one")
    g.add_argument("--tensorboard", default=None, metavar="DIR", help="write learning curves as TensorBoard events")
    g.add_argument("--log-every", type=int, default=50, help="steps between points of the curves")
    g.add_argument("--eval-every", type=int, default=200,
                   help="steps between held-out OPE points of the curves (a multiple of --log-every)")


def _exploration(args: argparse.Namespace) -> artifact_types.Exploration:
    from policy_server import artifact

    constrained = args.algorithm == "constrained-cql"
    kind = args.exploration or ("softmax" if constrained else "epsilon_greedy")
    temperature = args.temperature if args.temperature is not None else (0.5 if constrained else 0.1)
    return artifact.Exploration(kind=kind, epsilon=args.epsilon, temperature=temperature)


def _upload(local: Path, url: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    for path in local.iterdir():
        fs.put_file(str(path), f"{root.rstrip('/')}/{path.name}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from policy_server.ope import cli as ope_cli
    from policy_server.ope import evaluate, logged
    from policy_server.train import lineage, trainer

    torch.set_num_threads(max(1, args.threads))
    if args.algorithm == "constrained-cql":
        from policy_server.train import trajectory_cli

        return trajectory_cli.run(args, _exploration(args), _upload)
    if args.logs is None or args.cost or args.checkpoint_every or args.resume or args.tensorboard:
        raise trainer.TrainError(
            f"{args.algorithm} trains on --logs only, without costs, checkpoints or curves; "
            "use --algorithm constrained-cql for those"
        )
    data = logged.load_logged(args.logs, options=ope_cli.dataset_options(args))
    exploration = _exploration(args)
    model = trainer.train(data, args.algorithm, steps=args.steps, device=args.device, seed=args.seed,
                          batch_size=args.batch_size)
    remote = "://" in args.out and not args.out.startswith("file://")
    with tempfile.TemporaryDirectory(prefix="policy-artifact-") as tmp:
        local = Path(tmp) if remote else Path(args.out.removeprefix("file://"))
        trainer.export_artifact(model, data, local, version=args.version, name=args.name, exploration=exploration)
        candidate, _ = evaluate.policy_probabilities(str(local), data.observations, device=args.device)
        report = evaluate.evaluate(data, candidate, baseline=None, estimators=["snips", "dr"], min_ess=args.min_ess,
                                   bound=args.bound, seed=args.seed)
        report["candidate"] = args.version
        (local / "ope.json").write_text(json.dumps(report, indent=2) + "\n")
        dr = next(e for e in report["estimates"] if e["estimator"] == "dr")
        record = lineage.build(args, lineage.dataset_of_log(args.logs, int(data.actions.shape[0])), _ope_lineage(
            args.out, dr, report))
        lineage.write_into(local, record)
        if remote:
            _upload(local, args.out)
    return {
        "v": RESULT_VERSION,
        "kind": "train",
        "artifact": args.out,
        "version": args.version,
        "algorithm": args.algorithm,
        "steps": args.steps,
        "seconds": round(model.seconds, 3),
        "n": int(data.actions.shape[0]),
        "ope": {"estimator": "dr", "estimate": dr["value"], "lowerBound": dr["lowerBound"],
                "baselineValue": report["loggedValue"], "verdict": report["verdict"], "ess": report["ess"]},
        "lineage": record.wire(),
    }


def _ope_lineage(out: str, dr: dict[str, Any], report: dict[str, Any]) -> artifact_types.OPEReportLineage:
    """The trainer's own OPE report (`ope.json` next to the manifest) as lineage."""
    from policy_server import artifact

    return artifact.OPEReportLineage(uri=f"{out.rstrip('/')}/ope.json", estimator="dr", estimate=dr["value"],
                                     lower_bound=dr["lowerBound"], baseline_value=report["loggedValue"],
                                     verdict=report["verdict"])


def _fits(result: dict[str, Any], limit: int) -> dict[str, Any]:
    """The result within a termination message: without its hyperparameters, then its lineage, if too long
    (the artifact's manifest keeps the whole lineage either way)."""
    for drop in ((), ("hyperparameters",)):
        slim = dict(result)
        if "lineage" in result:
            slim["lineage"] = {k: v for k, v in result["lineage"].items() if k not in drop}
        if len(json.dumps(slim, separators=(",", ":")).encode()) <= limit:
            return slim
    return {k: v for k, v in result.items() if k != "lineage"}


def main(args: argparse.Namespace) -> int:
    from policy_server.errors import PolicyServerError
    from policy_server.ope import evaluate

    try:
        result = run(args)
    except (PolicyServerError, ImportError) as exc:
        print(f"policy-server train: {exc}", file=sys.stderr)
        if args.write_result:
            evaluate.write_result(args.write_result, {"v": RESULT_VERSION, "kind": "train", "error": str(exc)[:3500]})
        return 2
    if args.write_result:
        evaluate.write_result(args.write_result, _fits(result, evaluate.RESULT_LIMIT))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":  # `torchrun -m policy_server.train.cli --logs ...` (the `train` word is implied)
    from policy_server import cli as _cli

    sys.exit(_cli.main(["train", *sys.argv[1:]]))
