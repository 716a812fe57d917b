"""The metric-provider interface the analysis loop measures guardrails through.

Like Argo Rollouts' `metric.Provider`, a query never raises: every failure (unreachable
backend, HTTP error, no data, several series, NaN) comes back as a `Measurement` whose value
is None and whose `error` says why. The engine treats such a measurement as inconclusive, so
a broken metrics pipeline can pause or roll back a rollout but never promote it.

Each error contains one of the sentinels below, so callers may classify it without parsing
backend-specific text (`provider.NO_DATA in measurement.error`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from rollout_operator.engine import types

__all__ = [
    "HTTP_ERROR",
    "MULTIPLE_SERIES",
    "NOT_A_NUMBER",
    "NOT_SCALAR",
    "NO_DATA",
    "QUERY_FAILED",
    "UNREACHABLE",
    "MetricProvider",
]

# Sentinels contained in `Measurement.error` (test with `in`).
NO_DATA = "no data"  # empty result: metric not scraped yet, wrong labels, no traffic
MULTIPLE_SERIES = "more than one series"  # the query must aggregate to one number
NOT_A_NUMBER = "not a number"  # NaN or +-Inf, e.g. 0/0 when a variant got no requests
NOT_SCALAR = "not a single number"  # a range vector or a string
UNREACHABLE = "unreachable"  # connection refused, timeout, DNS failure
QUERY_FAILED = "query failed"  # the backend rejected or could not evaluate the query
HTTP_ERROR = "unexpected HTTP answer"  # a non-API answer (proxy error page, 404 on a wrong URL)


@runtime_checkable
class MetricProvider(Protocol):
    """A source of guardrail numbers (Prometheus today)."""

    @property
    def name(self) -> str:
        """The provider kind, as used by `factory.make_metric_provider`."""
        ...

    def is_online(self) -> bool:
        """Whether the backend answers and is ready; never raises."""
        ...

    def query(self, promql: str) -> types.Measurement:
        """Evaluate `promql` now and return one number, or None with the reason; never raises."""
        ...
