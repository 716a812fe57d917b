"""The demo's policies: the fallback rule, and two candidates trained on its logs.

- fallback: "list price" (level 2) with 40% uniform exploration, so the log supports every
  price and offline evaluation of other policies is possible.
- `constrained` (honest): a reward model trained on conversions *minus a penalty for every
  margin violation* found in the log's costs, i.e. it maximises conversions within the floor.
- `conversion-only` (reward hacking): the same trainer on the proxy reward alone; it learns
  that undercutting the margin floor sells more.

Both are trained on CPU with `policy_server.train.trainer` (the code behind `policy-server
train`) and exported as explorable TorchScript artifacts (5% epsilon-greedy).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

__all__ = ["Candidate", "load_logs", "train_candidates", "write_fallback"]

PENALTY = 2.0  # conversions lost per margin violation: any violation outweighs a sale


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str  # rollout suffix
    version: str
    artifact: Path
    description: str
    seconds: float
    steps: int


def _finish_manifest(path: Path, costs: list[str], names: list[str]) -> None:
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["costs"] = costs
    manifest["observation"]["names"] = names
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def write_fallback(out: Path, env, samples: int = 2000, version: str = "list-price-v1", epsilon: float = 0.4) -> Path:
    """The trusted rule: list price for everyone (exploring 40% of the time)."""
    import torch

    from policy_server import artifact
    from policy_server.ope.logged import LoggedData
    from policy_server.sim import pricing
    from policy_server.train import trainer

    class ListPrice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            scores = torch.zeros(1, len(pricing.PRICE_LEVELS))
            scores[0, pricing.LIST_PRICE_ACTION] = 1.0
            self.register_buffer("scores", scores)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.0 * x[:, :1] + self.scores

    obs = np.stack([env.next_customer() for _ in range(samples)])
    data = LoggedData(obs, np.zeros(samples, np.int64), np.ones(samples), np.zeros(samples), None,
                      len(pricing.PRICE_LEVELS))
    model = trainer.TrainedModel(ListPrice(), "q_values", "rule", 0, 0.0)
    path = trainer.export_artifact(model, data, out, version=version, name="pricing-fallback",
                                   exploration=artifact.Exploration(kind="epsilon_greedy", epsilon=epsilon))
    _finish_manifest(path, [pricing.COST_NAME], list(pricing.FEATURES))
    return path


def load_logs(url: str):  # -> tuple[LoggedData, np.ndarray]
    """The rewarded decisions of the log (as `policy-server ope` reads them) and each one's violation cost."""
    import pyarrow.compute as pc

    from policy_server import decision_log
    from policy_server.ope import logged
    from policy_server.sim import pricing

    data = logged.load_logged(url)
    table = decision_log.join_rewards(url, how="inner")
    served = pc.and_(pc.not_equal(table["variant"], "shadow"), pc.is_valid(table["action_index"]))
    table = table.filter(pc.fill_null(served, False))
    costs = np.array([dict(c or {}).get(pricing.COST_NAME, 0.0) for c in table["costs"].to_pylist()])
    if costs.shape[0] != data.actions.shape[0]:
        raise RuntimeError("decision log changed while it was read; run the demo again")
    return data, costs


def train_candidates(logs: str, out: Path, steps: int, seed: int = 0) -> list[Candidate]:
    import torch

    from policy_server import artifact
    from policy_server.sim import pricing
    from policy_server.train import trainer

    torch.set_num_threads(1)
    data, costs = load_logs(logs)
    exploration = artifact.Exploration(kind="epsilon_greedy", epsilon=0.05)
    plans = [
        ("conversion-only", "conversion-v2", data.rewards,
         "trained on the proxy reward (conversions) alone: it may undercut the margin floor"),
        ("constrained", "constrained-v2", data.rewards - PENALTY * costs,
         f"trained on conversions minus {PENALTY:g} per margin violation: stays above the floor"),
    ]
    result = []
    for name, version, rewards, description in plans:
        model = trainer.train(dataclasses.replace(data, rewards=rewards), "reward-model", steps=steps, seed=seed)
        path = trainer.export_artifact(model, data, out / name, version=version, name=f"pricing-{name}",
                                       exploration=exploration)
        _finish_manifest(path, [pricing.COST_NAME], list(pricing.FEATURES))
        result.append(Candidate(name, version, path, description, model.seconds, steps))
    return result
