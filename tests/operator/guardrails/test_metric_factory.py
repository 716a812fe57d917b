"""make_metric_provider: known kinds build providers, unknown kinds and bad config are refused."""

from __future__ import annotations

import pytest
from rollout_operator.guardrails import factory, prometheus


def test_prometheus_kind() -> None:
    made = factory.make_metric_provider("prometheus", base_url="http://prometheus:9090/", timeout=3.0)
    assert isinstance(made, prometheus.PrometheusProvider)
    assert made.base_url == "http://prometheus:9090"
    assert made.timeout == 3.0


def test_unknown_kind_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown metric provider 'datadog': use one of prometheus"):
        factory.make_metric_provider("datadog", base_url="http://x")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "bad configuration for metric provider 'prometheus'"),
        ({"base_url": "http://x", "colour": "red"}, "colour"),
        ({"base_url": "prometheus:9090"}, "must start with http:// or https://"),
        ({"base_url": "http://x", "timeout": 0}, "timeout must be positive"),
    ],
)
def test_bad_configuration_is_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory.make_metric_provider("prometheus", **config)
