"""End to end with the sequential judge and two guardrail templates: promote, roll back, outage.

The real operator process, the real control plane and a real Prometheus, as in
test_scenarios.py (whose `Scenario` helpers and fixtures this module reuses). A feeder thread
plays the two policy servers: every 0.2 s it adds rewards to each variant's cumulative
`policy_reward_sum`/`policy_reward_count` (labelled as the scrape config labels pods) and keeps
`policy_observation_drift_psi_max` at a harmless value, so the `observation-drift` and
`reward-ratio` templates and the judge's sums all come from Prometheus.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from rollout_operator import kube

from tests.operator import test_scenarios as scenarios
from tests.support import crd_validation
from tests.support.cluster import ClusterAPI
from tests.support.kube import policy_rollout_manifest
from tests.support.operator_process import OperatorProcess
from tests.support.prometheus import Exporter, PrometheusServer

pytestmark = pytest.mark.integration

# Reuse the end-to-end fixtures (the operator process, the API client) and helpers, not copies.
operator = scenarios.operator
NAMESPACE = scenarios.NAMESPACE


class RewardFeeder:
    """Cumulative reward counters of both variants, growing in a thread until stopped."""

    def __init__(self, exporter: Exporter, name: str, candidate_mean: float, seed: int = 0) -> None:
        self.exporter, self.name, self.candidate_mean = exporter, name, candidate_mean
        self.rng = np.random.default_rng(seed)
        self.totals = {v: [0.0, 0.0] for v in ("candidate", "stable")}
        self._stop = threading.Event()
        self._publish()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _publish(self) -> None:
        for variant, (total, count) in self.totals.items():
            labels = {"rollout": self.name, "namespace": NAMESPACE, "variant": variant}
            self.exporter.set("policy_reward_sum", total, **labels)
            self.exporter.set("policy_reward_count", count, **labels)
            self.exporter.set("policy_observation_drift_psi_max", 0.02, **labels)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for variant, mean, n in (("candidate", self.candidate_mean, 40), ("stable", 1.0, 160)):
                self.totals[variant][0] += float(self.rng.normal(mean, 0.3, n).sum())
                self.totals[variant][1] += n
            self._publish()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class SequentialScenario(scenarios.Scenario):
    """A rollout judged by the sequential judge, with the observation-drift and reward-ratio templates."""

    def __init__(
        self,
        kube_api: ClusterAPI,
        client: kube.Client,
        exporter: Exporter,
        prometheus: PrometheusServer,
        operator: OperatorProcess,
        steps: list[dict[str, Any]],
        candidate_mean: float,
        **judge: Any,
    ) -> None:
        self.kube_api, self.client, self.exporter, self.operator = kube_api, client, exporter, operator
        self.name = next(scenarios._names)
        self.feeder = RewardFeeder(exporter, self.name, candidate_mean)
        prometheus.wait_for(f'count(policy_reward_count{{rollout="{self.name}"}})', lambda v: v == 2, timeout=30)
        manifest = policy_rollout_manifest(
            name=self.name,
            namespace=NAMESPACE,
            steps=steps,
            analysis={
                "interval": "2s",
                "guardrails": [
                    {"name": "drift", "template": "observation-drift", "condition": "< 0.2", "inconclusiveLimit": 3},
                    {
                        "name": "reward",
                        "template": "reward-ratio",
                        "params": {"window": "10s"},
                        "condition": "> 0.5",
                        "inconclusiveLimit": 3,
                    },
                ],
                "judge": {"kind": "sequential", "alpha": 0.05, "minDetectableEffect": 0.05, **judge},
            },
        )
        assert crd_validation.validate(manifest) == [], "the scenario's manifest must be valid"
        self.client.create(manifest)
        self.steps = len(steps)
        self.weights_seen: list[tuple[str, int]] = []

    def judge(self) -> dict[str, Any]:
        return self.status().get("judge") or {}


@pytest.fixture()
def sequential(
    cluster: ClusterAPI,
    exporter: Exporter,
    prometheus: PrometheusServer,
    operator: OperatorProcess,
) -> Iterator[Any]:
    made: list[SequentialScenario] = []

    def make(steps: list[dict[str, Any]], candidate_mean: float, **judge: Any) -> SequentialScenario:
        s = SequentialScenario(cluster, cluster.client, exporter, prometheus, operator, steps, candidate_mean, **judge)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.feeder.stop()


def test_a_no_worse_candidate_ends_a_long_pause_early_and_is_promoted(sequential: Any) -> None:
    s = sequential(
        [{"setWeight": 20}, {"pause": {"duration": "10m"}}, {"setWeight": 100}], 1.05, allowEarlyAdvance=True
    )
    status = s.wait_phase("Promoted", timeout=90)
    assert status["stableVersion"] == "v2"
    reasons = [e["reason"] for e in status["history"]]
    assert "SequentialNoWorse" in reasons, reasons
    assert s.candidate_weight() == 0
    assert any(e["reason"] == "SequentialNoWorse" for e in s.events())


def test_a_reward_regression_is_rolled_back_by_the_judge_not_the_loose_guardrail(sequential: Any) -> None:
    s = sequential([{"setWeight": 20}, {"pause": {"duration": "10m"}}, {"setWeight": 100}], 0.7)
    status = s.wait_phase("RolledBack", timeout=90)
    assert "reward is worse" in status["message"], status["message"]
    judge = status["judge"]
    assert judge["decision"] == "Harm" and judge["upper"] < 0 and judge["intervals"] >= 3
    assert all(g["verdict"] == "Pass" for g in status["guardrails"]), "the guardrails alone would have passed"
    assert s.candidate_weight() == 0
    assert "Promoted" not in scenarios._phases(status)
    assert any(e["reason"] == "SequentialHarm" for e in s.events())


def test_prometheus_outage_pauses_then_rolls_back_never_promotes(sequential: Any, prometheus: PrometheusServer) -> None:
    s = sequential([{"setWeight": 20}, {"pause": {"duration": "10m"}}, {"setWeight": 100}], 1.05)
    s.wait(lambda st: st.get("canaryWeight") == 20 and (st.get("judge") or {}).get("intervals", 0) >= 1, 40, "live")
    prometheus.stop()
    try:
        status = s.wait_phase("RolledBack", timeout=60)
    finally:
        prometheus.start()
    assert "Promoted" not in scenarios._phases(status)
    assert "Paused" in scenarios._phases(status)
    assert "inconclusive" in status["message"].lower(), status["message"]
    assert s.candidate_weight() == 0
