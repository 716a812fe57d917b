"""The guardrail library against a real Prometheus holding known data.

For each template, an exporter publishes the series the policy server (or router) would, with
the `rollout`/`namespace` labels the scrape configuration adds; all counters start at 0, are
scraped, then jump to known totals in one go. `increase()` extrapolates every series of one
target by the same factor, so ratios (and histogram quantiles) come out exactly as computed
here by hand. The rendered PromQL goes through `PrometheusProvider`, as the operator sends it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

import prometheus_client
import pytest
from rollout_operator import api, reconciler
from rollout_operator.engine import judges
from rollout_operator.guardrails import prometheus as prometheus_provider
from rollout_operator.guardrails import templates, templating

from tests.support.prometheus import Exporter, PrometheusServer

pytestmark = pytest.mark.integration

NAMESPACE = "guardrails"
_names = (f"tpl-{i}" for i in itertools.count())


def rollout_named(name: str, guardrails: list[dict[str, object]] | None = None, **judge: object) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(
        {
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "policy": {"image": "server:1", "artifact": "s3://p/v2", "version": "v2"},
                "fallback": {"image": "server:1", "artifact": "s3://p/v1", "version": "v1"},
                "steps": [{"setWeight": 10}],
                "analysis": {"interval": "1m", "guardrails": guardrails or [], "judge": judge or {}},
                "allowPromotionWithoutAnalysis": True,  # only its queries are rendered here
            },
        }
    )


class Publisher:
    """Creates series at 0, waits for Prometheus to scrape them, then applies the known totals at once."""

    def __init__(self, exporter: Exporter, prometheus: PrometheusServer) -> None:
        self.exporter, self.prometheus = exporter, prometheus
        self.name = next(_names)
        self._later: list[Callable[[], None]] = []

    def labels(self, variant: str, **extra: str) -> dict[str, str]:
        return {"rollout": self.name, "namespace": NAMESPACE, "variant": variant, **extra}

    def counter(self, metric: str, total: float, variant: str = "candidate", **extra: str) -> None:
        labels = self.labels(variant, **extra)
        self.exporter.inc(metric, 0, **labels)
        self._later.append(lambda: self.exporter.inc(metric, total, **labels))

    def gauge_counter(self, metric: str, total: float, variant: str) -> None:
        """A Summary's `_sum`/`_count` as the policy server exposes them (no `_total` suffix)."""
        labels = self.labels(variant)
        self.exporter.set(metric, 0, **labels)
        self._later.append(lambda: self.exporter.set(metric, total, **labels))

    def gauge_counter_labelled(self, metric: str, total: float, variant: str = "candidate", **extra: str) -> None:
        """A labelled Summary's `_sum`/`_count` (e.g. by `group`), as the policy server exposes them."""
        labels = self.labels(variant, **extra)
        self.exporter.set(metric, 0, **labels)
        self._later.append(lambda: self.exporter.set(metric, total, **labels))

    def publish(self) -> None:
        self.prometheus.wait_for(f'count({{rollout="{self.name}"}})', lambda v: v > 0, timeout=40)
        for apply in self._later:
            apply()


def measure(provider: prometheus_provider.PrometheusProvider, promql: str, expected: float) -> float:
    """Poll the provider until the template gives `expected` (scrapes land within ~2 s)."""
    last = None
    for _ in range(160):
        measurement = provider.query(promql)
        last = measurement
        if measurement.value is not None and math.isclose(measurement.value, expected, rel_tol=1e-6, abs_tol=1e-9):
            return measurement.value
        time.sleep(0.25)
    raise AssertionError(f"{promql}\n did not reach {expected}; last {last}")


def test_reward_ratio(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    pub = Publisher(exporter, prometheus)
    pub.gauge_counter("policy_reward_sum", 90.0, "candidate")
    pub.gauge_counter("policy_reward_count", 100.0, "candidate")
    pub.gauge_counter("policy_reward_sum", 2000.0, "stable")
    pub.gauge_counter("policy_reward_count", 2000.0, "stable")
    pub.publish()
    promql = templates.render_guardrail(rollout_named(pub.name), "reward-ratio", {"window": "5m"})
    assert measure(provider, promql, 0.9 / 1.0) == pytest.approx(0.9)


def test_ratios_of_rewards_have_no_data_when_the_denominator_is_not_positive(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    """Mean rewards -1.8 (candidate) and -0.9 (stable): -1.8 / -0.9 = 2 would pass "> 0.95" for a candidate twice
    as bad, and a negative realised mean would pass critic-calibration's "< 1.25". Both are no data instead."""
    pub = Publisher(exporter, prometheus)
    for variant, total, count in (("candidate", -180.0, 100.0), ("stable", -1800.0, 2000.0)):
        pub.gauge_counter("policy_reward_sum", total, variant)
        pub.gauge_counter("policy_reward_count", count, variant)
    pub.gauge_counter("policy_value_predicted_sum", 50.0, "candidate")
    pub.gauge_counter("policy_value_predicted_count", 50.0, "candidate")
    pub.gauge_counter("policy_value_realized_sum", -50.0, "candidate")
    pub.gauge_counter("policy_value_realized_count", 50.0, "candidate")
    pub.publish()
    # the totals were applied together: once one increase shows, all are scraped
    prometheus.wait_for(f'sum(increase(policy_reward_count{{rollout="{pub.name}",variant="stable"}}[5m]))',
                        lambda v: v > 0, timeout=40)
    for template in ("reward-ratio", "critic-calibration"):
        measurement = provider.query(templates.render_guardrail(rollout_named(pub.name), template, {"window": "5m"}))
        assert measurement.value is None and measurement.error, (template, measurement)


def test_constraint_violation_rate_and_zero_when_never_violated(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    pub = Publisher(exporter, prometheus)
    pub.counter("policy_decisions", 400, action="a")
    pub.counter("policy_decisions", 600, action="b")
    pub.counter("policy_constraint_violations", 7, cost="latency")
    pub.counter("policy_constraint_violations", 3, cost="budget")
    pub.counter("policy_constraint_violations", 50, variant="stable", cost="latency")  # not the candidate's
    pub.publish()
    promql = templates.render_guardrail(rollout_named(pub.name), "constraint-violation-rate", {"window": "5m"})
    measure(provider, promql, 10 / 1000)

    clean = Publisher(exporter, prometheus)
    clean.counter("policy_decisions", 10, action="a")
    clean.publish()
    promql = templates.render_guardrail(rollout_named(clean.name), "constraint-violation-rate", {"window": "5m"})
    measure(provider, promql, 0.0)


def test_shield_intervention_rate(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    pub = Publisher(exporter, prometheus)
    pub.counter("policy_decisions", 200, action="a")
    pub.counter("policy_shield_interventions", 6, reason="bounds")
    pub.counter("policy_shield_interventions", 4, reason="latency_budget")
    pub.publish()
    promql = templates.render_guardrail(rollout_named(pub.name), "shield-intervention-rate", {"window": "5m"})
    measure(provider, promql, 10 / 200)


def _js(p: dict[str, float], q: dict[str, float]) -> float:
    actions = set(p) | set(q)
    tp, tq = sum(p.values()), sum(q.values())
    total = 0.0
    for a in actions:
        pa, qa = p.get(a, 0) / tp, q.get(a, 0) / tq
        m = (pa + qa) / 2
        total += 0.5 * (pa * math.log2(pa / m) if pa else 0) + 0.5 * (qa * math.log2(qa / m) if qa else 0)
    return total


def test_action_divergence_is_jensen_shannon_including_actions_one_side_never_took(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    candidate = {"a": 30.0, "b": 70.0}
    stable = {"a": 500.0, "b": 400.0, "c": 100.0}
    pub = Publisher(exporter, prometheus)
    for action, n in candidate.items():
        pub.counter("policy_decisions", n, action=action)
    for action, n in stable.items():
        pub.counter("policy_decisions", n, variant="stable", action=action)
    pub.publish()
    promql = templates.render_guardrail(rollout_named(pub.name), "action-divergence", {"window": "5m"})
    expected = _js(candidate, stable)
    assert 0.05 < expected < 1
    measure(provider, promql, expected)


def test_action_divergence_of_identical_distributions_is_zero(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    pub = Publisher(exporter, prometheus)
    for variant, scale in (("candidate", 1), ("stable", 9)):
        pub.counter("policy_decisions", 20 * scale, variant=variant, action="a")
        pub.counter("policy_decisions", 80 * scale, variant=variant, action="b")
    pub.publish()
    promql = templates.render_guardrail(rollout_named(pub.name), "action-divergence", {"window": "5m"})
    measure(provider, promql, 0.0)


def test_observation_drift_reads_the_candidates_max_psi(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    name = next(_names)
    exporter.set("policy_observation_drift_psi_max", 0.31, rollout=name, namespace=NAMESPACE, variant="candidate")
    exporter.set("policy_observation_drift_psi_max", 0.02, rollout=name, namespace=NAMESPACE, variant="stable")
    promql = templates.render_guardrail(rollout_named(name), "observation-drift", {})
    measure(provider, promql, 0.31)


def test_shadow_agreement(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    pub = Publisher(exporter, prometheus)
    pub.counter("policy_router_shadow_agreements", 45)
    pub.counter("policy_router_shadow_compared", 50)
    pub.publish()
    promql = templates.render_guardrail(rollout_named(pub.name), "shadow-agreement", {"window": "5m"})
    measure(provider, promql, 0.9)


def test_error_rate_counts_errors_among_all_requests(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    pub = Publisher(exporter, prometheus)
    pub.counter("policy_decisions", 95, action="a")
    pub.counter("policy_errors", 3, reason="invalid_input")
    pub.counter("policy_errors", 2, reason="internal")
    pub.publish()
    promql = templates.render_guardrail(rollout_named(pub.name), "error-rate", {"window": "5m"})
    measure(provider, promql, 5 / 100)


def test_latency_p99_interpolates_the_histogram(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    name = next(_names)
    histogram = prometheus_client.Histogram(
        "policy_decision_latency_seconds",
        "test latency",
        ["rollout", "namespace", "variant"],
        buckets=(0.01, 0.1, 1.0),
        registry=exporter.registry,
    )
    child = histogram.labels(name, NAMESPACE, "candidate")
    prometheus.wait_for(f'count(policy_decision_latency_seconds_bucket{{rollout="{name}"}})', lambda v: v == 4, 40)
    for _ in range(90):
        child.observe(0.005)
    for _ in range(10):
        child.observe(0.5)
    promql = templates.render_guardrail(rollout_named(name), "latency-p99", {"window": "5m"})
    # rank 99 of 100 falls in (0.1, 1]: 0.1 + 0.9 * (99 - 90) / 10, Prometheus' linear interpolation
    measure(provider, promql, 0.91)
    p50 = templates.render_guardrail(rollout_named(name), "latency-p99", {"window": "5m", "quantile": "0.5"})
    measure(provider, p50, 0.01 * 50 / 90)


def test_no_traffic_is_no_data_not_a_pass(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    name = next(_names)
    for template in ("error-rate", "constraint-violation-rate", "action-divergence", "reward-ratio"):
        promql = templates.render_guardrail(rollout_named(name), template, {"window": "5m"})
        measurement = provider.query(promql)
        assert measurement.value is None and measurement.error, (template, measurement)


def test_measure_guardrails_renders_templates_and_the_sequential_judges_series(
    exporter: Exporter, prometheus: PrometheusServer, provider: prometheus_provider.PrometheusProvider
) -> None:
    name = next(_names)
    for variant, total, count in (("candidate", 45.0, 50.0), ("stable", 400.0, 500.0)):
        exporter.set("policy_reward_sum", total, rollout=name, namespace=NAMESPACE, variant=variant)
        exporter.set("policy_reward_count", count, rollout=name, namespace=NAMESPACE, variant=variant)
    exporter.set("policy_observation_drift_psi_max", 0.05, rollout=name, namespace=NAMESPACE, variant="candidate")
    prometheus.wait_for(f'count(policy_reward_count{{rollout="{name}"}})', lambda v: v == 2, 40)
    prometheus.wait_for(f'count(policy_observation_drift_psi_max{{rollout="{name}"}})', lambda v: v == 1, 40)
    rollout = rollout_named(
        name,
        [
            {"name": "drift", "template": "observation-drift", "condition": "< 0.2"},
            {"name": "typo", "template": "no-such-template", "condition": "< 1"},
        ],
        kind="sequential",
    )
    got = reconciler.measure_guardrails(rollout, provider)
    assert got["drift"].value == pytest.approx(0.05)
    assert got["typo"].value is None and "unknown guardrail template 'no-such-template'" in (got["typo"].error or "")
    series = {
        k.removeprefix(judges.SERIES_PREFIX): m.value for k, m in got.items() if k.startswith(judges.SERIES_PREFIX)
    }
    assert series == {"candidate_sum": 45.0, "candidate_count": 50.0, "stable_sum": 400.0, "stable_count": 500.0}


def test_every_template_renders_and_escapes_its_parameters() -> None:
    rollout = rollout_named("r")
    for name, template in templates.TEMPLATES.items():
        required = {k: "margin" for k, default in template.params.items() if default is None}
        assert 'rollout="r"' in templates.render_guardrail(rollout, name, required)
    assert 'quantity="cost:a\\"b"' in templates.render_guardrail(rollout, "shadow-cost", {"cost": 'a"b'})
    with pytest.raises(templating.TemplateError, match="has no parameter"):
        templates.render_guardrail(rollout, "error-rate", {"windw": "5m"})
    with pytest.raises(templating.TemplateError, match="outside a string literal"):
        templates.render_guardrail(rollout, "error-rate", {"window": "5m]) or vector(0) #"})
    with pytest.raises(templating.TemplateError, match="needs parameter"):
        templates.render_series(rollout, "cost-sum", "stable", {})
    assert 'cost="a\\"b"' in templates.render_series(rollout, "cost-sum", "stable", {"cost": 'a"b'})
