"""Done-when of critic-error monitoring: the `critic-error` guardrail fires on a policy whose value
head is miscalibrated, and passes a calibrated one, measured end to end.

Two real policy servers serve `output: q_values` artifacts of the same Q function, one exact and
one whose every prediction is `OFFSET` too high (tests/support/critic_policy.py). The test's
environment pays each decision the true value of its served action and posts it to /v1/reward;
a real Prometheus scrapes both servers with the `rollout`/`namespace` labels the scrape
configuration adds in a cluster (docs/guardrails.md); the operator renders the template, queries
it through its Prometheus provider and the threshold judge decides.

The calibration ratio and the trend form are checked on exporter-published series, as
test_templates.py checks the other templates.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from rollout_operator import api
from rollout_operator.guardrails import prometheus as prometheus_provider
from rollout_operator.guardrails import templates

from policy_server import attribution
from tests.operator.guardrails.test_templates import NAMESPACE as TEMPLATES_NAMESPACE
from tests.operator.guardrails.test_templates import Publisher, measure, rollout_named
from tests.support.critic_policy import true_values, write_q_artifact
from tests.support.live_guardrails import NAMESPACE, LabelledPrometheus, judge_when_scraped
from tests.support.policy_server import Client, running
from tests.support.prometheus import Exporter, PrometheusServer, _require_binary

pytestmark = pytest.mark.integration

OFFSET = 2.0
DECISIONS = 40
KEY = attribution.RewardKeys.parse("critic-guardrail-" * 3)


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


def judged(metrics: prometheus_provider.PrometheusProvider, name: str) -> tuple[api.GuardrailStatus, bool]:
    """Judge once Prometheus holds every reward (bounded)."""
    count = f'sum(policy_value_abs_error_count{{rollout="{name}",namespace="{NAMESPACE}",variant="candidate"}})'
    return judge_when_scraped(rollout(name), metrics, "critic", count, DECISIONS, timeout=30)


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
        with prometheus_provider.PrometheusProvider(prom.url, timeout=5.0) as metrics:
            fine, fine_rolls_back = judged(metrics, "calibrated")
            off, off_rolls_back = judged(metrics, "miscalibrated")
    assert fine.verdict is api.Verdict.PASS and fine.value == pytest.approx(0.0, abs=1e-4)
    assert not fine_rolls_back
    assert off.verdict is api.Verdict.FAIL and off.value == pytest.approx(OFFSET, rel=1e-4)
    assert off_rolls_back


def test_critic_calibration_is_mean_predicted_over_mean_realised(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    pub = Publisher(exporter, prometheus)
    for what, total in (("predicted", 150.0), ("realized", 100.0)):
        pub.gauge_counter(f"policy_value_{what}_sum", total, "candidate")
        pub.gauge_counter(f"policy_value_{what}_count", 50.0, "candidate")
    pub.gauge_counter("policy_value_predicted_sum", 10.0, "stable")  # another variant's: not read
    pub.gauge_counter("policy_value_predicted_count", 50.0, "stable")
    pub.publish()
    promql = templates.render_guardrail(rollout_named(pub.name), "critic-calibration", {"window": "5m"})
    assert measure(provider, promql, 1.5) == pytest.approx(1.5)


def test_critic_error_trend_is_the_error_now_minus_the_error_offset_ago(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    """An error of 1 per prediction for 12 s, then 3: the trend over 2 s windows 8 s apart reads 3 - 1."""
    name = f"critic-trend-{time.monotonic_ns()}"
    labels = {"rollout": name, "namespace": TEMPLATES_NAMESPACE, "variant": "candidate"}
    promql = templates.render_guardrail(rollout_named(name), "critic-error-trend", {"window": "2s", "offset": "8s"})
    total, count, switched, last = 0.0, 0.0, None, None
    start = time.monotonic()
    while time.monotonic() - start < 40:  # bounded: 160 steps of 0.25 s at most
        error = 1.0 if switched is None else 3.0
        total, count = total + error, count + 1
        exporter.set("policy_value_abs_error_sum", total, **labels)
        exporter.set("policy_value_abs_error_count", count, **labels)
        if switched is None and time.monotonic() - start >= 12:
            switched = time.monotonic()
        if switched is not None and 3.5 <= time.monotonic() - switched < 7.5:
            last = provider.query(promql)
            if last.value is not None and math.isclose(last.value, 2.0, rel_tol=1e-6):
                return
        time.sleep(0.25)
    raise AssertionError(f"{promql}\n did not read 2; last {last}")
