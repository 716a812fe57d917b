"""Prometheus fixtures for the guardrail tests (see tests/support/prometheus.py)."""

from collections.abc import Iterator

import pytest
from rollout_operator.guardrails import prometheus as prometheus_provider

from tests.support.prometheus import PrometheusServer, exporter, prometheus, prometheus_factory  # noqa: F401


@pytest.fixture()
def provider(prometheus: PrometheusServer) -> Iterator[prometheus_provider.PrometheusProvider]:  # noqa: F811
    """The operator's Prometheus provider against the session's real Prometheus."""
    with prometheus_provider.PrometheusProvider(prometheus.url, timeout=5.0) as p:
        yield p
