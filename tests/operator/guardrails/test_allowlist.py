"""Which Prometheus URLs a rollout may make the operator query: exact URLs the operator's admin listed."""

from __future__ import annotations

import pytest
from rollout_operator.guardrails import allowlist, provider

OWN = "http://prometheus-operated.monitoring:9090"


@pytest.mark.parametrize("url", [OWN, OWN + "/", "HTTP://Prometheus-Operated.Monitoring:9090"])
def test_the_same_url_written_differently_is_allowed(url: str) -> None:
    assert allowlist.UrlAllowList.of([OWN]).allows(url)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9090",  # a loopback listener (the SSRF of issue 17)
    "http://prometheus-operated.monitoring:9091",
    "https://prometheus-operated.monitoring:9090",
    "http://prometheus-operated.monitoring:9090.evil.com",
    "http://prometheus-operated.monitoring:9090/../admin",
    "http://user@prometheus-operated.monitoring:9090",
])
def test_anything_else_is_refused(url: str) -> None:
    allowed = allowlist.UrlAllowList.of([OWN])
    assert not allowed.allows(url)
    problem = allowed.problem(url)
    assert problem is not None and allowlist.NOT_ALLOWED in problem
    assert f"spec.analysis.prometheusUrl {url!r}" in problem and OWN in problem
    assert "operator.allowedPrometheusUrls" in problem, "says how to fix it"


def test_an_explicit_star_allows_every_url() -> None:
    assert allowlist.UrlAllowList.of([OWN, "*"]).problem("http://anywhere:1") is None


def test_blank_entries_are_ignored_and_duplicates_dropped() -> None:
    assert allowlist.UrlAllowList.of([OWN, " ", "", OWN]).urls == (OWN,)


def test_a_refused_provider_measures_nothing_and_says_why() -> None:
    refused = allowlist.RefusedProvider("'http://127.0.0.1:1' is not allowed")
    measurement = refused.query("vector(1)")
    assert measurement.value is None, "inconclusive: can pause or roll back, never promote"
    assert measurement.error is not None and provider.QUERY_FAILED in measurement.error
    assert "not allowed" in measurement.error
    assert refused.is_online() is False
    assert isinstance(refused, provider.MetricProvider)
