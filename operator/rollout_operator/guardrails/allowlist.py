"""Which URLs a rollout may make the operator contact (Prometheus, webhooks): operator-level policy.

`spec.analysis.prometheusUrl` is written by whoever may create a PolicyRollout; without a limit
the operator would send requests wherever it points, from inside the cluster with the
operator's network reach (an SSRF). The allow-list is the operator's own `--prometheus-url`
plus what its admin adds (docs/security.md). A URL that is not allowed is never contacted:
`checks.spec_problems` fails a rollout naming one before anything is created, and a rollout
edited to name one mid-flight gets a `RefusedProvider`, whose every measurement is an error
(inconclusive: it can pause and roll back, never promote).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from urllib.parse import urlsplit

from rollout_operator.engine import types
from rollout_operator.guardrails import provider

__all__ = ["ANY", "NOT_ALLOWED", "PROMETHEUS_FIX", "WEBHOOK_FIX", "RefusedProvider", "UrlAllowList", "normalise"]

ANY = "*"  # an entry that allows every http(s) URL: the admin opts out of the limit explicitly
NOT_ALLOWED = "not allowed by the operator's policy"  # sentinel in the refusal messages
PROMETHEUS_FIX = ("remove it to use the operator's Prometheus, or ask the operator's admin to add it (chart value "
                  "operator.allowedPrometheusUrls, env POLICY_ROLLOUTS_ALLOWED_PROMETHEUS_URLS)")
WEBHOOK_FIX = ("remove it, or ask the operator's admin to add it (chart value operator.allowedWebhookUrls, env "
               "POLICY_ROLLOUTS_ALLOWED_WEBHOOK_URLS)")


def normalise(url: str) -> str:
    """Compare URLs as Prometheus sees them: scheme and host case-insensitive, no trailing slash."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}{query}"


@dataclasses.dataclass(frozen=True)
class UrlAllowList:
    """Exact URLs (after `normalise`), never patterns: `http://prom*` would also allow `http://prom.evil.com`."""

    urls: tuple[str, ...]

    @classmethod
    def of(cls, urls: Iterable[str]) -> UrlAllowList:
        return cls(tuple(dict.fromkeys(u.strip() for u in urls if u.strip())))

    def allows(self, url: str) -> bool:
        if ANY in self.urls:
            return True
        return normalise(url) in {normalise(u) for u in self.urls}

    def problem(self, url: str, field: str = "spec.analysis.prometheusUrl",
                fix: str = PROMETHEUS_FIX) -> str | None:
        """One sentence saying why `url` may not be contacted and how to fix it; None when it may."""
        if self.allows(url):
            return None
        allowed = ", ".join(self.urls) or "none"
        return f"{field} {url!r} is {NOT_ALLOWED} (allowed: {allowed}): {fix}"


class RefusedProvider:
    """A MetricProvider for a URL the policy refuses: it contacts nothing and measures nothing."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    @property
    def name(self) -> str:
        return "refused"

    def is_online(self) -> bool:
        return False

    def query(self, promql: str) -> types.Measurement:
        return types.Measurement(value=None, error=f"{provider.QUERY_FAILED}: {self.reason}")
