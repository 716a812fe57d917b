"""The PolicyRollout the demo applies for each candidate (also what `examples/local-pricing.yaml` shows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DRIFT_MIN_MARGIN", "FAST", "FULL", "MARGIN_BUDGET_INCREASE", "REPLICAS", "Timing", "manifest"]

# The offline gate's budget on margin violations: at most 4 points above the fallback's rate on the same logs.
MARGIN_BUDGET_INCREASE = 0.04
# The third scenario's market shift once the canary starts: supplier costs rise, the margin floor with them
# (the simulator's default minimum margin is 0.10).
DRIFT_MIN_MARGIN = 0.25
# Server processes per variant: more than one, as in production, so a reward often reaches a replica
# (or, after a swap, a process) other than the one that decided.
REPLICAS = 2


class Timing:
    def __init__(self, shadow: str, pauses: tuple[str, ...], interval: str, window: str) -> None:
        self.shadow, self.pauses, self.interval, self.window = shadow, pauses, interval, window


FAST = Timing(shadow="6s", pauses=("9s", "9s", "6s"), interval="3s", window="6s")
FULL = Timing(shadow="30s", pauses=("60s", "60s", "30s"), interval="5s", window="15s")


def manifest(name: str, candidate_artifact: Path, candidate_version: str, fallback_artifact: Path,
             logs: Path, timing: Timing, replicas: int = REPLICAS) -> dict[str, Any]:
    """A rollout with the offline gate (reward and a margin-violation budget), a judged shadow, three canary
    steps, guardrail templates and the judge.

    The last canary step is 80%, not 100%: the reward-ratio guardrail and the judge compare the
    candidate with the stable variant, which needs stable traffic; promotion follows the last step.
    """
    window = {"window": timing.window}
    return {
        "apiVersion": "policy.rollouts.io/v1alpha1",
        "kind": "PolicyRollout",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {
            "policy": {"image": "local", "artifact": str(candidate_artifact), "version": candidate_version,
                       "replicas": replicas},
            "fallback": {"image": "local", "artifact": str(fallback_artifact), "version": "list-price-v1",
                         "replicas": replicas},
            "offlineEvaluation": {
                "dataset": str(logs),
                # Bernstein bounds (the gate's default) hold whatever the weights do but are loose: on the fast
                # demo's 4,500 decisions SNIPS' ratio bound spans a quarter of [0, 1], DR's a few points.
                "estimators": ["dr", "dm"],
                "baseline": "fallback",
                "minLowerBoundRatio": 0.9,
                "confidence": 0.95,
                "minEss": 50,
                "maxUnsupportedMass": 0.05,
                "constraints": [{"cost": "margin_violation", "maxIncrease": MARGIN_BUDGET_INCREASE}],
            },
            "steps": [
                {"shadow": {"duration": timing.shadow}},
                {"setWeight": 20},
                {"pause": {"duration": timing.pauses[0]}},
                {"setWeight": 50},
                {"pause": {"duration": timing.pauses[1]}},
                {"setWeight": 80},
                {"pause": {"duration": timing.pauses[2]}},
            ],
            "analysis": {
                "interval": timing.interval,
                "guardrails": [
                    {"name": "margin-floor", "template": "constraint-violation-rate", "params": window,
                     "condition": "< 0.05", "failureLimit": 2, "inconclusiveLimit": 5},
                    {"name": "conversion", "template": "reward-ratio", "params": window,
                     "condition": "> 0.9", "failureLimit": 2, "inconclusiveLimit": 5},
                    {"name": "errors", "template": "error-rate", "params": window,
                     "condition": "< 0.02", "failureLimit": 2, "inconclusiveLimit": 5},
                ],
                # The shadow is judged on what the candidate would have done, estimated from the stable's live
                # decisions and their delayed rewards (the router's off-policy estimate). 0.15: the honest candidate
                # (true rate ~0.05) had upper bounds of 0.11-0.13 in some runs with 10 % of feedback late; the hacker's
                # ~0.27 is far above either (and the offline gate stops it first).
                "shadowGuardrails": [
                    {"name": "shadow-margin", "template": "shadow-cost", "params": {"cost": "margin_violation"},
                     "condition": "< 0.15", "failureLimit": 2, "inconclusiveLimit": 20},
                ],
                "judge": {"kind": "sequential", "alpha": 0.01, "minDetectableEffect": 0.1, "inconclusiveLimit": 5},
            },
            "progressDeadline": "5m",
        },
    }
