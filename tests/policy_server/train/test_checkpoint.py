"""Training that survives: checkpoints are whole or absent; a SIGKILLed run resumed ends where an unbroken one does.

A training process is killed (SIGKILL, no chance to clean up) once its first checkpoint exists,
restarted with `--resume`, and must finish with the requested total steps and the same weights as
an uninterrupted run of the same seed: every RNG and the optimiser state are in the checkpoint, so
on CPU the two agree to float32 rounding (tolerance 1e-5). Its learning curves continue without a
doubled step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from policy_server import artifact, cli
from policy_server.errors import PolicyServerError
from policy_server.train import checkpoint, constrained, curves
from tests.policy_server.train import cooling_mdp as mdp

STEPS = 2000
EVERY = 100


def _args(arrays: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--algorithm", "constrained-cql", "--trajectory-arrays", arrays, "--out", str(out),
            "--version", "v1", "--gamma", str(mdp.GAMMA), "--cost", "overheat", "--cost-budget", "1.0",
            "--steps", str(STEPS), "--batch-size", "64", "--checkpoint-every", str(EVERY), "--log-every", "20",
            "--eval-every", "200", "--tensorboard", str(out.parent / f"{out.name}-tb"), *extra]


def _outputs(model_dir: Path) -> torch.Tensor:
    obs = torch.from_numpy(mdp.logged_episodes(10, seed=3).observations.reshape(-1, 2))
    with torch.no_grad():
        return artifact.load_artifact(str(model_dir)).module(obs)


def _kill_after_first_checkpoint(args: list[str], ckpt_dir: Path) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "policy_server.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not list(ckpt_dir.glob("ckpt-*.pt")):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.integration
def test_a_killed_run_resumes_to_the_same_steps_and_weights(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    arrays = mdp.save_logged(tmp_path / "episodes.npz", 200, seed=0)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert cli.main(_args(arrays, whole)) == 0
    uninterrupted = json.loads(capsys.readouterr().out)
    assert uninterrupted["steps"] == STEPS and uninterrupted["resumedFrom"] == 0

    assert _kill_after_first_checkpoint(_args(arrays, killed), killed / "checkpoints") == -signal.SIGKILL
    assert not (killed / artifact.MANIFEST_NAME).exists()  # it did not finish
    assert cli.main(_args(arrays, killed, "--resume")) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["steps"] == STEPS and 0 < resumed["resumedFrom"] < STEPS and resumed["resumedFrom"] % EVERY == 0
    torch.testing.assert_close(_outputs(killed), _outputs(whole), atol=1e-5, rtol=1e-5)
    assert resumed["lambdas"]["overheat"] == pytest.approx(uninterrupted["lambdas"]["overheat"], abs=1e-5)

    whole_curves = curves.read_curves(tmp_path / "whole-tb")
    resumed_curves = curves.read_curves(tmp_path / "killed-tb")
    for tag in ("loss/td", "loss/cql", "q/mean_reward", "lambda/overheat", "cost/overheat",
                "ope/held_out_reward_wpdis", "ope/held_out_cost_overheat_wpdis"):
        steps = [s for s, _ in resumed_curves[tag]]
        assert steps == [s for s, _ in whole_curves[tag]] and steps[-1] == STEPS and len(set(steps)) == len(steps)
        np.testing.assert_allclose([v for _, v in resumed_curves[tag]], [v for _, v in whole_curves[tag]],
                                   atol=1e-4, rtol=1e-4)


def test_checkpoints_are_whole_and_the_newest_wins(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'ckpt'}"
    assert checkpoint.latest(url) is None
    for step in (10, 20, 30):
        checkpoint.save(url, step, {"weights": torch.full((2,), float(step))})
    (tmp_path / "ckpt" / "ckpt-000000040.pt.tmp").write_bytes(b"half a checkpoint, its writer was killed")
    state = checkpoint.latest(url)
    assert state is not None and state["step"] == 30 and float(state["weights"][0]) == 30.0
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt")) == ["ckpt-000000020.pt", "ckpt-000000030.pt"]


def test_resuming_another_configuration_is_refused(tmp_path: Path) -> None:
    data = mdp.logged_episodes(20, seed=0)
    ckpt = str(tmp_path / "ckpt")
    base = {"gamma": mdp.GAMMA, "batch_size": 32, "checkpoint_every": 5, "checkpoint_dir": ckpt, "resume": True}
    constrained.train(data, constrained.Config(steps=10, **base))
    longer = constrained.train(data, constrained.Config(steps=12, **base))
    assert longer.resumed_from == 5 and longer.steps == 12  # a longer run may continue a shorter one
    with pytest.raises(PolicyServerError, match="different training configuration"):
        constrained.train(data, constrained.Config(steps=12, **{**base, "gamma": 0.5}))


def test_a_checkpoint_that_is_not_plain_tensors_is_refused_not_run(tmp_path: Path) -> None:
    import pickle

    (tmp_path / "ckpt").mkdir()
    planted = pickle.dumps(print, protocol=2)  # a full unpickle would call code
    (tmp_path / "ckpt" / "ckpt-000000010.pt").write_bytes(planted)
    with pytest.raises(checkpoint.CheckpointError) as refused:
        checkpoint.latest(str(tmp_path / "ckpt"))
    message = str(refused.value)
    assert message.startswith("cannot read the newest checkpoint") and message.endswith("delete it to restart")
    assert "\n" not in message
