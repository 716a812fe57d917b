"""Training that scales: two torchrun processes (gloo, CPU) train what one process trains.

Each rank draws the same global batch, computes its half, and DDP averages the gradients, so with
the same seed and global batch the two-process run takes the same steps as one process up to float
summation order; stated tolerance: outputs within 1e-4 after 300 steps. Rank 0 alone writes the
artifact; both ranks report the same result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from policy_server import artifact, cli
from policy_server.train import distributed
from tests.policy_server.train import cooling_mdp as mdp


def _args(arrays: str, out: Path) -> list[str]:
    return ["train", "--algorithm", "constrained-cql", "--trajectory-arrays", arrays, "--out", str(out),
            "--version", "ddp-1", "--gamma", str(mdp.GAMMA), "--cost", "overheat", "--cost-budget", "1.0",
            "--steps", "300", "--batch-size", "64", "--write-result", str(out.parent / f"{out.name}.result")]


def _outputs(model_dir: Path) -> torch.Tensor:
    obs = torch.from_numpy(mdp.logged_episodes(10, seed=3).observations.reshape(-1, 2))
    with torch.no_grad():
        return artifact.load_artifact(str(model_dir)).module(obs)


@pytest.mark.integration
def test_two_torchrun_processes_train_what_one_process_trains(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    arrays = mdp.save_logged(tmp_path / "episodes.npz", 200, seed=0)
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    assert cli.main(_args(arrays, single)) == 0
    capsys.readouterr()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "policy_server.cli", *_args(arrays, parallel)],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "parallel.result").read_text())
    assert result["workers"] == 2 and result["steps"] == 300
    reference = json.loads((tmp_path / "single.result").read_text())
    assert reference["workers"] == 1
    torch.testing.assert_close(_outputs(parallel), _outputs(single), atol=1e-4, rtol=1e-4)
    assert result["lambdas"]["overheat"] == pytest.approx(reference["lambdas"]["overheat"], abs=1e-4)


def test_a_global_batch_is_split_into_contiguous_near_equal_shards() -> None:
    shards = [distributed.World(rank, 3, "cpu").shard(10) for rank in range(3)]
    assert [(s.start, s.stop) for s in shards] == [(0, 4), (4, 7), (7, 10)]
    assert distributed.World(0, 1, "cpu").shard(10) == slice(0, 10)
