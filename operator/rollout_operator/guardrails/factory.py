"""Make a metric provider by kind; unknown kinds are refused, never silently replaced."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rollout_operator.guardrails import prometheus, provider

PROVIDERS: dict[str, Callable[..., provider.MetricProvider]] = {
    "prometheus": prometheus.PrometheusProvider,
}


def make_metric_provider(kind: str, **config: Any) -> provider.MetricProvider:
    """`make_metric_provider("prometheus", base_url="http://prometheus:9090", timeout=5.0)`."""
    try:
        constructor = PROVIDERS[kind]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown metric provider {kind!r}: use one of {known}") from None
    try:
        return constructor(**config)
    except TypeError as exc:
        raise ValueError(f"bad configuration for metric provider {kind!r}: {exc}") from exc
