"""The `envelope-proposal-rate` guardrail, end to end: real policy servers with an envelope, a real Prometheus
that scrapes them with the cluster's `rollout`/`namespace` labels, the operator's template, provider and
threshold judge.

The candidate's artifact prefers action 3 (outside the envelope {0, 1, 2}) when the observation's first number
is positive and action 0 otherwise, so the test decides the share of proposals exactly: a quarter for one
rollout (fails `< 0.05`), none for the other (passes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rollout_operator import api
from rollout_operator.guardrails import prometheus as prometheus_provider

from tests.support.live_guardrails import NAMESPACE as LABELLED_NAMESPACE
from tests.support.live_guardrails import LabelledPrometheus, judge_when_scraped
from tests.support.policy_server import Client, running, write_custom_artifact
from tests.support.prometheus import _require_binary

pytestmark = pytest.mark.integration

DECISIONS = 40
ENVELOPE = json.dumps({"actions": [0, 1, 2]})


class ThreeWhenPositive(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros_like(x[:, :1])
        return torch.cat([zeros, zeros - 1.0, zeros - 1.0, 4.0 * x[:, :1]], dim=1)


def rollout(name: str) -> api.PolicyRollout:
    guardrail = {"name": "proposals", "template": "envelope-proposal-rate", "condition": "< 0.05", "failureLimit": 1}
    return api.PolicyRollout.model_validate(
        {
            "metadata": {"name": name, "namespace": LABELLED_NAMESPACE},
            "spec": {
                "policy": {"image": "server:1", "artifact": "s3://p/v2", "version": "v2"},
                "fallback": {"image": "server:1", "artifact": "s3://p/v1", "version": "v1"},
                "steps": [{"setWeight": 10}],
                "envelope": {"actions": [0, 1, 2]},
                "analysis": {"interval": "1m", "guardrails": [guardrail]},
            },
        }
    )


def decide(port: int, positive: int) -> None:
    client = Client(port)
    try:
        for i in range(DECISIONS):
            client.act([1.0 if i < positive else -1.0, 0.0])
    finally:
        client.close()


def judged(metrics: prometheus_provider.PrometheusProvider, name: str) -> api.GuardrailStatus:
    """Judge once every decision is scraped (bounded)."""
    count = f'sum(policy_decisions_total{{rollout="{name}",namespace="{LABELLED_NAMESPACE}",variant="candidate"}})'
    return judge_when_scraped(rollout(name), metrics, "proposals", count, DECISIONS)[0]


def test_envelope_proposal_rate_fails_a_policy_that_proposes_too_often(tmp_path: Path) -> None:
    _require_binary()
    model = write_custom_artifact(
        tmp_path / "m",
        ThreeWhenPositive(),
        {
            "observation": {"shape": [2]},
            "action": {"type": "discrete", "n": 4},
            "output": "logits",
            "exploration": {"kind": "greedy"},
        },
    )
    with (
        running(model, variant="candidate", envelope=ENVELOPE) as eager,
        running(model, variant="candidate", envelope=ENVELOPE) as modest,
        LabelledPrometheus({f"127.0.0.1:{eager.port}": "eager", f"127.0.0.1:{modest.port}": "modest"}) as prom,
    ):
        # the pre-created zeros are scraped first, so increase() sees every decision
        prom.wait_for('count(policy_envelope_proposals_total{proposed="3"} == 0)', lambda v: v == 2, timeout=40)
        decide(eager.port, positive=DECISIONS // 4)
        decide(modest.port, positive=0)
        with prometheus_provider.PrometheusProvider(prom.url, timeout=5.0) as metrics:
            high = judged(metrics, "eager")
            none = judged(metrics, "modest")
    assert high.verdict is api.Verdict.FAIL and high.value == pytest.approx(0.25, rel=1e-6)
    assert none.verdict is api.Verdict.PASS and none.value == 0.0
