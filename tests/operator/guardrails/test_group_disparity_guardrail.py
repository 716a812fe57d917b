"""Done-when of fairness, live: the `group-disparity` guardrail rolls back a candidate that favours one group and
passes a fair one, measured end to end.

Per rollout, two real policy servers (stable serving the fair policy, candidate the fair or the unfair one of
tests/support/fair_policy.py) run with the rollout's group key; the test's users send their region in the request
context, and every other reward is posted to the *other* variant's server (any replica accepts any reward: the
group travels in the signed id). A real Prometheus scrapes all four servers with the `rollout`/`namespace` labels
the cluster's relabelling adds; the operator renders the template, queries it through its Prometheus provider and
the threshold judge decides. A handful of requests from an unlisted region fold into `other`, below min_support:
they must not count. The ratio form and the NaN guards are checked on exporter-published series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rollout_operator import api
from rollout_operator.guardrails import prometheus as prometheus_provider
from rollout_operator.guardrails import templates, templating

from policy_server import attribution, groups
from tests.operator.guardrails.test_templates import Publisher, measure, rollout_named
from tests.support import fair_policy
from tests.support.cluster import ClusterAPI
from tests.support.kube import policy_rollout_manifest
from tests.support.live_guardrails import NAMESPACE, LabelledPrometheus, judge_when_scraped
from tests.support.operator_process import OperatorProcess, poll
from tests.support.policy_server import Client, running
from tests.support.prometheus import Exporter, PrometheusServer, _require_binary

pytestmark = pytest.mark.integration

KEY = attribution.RewardKeys.parse("fair-guardrail-" * 3)
PER_GROUP = 30  # candidate decisions per listed region
STRAYS = 3  # decisions from an unlisted region: `other`, below min_support
GUARDRAIL = {
    "name": "fairness",
    "template": "group-disparity",
    "params": {"metric": "reward", "mode": "difference", "min_support": "10"},
    "condition": "< 0.3",
    "failureLimit": 1,
}


def rollout(name: str) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(
        {
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "policy": {"image": "server:1", "artifact": "s3://p/v2", "version": "v2"},
                "fallback": {"image": "server:1", "artifact": "s3://p/v1", "version": "v1"},
                "fairness": {"groupKey": fair_policy.GROUP_KEY, "groups": list(fair_policy.GROUPS)},
                "steps": [{"setWeight": 50}],
                "analysis": {"interval": "1m", "guardrails": [GUARDRAIL]},
            },
        }
    )


def serve_and_reward(candidate: int, stable: int, rng: np.random.Generator) -> None:
    """Candidate decisions for both regions (and a few strays); rewards alternate between the two servers."""
    deciding, other = Client(candidate), Client(stable)
    try:
        users = [g for g in fair_policy.GROUPS for _ in range(PER_GROUP)] + ["mars"] * STRAYS
        for i, group in enumerate(users):
            obs, context = fair_policy.request(group, rng)
            body = deciding.act(obs, context=context)
            reward = fair_policy.reward(body["action"], rng, noise=0.05)
            receiver = other if i % 2 else deciding
            status, _ = receiver.post("/v1/reward", {"request_id": body["request_id"], "reward": reward})
            assert status == 202
    finally:
        deciding.close()
        other.close()


def judged(metrics: prometheus_provider.PrometheusProvider, name: str) -> tuple[api.GuardrailStatus, bool]:
    """Judge once Prometheus holds every reward (bounded)."""
    expected = len(fair_policy.GROUPS) * PER_GROUP + STRAYS
    count = f'sum(policy_group_reward_count{{rollout="{name}",namespace="{NAMESPACE}",variant="candidate"}})'
    return judge_when_scraped(rollout(name), metrics, "fairness", count, expected, timeout=40)


def test_group_disparity_rolls_back_a_candidate_that_favours_one_group_and_passes_a_fair_one(tmp_path: Path) -> None:
    _require_binary()
    spec = groups.parse(fair_policy.GROUP_KEY, fair_policy.GROUPS)
    fair, unfair = fair_policy.write(tmp_path / "fair", "fair"), fair_policy.write(tmp_path / "unfair", "unfair")
    with (
        running(fair, reward_keys=KEY, variant="stable", groups=spec) as fair_stable,
        running(fair, reward_keys=KEY, variant="candidate", groups=spec) as fair_candidate,
        running(fair, reward_keys=KEY, variant="stable", groups=spec) as unfair_stable,
        running(unfair, reward_keys=KEY, variant="candidate", groups=spec) as unfair_candidate,
        LabelledPrometheus(
            {
                f"127.0.0.1:{fair_stable.port}": "fair-rollout",
                f"127.0.0.1:{fair_candidate.port}": "fair-rollout",
                f"127.0.0.1:{unfair_stable.port}": "unfair-rollout",
                f"127.0.0.1:{unfair_candidate.port}": "unfair-rollout",
            }
        ) as prom,
    ):
        # the pre-initialised zeros are scraped first, so increase() sees every decision and reward
        prom.wait_for('count(policy_group_decisions_total{variant="candidate"} == 0)', lambda v: v == 6, timeout=40)
        rng = np.random.default_rng(21)
        serve_and_reward(fair_candidate.port, fair_stable.port, rng)
        serve_and_reward(unfair_candidate.port, unfair_stable.port, rng)
        with prometheus_provider.PrometheusProvider(prom.url, timeout=5.0) as metrics:
            fine, fine_rolls_back = judged(metrics, "fair-rollout")
            off, off_rolls_back = judged(metrics, "unfair-rollout")
    assert fine.verdict is api.Verdict.PASS and fine.value == pytest.approx(0.0, abs=0.1)
    assert not fine_rolls_back
    assert off.verdict is api.Verdict.FAIL and off.value == pytest.approx(1.0, abs=0.1)
    assert off_rolls_back


def test_ratio_action_rate_and_groups_without_data_or_support_are_left_out(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    pub = Publisher(exporter, prometheus)
    for group, decisions, rewards, total, taken in (
        ("a", 100, 50, 40.0, 80),  # mean reward 0.8, action-1 rate 0.8
        ("b", 200, 100, 20.0, 50),  # mean reward 0.2, action-1 rate 0.25
        ("c", 50, 0, 0.0, 5),  # no rewards yet: 0/0 must not poison the reward forms
        ("other", 5, 5, 50.0, 5),  # mean 10 and rate 1, but under min_support: left out
    ):
        pub.counter("policy_group_decisions", decisions, group=group)
        pub.counter("policy_group_actions", taken, group=group, action="1")
        pub.gauge_counter_labelled("policy_group_reward_sum", total, group=group)
        pub.gauge_counter_labelled("policy_group_reward_count", rewards, group=group)
    pub.counter("policy_group_decisions", 1000, variant="stable", group="a")  # another variant's: not read
    pub.publish()
    query = templates.render_guardrail(rollout_named(pub.name), "group-disparity", {"window": "5m", "mode": "ratio"})
    assert measure(provider, query, 0.8 / 0.2) == pytest.approx(4.0)
    diff = templates.render_guardrail(rollout_named(pub.name), "group-disparity", {"window": "5m"})
    assert measure(provider, diff, 0.6) == pytest.approx(0.6)
    rate = templates.render_guardrail(
        rollout_named(pub.name), "group-disparity", {"window": "5m", "metric": "action-rate", "action": "1"}
    )
    assert measure(provider, rate, 0.8 - 0.1) == pytest.approx(0.7)  # c: 5 / 50 counts for actions
    strict = templates.render_guardrail(
        rollout_named(pub.name), "group-disparity", {"window": "5m", "min_support": "150"}
    )
    assert measure(provider, strict, 0.0) == 0.0  # only b is supported: nothing to compare


def test_a_ratio_with_a_group_at_zero_or_below_is_no_data_not_a_pass(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    """max / min means nothing when a group's value is 0 or below: a negative mean reward made the ratio
    negative, which passed "< 1.5"; now it is no data (inconclusive). The difference form still reads."""
    pub = Publisher(exporter, prometheus)
    for group, total, taken in (("a", 40.0, 80), ("b", -20.0, 0)):  # b: mean reward < 0, never action 1
        pub.counter("policy_group_decisions", 100, group=group)
        pub.counter("policy_group_actions", taken, group=group, action="1")
        pub.gauge_counter_labelled("policy_group_reward_sum", total, group=group)
        pub.gauge_counter_labelled("policy_group_reward_count", 50, group=group)
    pub.publish()
    rate = {"window": "5m", "metric": "action-rate", "action": "1"}
    diff = templates.render_guardrail(rollout_named(pub.name), "group-disparity", rate)
    assert measure(provider, diff, 0.8) == pytest.approx(0.8)  # the series are scraped
    reward_diff = templates.render_guardrail(rollout_named(pub.name), "group-disparity", {"window": "5m"})
    assert (provider.query(reward_diff).value or 0.0) > 0.8  # 0.8 minus a negative mean
    for params in (rate, {"window": "5m"}):
        ratio = templates.render_guardrail(rollout_named(pub.name), "group-disparity", {**params, "mode": "ratio"})
        measurement = provider.query(ratio)
        assert measurement.value is None and measurement.error, (params, measurement)


def test_the_template_checks_its_choices_and_escapes_its_values() -> None:
    r = rollout_named("r")
    cost = templates.render_guardrail(r, "group-disparity", {"metric": "cost", "cost": 'risk"x'})
    assert 'policy_group_cost_sum{rollout="r",namespace="guardrails",variant="candidate",cost="risk\\"x"}' in cost
    assert 'variant="stable"' in templates.render_guardrail(r, "group-disparity", {"variant": "stable"})
    for params, message in (
        ({"metric": "latency"}, "metric 'latency' must be one of"),
        ({"mode": "max"}, "difference or ratio"),
        ({"metric": "cost"}, "needs the parameter cost"),
        ({"metric": "action-rate"}, "needs the parameter action"),
        ({"min_support": "30) or vector(1"}, "outside a string literal"),
    ):
        with pytest.raises(templating.TemplateError, match=message):
            templates.render_guardrail(r, "group-disparity", params)


# ------------------------------------------------------------------ a whole rollout


def test_the_operator_rolls_back_a_candidate_that_favours_one_group(cluster: ClusterAPI, tmp_path: Path) -> None:
    """The real operator process on a real control plane judges the template on a real Prometheus scraping real
    servers (the pods kwok runs serve nothing; these servers play them): Paused at 20 %, users of both regions
    arrive, rewards go to either variant's server, and the rollout goes RolledBack naming the guardrail."""
    _require_binary()
    name, namespace = "fair-live-rollback", "default"
    spec = groups.parse(fair_policy.GROUP_KEY, fair_policy.GROUPS)
    fair, unfair = fair_policy.write(tmp_path / "fair", "fair"), fair_policy.write(tmp_path / "unfair", "unfair")
    guardrail = {**GUARDRAIL, "params": {**GUARDRAIL["params"], "window": "1m"}, "inconclusiveLimit": 100}
    manifest = policy_rollout_manifest(
        name=name,
        namespace=namespace,
        steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}],
        fairness={"groupKey": fair_policy.GROUP_KEY, "groups": list(fair_policy.GROUPS)},
        analysis={"interval": "1s", "guardrails": [guardrail]},
    )
    with (
        running(fair, reward_keys=KEY, variant="stable", groups=spec) as stable,
        running(unfair, reward_keys=KEY, variant="candidate", groups=spec) as candidate,
        LabelledPrometheus(
            {f"127.0.0.1:{stable.port}": name, f"127.0.0.1:{candidate.port}": name}, namespace=namespace
        ) as prom,
    ):
        operator = OperatorProcess(cluster.operator_kubeconfig, prom.url, tmp_path / "operator.log").start()
        try:
            prom.wait_for(f'count(policy_group_decisions_total{{rollout="{name}"}} == 0)', lambda v: v == 6, 40)
            cluster.client.create(manifest)

            def status() -> dict:
                return cluster.client.get(api.API_VERSION, api.KIND, name, namespace).get("status") or {}

            poll(lambda: status().get("phase") == "Paused", 60, what="the pause at 20 %",
                 on_timeout=lambda: f"{status()}\n{operator.log_tail()}")  # fmt: skip
            for variant in ("stable", "candidate"):  # every variant's server gets the group flags
                deployment = cluster.get("deployments", namespace, f"{name}-{variant}")
                assert deployment is not None
                args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
                assert args[-4:] == ["--group-key", "region", "--groups", "a,b"]
            serve_and_reward(candidate.port, stable.port, np.random.default_rng(5))

            def rolled_back() -> dict | None:
                now = status()
                return now if now.get("phase") == "RolledBack" else None

            final = poll(
                rolled_back,
                60,
                what="RolledBack",
                on_timeout=lambda: f"{status()}\n{operator.log_tail()}",
            )
        finally:
            operator.stop()
    judged = next(g for g in final["guardrails"] if g["name"] == "fairness")
    assert judged["verdict"] == "Fail" and judged["value"] == pytest.approx(1.0, abs=0.1)
    assert "fairness" in final["message"] and final["canaryWeight"] == 0
