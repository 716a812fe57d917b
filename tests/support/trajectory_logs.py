"""Decision logs of episodes written by a real policy server, for the trajectory gate's CLI and operator tests.

The production PolicyServer (on its own loop, tests/support/policy_server.py) serves an artifact with
observation size ``decision_logs.OBS_DIM``; each episode's observations follow the actions taken; rewards
come from ``decision_logs.expected_reward`` plus noise, each with a cost ``risk`` (1 on the last action)
and ``terminal: true`` on the episode's last step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.support import decision_logs
from tests.support.policy_server import running


def serve_episodes(log_dir: Path, artifact: Path, *, episodes: int, steps: int, seed: int = 0) -> str:
    """Serve ``episodes`` episodes of ``steps`` steps with their rewards; returns the log's URL."""
    rng = np.random.default_rng(seed)
    with running(artifact, variant="stable", log_dir=str(log_dir), seed=seed) as srv:  # the exploration draws too
        c = srv.client()
        for episode in range(episodes):
            obs = rng.standard_normal(decision_logs.OBS_DIM).astype(np.float32)
            for step in range(steps):
                answer = c.act(obs.tolist(), context={"episode_id": f"ep{episode}", "step": step})
                action = answer["action"]
                reward = float(decision_logs.expected_reward(obs)[action] + 0.1 * rng.standard_normal())
                body = {"request_id": answer["request_id"], "reward": reward,
                        "costs": {"risk": float(action == decision_logs.N_ACTIONS - 1)}, "terminal": step == steps - 1}
                status, answer = c.post("/v1/reward", body)
                assert status == 202, answer
                obs = (0.5 * obs + 0.3 * rng.standard_normal(obs.shape) + 0.2 * action).astype(np.float32)
    return str(log_dir)
