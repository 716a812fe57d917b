"""Train time on CPU and the trained policy's OPE estimate vs the behaviour policy (docs/offline-gate-and-training.md).

    .venv/bin/python bench/train_ope.py [--n 10000] [--out bench/results/train_ope.json]

A synthetic decision log with a known linear reward (tests/support/decision_logs.py) is written
with `DecisionLog`; `policy-server train` runs for each algorithm; the result records the train
time, the DR estimate and lower bound from the trainer's own OPE report, the true value of the
exported policy under the known reward function, and the behaviour policy's logged value.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy_server import cli
from policy_server.ope import evaluate as ope_evaluate
from policy_server.ope import logged as ope_logged
from tests.support import decision_logs as dl


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log = dl.write_log(root / "log", dl.behaviour(root / "behaviour"), n=args.n, seed=11)
        logged = ope_logged.load_logged(log.url)
        truth = dl.expected_reward(logged.observations)
        for algorithm, steps in (("reward-model", 2000), ("discrete-cql", 1000)):
            out = io.StringIO()
            started = time.perf_counter()
            with contextlib.redirect_stdout(out):
                code = cli.main(["train", "--logs", log.url, "--out", str(root / algorithm), "--version", algorithm,
                                 "--algorithm", algorithm, "--steps", str(steps)])
            assert code == 0, f"{algorithm} failed"
            result = json.loads(out.getvalue())
            probs, _ = ope_evaluate.policy_probabilities(str(root / algorithm), logged.observations)
            rows.append({
                "algorithm": algorithm, "steps": steps, "n": result["n"], "train_s": result["seconds"],
                "wall_s": round(time.perf_counter() - started, 1), "dr_estimate": result["ope"]["estimate"],
                "dr_lower_bound": result["ope"]["lowerBound"], "true_value": float((probs * truth).sum(1).mean()),
                "behaviour_logged": log.mean_reward,
            })
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
