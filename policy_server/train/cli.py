"""`policy-server train`: learn a policy from the decision log, export an artifact plus its OPE report.

    policy-server train --logs URL --out DIR_OR_URL --version V [--algorithm reward-model|discrete-cql|discrete-bc]
                        [--steps N] [--device cpu|cuda] [--write-result /dev/termination-log]
                        [--reward-window 1h] [--reward-function first] [--default-reward X | --exclude-unrewarded]

The exported artifact is loaded back through `artifact.load_artifact` (what `serve` does) before
it is reported, and evaluated off-policy against the logged behaviour (`ope.json` next to the
manifest). The compact result (artifact URL, version, OPE estimate vs behaviour) goes to
`--write-result`: in a Job, the termination message the operator reads back. Exit code 2 when
the inputs cannot be trained on (the message says why).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from policy_server.join import cli as join_cli

__all__ = ["add_parser", "main", "run"]

RESULT_VERSION = 1


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a policy on the decision log and export a servable artifact")
    p.add_argument("--logs", required=True, help="decision log URL (directory with decisions/ and rewards/)")
    p.add_argument("--out", required=True, help="artifact directory or fsspec URL to write")
    p.add_argument("--version", required=True, help="version of the trained policy (manifest and result)")
    join_cli.add_reward_args(p, window_flag="--reward-window", window_default=None)
    p.add_argument("--name", default="trained-policy")
    p.add_argument("--algorithm", choices=["reward-model", "discrete-cql", "discrete-bc"], default="reward-model")
    p.add_argument("--steps", type=int, default=2000, help="gradient steps")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    p.add_argument("--exploration", choices=["epsilon_greedy", "softmax"], default="epsilon_greedy",
                   help="how the served policy explores (keeps propensities > 0 for the next evaluation)")
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--min-ess", type=float, default=100.0, help="of the OPE report's gate")
    p.add_argument("--bound", choices=["bernstein", "student_t", "bootstrap", "bootstrap_t"], default="bernstein",
                   help="lower bound of the OPE report's gate (as `policy-server ope --bound`)")
    p.add_argument("--write-result", default=None, metavar="PATH",
                   help="also write the compact JSON result here (a Job's /dev/termination-log)")
    return p


def _upload(local: Path, url: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    for path in local.iterdir():
        fs.put_file(str(path), f"{root.rstrip('/')}/{path.name}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from policy_server import artifact
    from policy_server.ope import cli as ope_cli
    from policy_server.ope import evaluate, logged
    from policy_server.train import trainer

    torch.set_num_threads(max(1, args.threads))
    data = logged.load_logged(args.logs, options=ope_cli.dataset_options(args))
    exploration = artifact.Exploration(kind=args.exploration, epsilon=args.epsilon, temperature=args.temperature)
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
        if remote:
            _upload(local, args.out)
    dr = next(e for e in report["estimates"] if e["estimator"] == "dr")
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
    }


def main(args: argparse.Namespace) -> int:
    from policy_server.ope import OPEError, evaluate
    from policy_server.train import trainer

    try:
        result = run(args)
    except (OPEError, trainer.TrainError) as exc:
        print(f"policy-server train: {exc}", file=sys.stderr)
        if args.write_result:
            evaluate.write_result(args.write_result, {"v": RESULT_VERSION, "kind": "train", "error": str(exc)[:3500]})
        return 2
    if args.write_result:
        evaluate.write_result(args.write_result, result)
    print(json.dumps(result, indent=2))
    return 0
