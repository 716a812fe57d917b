"""constrained-cql on the cooling MDP: train time, what checkpoints cost, 2 torchrun processes vs 1 (CPU).

    .venv/bin/python bench/train_constrained.py [--quick] [--steps 3000] [--out bench/results/train_constrained.json]

Every timing is a ratio against a peer measured in the same run: checkpointing every 100 steps vs
none, and `torchrun --nproc-per-node 2` vs one process on the same global batch (on a 2-core
machine shared with others, the data-parallel ratio shows overhead, not a speed-up). Also records
the true discounted reward and cost (exact, from the MDP) of the unconstrained and the budgeted
policy against the budget, and the time of the held-out trajectory OPE (WPDIS) of one policy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from policy_server import artifact, cli
from policy_server.ope import sequential
from policy_server.train import constrained
from tests.policy_server.train import cooling_mdp as mdp

BUDGET = 1.0


def _train(arrays: str, out: Path, steps: int, *extra: str) -> tuple[float, dict]:
    args = ["train", "--algorithm", "constrained-cql", "--trajectory-arrays", arrays, "--out", str(out),
            "--version", out.name, "--gamma", str(mdp.GAMMA), "--steps", str(steps), "--batch-size", "128",
            "--learning-rate", "2e-3", "--lambda-lr", "0.2", *extra]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        assert cli.main(args) == 0
    return time.perf_counter() - started, json.loads(buf.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and episodes (a smoke run)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    steps, episodes = (600, 300) if args.quick else (args.steps, args.episodes)
    budget = ["--cost", "overheat", "--cost-budget", str(BUDGET)]
    result: dict = {"steps": steps, "episodes": episodes, "budget": BUDGET}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        arrays = mdp.save_logged(root / "episodes.npz", episodes, seed=0)
        for name, extra in (("unconstrained", []), ("constrained", budget)):
            seconds, out = _train(arrays, root / name, steps, *extra)
            loaded = artifact.load_artifact(str(root / name))
            reward, cost = mdp.true_values(loaded.module, loaded.manifest.exploration.temperature)
            result[name] = {"seconds": round(seconds, 2), "trueReward": round(reward, 3), "trueCost": round(cost, 3),
                            "lambdas": out["lambdas"]}
        seconds, _ = _train(arrays, root / "checkpointed", steps, *budget, "--checkpoint-every", "100")
        result["checkpointOverhead"] = round(seconds / result["constrained"]["seconds"], 3)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "policy_server.cli", "train", "--algorithm", "constrained-cql",
                               "--trajectory-arrays", arrays, "--out", str(root / "ddp"), "--version", "ddp",
                               "--gamma", str(mdp.GAMMA), "--steps", str(steps), "--batch-size", "128",
                               "--learning-rate", "2e-3", "--lambda-lr", "0.2", *budget],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        result["torchrun2VsOneProcess"] = round((time.perf_counter() - started) / result["constrained"]["seconds"], 3)
        data = mdp.logged_episodes(episodes, seed=1)  # fresh episodes: what a held-out split holds
        loaded = artifact.load_artifact(str(root / "constrained"))
        started = time.perf_counter()
        with torch.no_grad():
            values = loaded.module(torch.from_numpy(data.observations.reshape(-1, 2)))
        probs = constrained.policy_probabilities(values, loaded.manifest.exploration).numpy()
        target = probs[np.arange(len(probs)), data.actions.reshape(-1)].reshape(data.actions.shape)
        estimates = {name: sequential.wpdis(values_, data.propensities, target, mdp.GAMMA)
                     for name, values_ in (("reward", data.rewards), ("cost", data.costs["overheat"]))}
        result["heldOutOpe"] = {"seconds": round(time.perf_counter() - started, 4), "episodes": episodes,
                                **{k: round(v, 3) for k, v in estimates.items()}}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
