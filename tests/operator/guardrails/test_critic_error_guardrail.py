"""Done-when of critic-error monitoring: the `critic-error` guardrail fires on a policy whose value
head is miscalibrated, and passes a calibrated one, measured end to end.

Two real policy servers serve `output: q_values` artifacts of the same Q function, one exact and
one whose every prediction is `OFFSET` too high (tests/support/critic_policy.py). The test's
environment pays each decision the true value of its served action and posts it to /v1/reward;
a real Prometheus scrapes both servers with the `rollout`/`namespace` labels the scrape
configuration adds in a cluster (docs/guardrails.md); the operator renders the template, queries
it through its Prometheus provider and the threshold judge decides.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from rollout_operator import api, reconciler
from rollout_operator.engine.judges.threshold import ThresholdJudge
from rollout_operator.guardrails import prometheus as prometheus_provider

from policy_server import attribution
from tests.support.critic_policy import true_values, write_q_artifact
from tests.support.policy_server import Client, running
from tests.support.prometheus import PrometheusServer, _require_binary

pytestmark = pytest.mark.integration

NAMESPACE = "critic"
OFFSET = 2.0
DECISIONS = 40
KEY = attribution.RewardKeys.parse("critic-guardrail-" * 3)


class LabelledPrometheus(PrometheusServer):
    """Scrapes each target with its own `rollout` and `namespace` labels, as the cluster's relabelling does."""

    def __init__(self, targets: dict[str, str]) -> None:
        self.rollouts = targets  # target -> rollout name
        super().__init__(list(targets))

    def _write_config(self) -> None:
        static = [{"targets": [t], "labels": {"rollout": r, "namespace": NAMESPACE}} for t, r in self.rollouts.items()]
        config = {
            "global": {
                key: self.scrape_interval for key in ("scrape_interval", "scrape_timeout", "evaluation_interval")
            },
            "scrape_configs": [{"job_name": "policy", "static_configs": static}],
        }
        self.config_path.write_text(json.dumps(config))


def rollout(name: str) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(
        {
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "policy": {"image": "server:1", "artifact": "s3://p/q2", "version": "q2"},
                "fallback": {"image": "server:1", "artifact": "s3://p/q1", "version": "q1"},
                "steps": [{"setWeight": 10}],
                "analysis": {
                    "interval": "1m",
                    "guardrails": [
                        {"name": "critic", "template": "critic-error", "condition": "< 0.5", "failureLimit": 1}
                    ],
                },
            },
        }
    )


def serve_and_reward(port: int, rng: np.random.Generator) -> None:
    """DECISIONS decisions, each rewarded with the true value of the served action."""
    client = Client(port)
    try:
        for _ in range(DECISIONS):
            obs = rng.uniform(-2, 2, size=2).round(3).tolist()
            body = client.act(obs)
            status, _ = client.post(
                "/v1/reward",
                {"request_id": body["request_id"], "reward": float(true_values(obs)[body["action"]])},
            )
            assert status == 202
    finally:
        client.close()


def judged(provider: prometheus_provider.PrometheusProvider, name: str) -> tuple[api.GuardrailStatus, bool]:
    """Measure until the guardrail has a value over every reward (bounded), then judge it once."""
    spec = rollout(name)
    for _ in range(120):
        got = reconciler.measure_guardrails(spec, provider)
        count = provider.query(
            f'sum(policy_value_abs_error_count{{rollout="{name}",namespace="{NAMESPACE}",variant="candidate"}})'
        )
        if got["critic"].value is not None and count.value == DECISIONS:
            got = reconciler.measure_guardrails(spec, provider)
            judgement = ThresholdJudge().judge(spec.spec, spec.status, got, datetime.now(UTC))
            return judgement.guardrails[0], judgement.rollback is not None
        time.sleep(0.25)
    raise AssertionError(f"no critic-error measurement for {name}; last {got}")


def test_critic_error_guardrail_fails_a_miscalibrated_value_head_and_passes_a_calibrated_one(tmp_path: Path) -> None:
    _require_binary()
    with (
        running(write_q_artifact(tmp_path / "ok"), reward_keys=KEY, variant="candidate") as ok,
        running(write_q_artifact(tmp_path / "bad", offset=OFFSET), reward_keys=KEY, variant="candidate") as bad,
        LabelledPrometheus({f"127.0.0.1:{ok.port}": "calibrated", f"127.0.0.1:{bad.port}": "miscalibrated"}) as prom,
    ):
        # the pre-initialised zeros are scraped first, so increase() sees every reward
        prom.wait_for('count(policy_value_abs_error_count{variant="candidate"} == 0)', lambda v: v == 2, timeout=40)
        rng = np.random.default_rng(21)
        serve_and_reward(ok.port, rng)
        serve_and_reward(bad.port, rng)
        with prometheus_provider.PrometheusProvider(prom.url, timeout=5.0) as provider:
            fine, fine_rolls_back = judged(provider, "calibrated")
            off, off_rolls_back = judged(provider, "miscalibrated")
    assert fine.verdict is api.Verdict.PASS and fine.value == pytest.approx(0.0, abs=1e-4)
    assert not fine_rolls_back
    assert off.verdict is api.Verdict.FAIL and off.value == pytest.approx(OFFSET, rel=1e-4)
    assert off_rolls_back
