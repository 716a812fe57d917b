"""Prometheus fixtures for the guardrail tests (see tests/support/prometheus.py)."""

from tests.support.prometheus import exporter, prometheus, prometheus_factory  # noqa: F401
