"""Trajectory gate timing (issue #19): `ope --trajectories`' library step against the bandit gate on as many steps.

Usage: .venv/bin/python bench/ope_trajectory.py [--quick] [--out bench/results/ope_trajectory.json]

Synthetic episodes (d = 8 features, K = 4 actions, softmax logger and candidate): times
`trajectory_gate.evaluate_trajectories` (PDIS, WPDIS, DR, FQE, bootstrap by trajectory) and, as the peer
measured in the same run, the bandit gate (`ope.evaluate.evaluate`, snips + dr, bootstrap bound) on the
same N x T decisions as single rounds. The model's forward pass is not included in either. `--quick`
runs one small size. Prints and writes JSON: seconds (best of 3) and the ratio trajectory / bandit.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from policy_server.join.trajectories import Trajectories  # noqa: E402
from policy_server.ope import evaluate, trajectory_gate  # noqa: E402
from policy_server.ope.logged import LoggedData  # noqa: E402

D, K = 8, 4


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def synthetic(n: int, horizon: int, seed: int = 0) -> tuple[Trajectories, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, horizon, D)).astype(np.float32)
    w_b, w_e = rng.standard_normal((D, K)) * 0.3, rng.standard_normal((D, K)) * 0.3
    behaviour, target = _softmax(obs @ w_b), _softmax(obs @ w_e)
    u = rng.random((n, horizon, 1))
    actions = (u > behaviour.cumsum(axis=-1)).sum(axis=-1).clip(0, K - 1)
    props = np.take_along_axis(behaviour, actions[..., None], axis=-1)[..., 0]
    rewards = obs[..., 0] * (actions == 1) + 0.1 * rng.standard_normal((n, horizon))
    done = np.zeros((n, horizon), bool)
    done[:, -1] = True
    traj = Trajectories(ids=[str(i) for i in range(n)], observations=obs, actions=actions, propensities=props,
                        behavior_probabilities=behaviour, rewards=rewards, costs={"risk": (actions == 3) * 1.0},
                        next_observations=obs, done=done, mask=np.ones((n, horizon), bool),
                        truncated=np.zeros(n, bool), n_actions=K)
    return traj, target


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(n: int, horizon: int, resamples: int) -> dict:
    traj, target = synthetic(n, horizon)
    settings = trajectory_gate.GateSettings(gamma=0.99, n_resamples=resamples, min_effective_trajectories=1,
                                            agreement_tolerance=1e9)
    traj_s = _best(lambda: trajectory_gate.evaluate_trajectories(traj, target, settings))
    flat = LoggedData(traj.observations.reshape(-1, D), traj.actions.reshape(-1), traj.propensities.reshape(-1),
                      traj.rewards.reshape(-1), traj.behavior_probabilities.reshape(-1, K), K)  # type: ignore[union-attr]
    bandit_s = _best(lambda: evaluate.evaluate(flat, target.reshape(-1, K), baseline=None, bound="bootstrap",
                                               n_resamples=resamples, min_ess=1))
    return {"trajectories": n, "horizon": horizon, "steps": n * horizon, "resamples": resamples,
            "trajectory_gate_s": round(traj_s, 3), "bandit_gate_s": round(bandit_s, 3),
            "ratio": round(traj_s / bandit_s, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ope_trajectory.json"))
    args = p.parse_args()
    sizes = [(500, 10, 100)] if args.quick else [(500, 10, 200), (2000, 20, 200), (5000, 50, 200)]
    results = [run(*size) for size in sizes]
    report = {"machine": platform.node(), "python": platform.python_version(), "quick": args.quick,
              "results": results}
    print(json.dumps(report, indent=2))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
