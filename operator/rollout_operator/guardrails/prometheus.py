"""Guardrail measurements from Prometheus' HTTP API (`/api/v1/query`, instant queries).

Every outcome becomes a `Measurement`; nothing raises (see `provider`). Timeouts are bounded
on both sides: httpx gives up after `timeout` seconds and Prometheus is asked to abandon the
evaluation after the same time, so a slow or dead Prometheus costs the reconcile loop at most
`timeout` seconds per guardrail.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from rollout_operator.engine import types
from rollout_operator.guardrails import provider

_SHOWN_SERIES = 3


class PrometheusProvider:
    """Instant queries against one Prometheus.

    **Parameters:**

    * **base_url** - Prometheus' base URL, e.g. `http://prometheus.monitoring:9090` (with any
      path prefix set by `--web.route-prefix`).
    * **timeout** - seconds per HTTP call (connect, read) and for the server-side evaluation.
    * **client** - an `httpx.Client` to reuse (auth, TLS, proxies); the provider then does not
      close it.
    """

    name = "prometheus"

    def __init__(self, base_url: str, timeout: float = 5.0, client: httpx.Client | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"prometheus URL {base_url!r} must start with http:// or https://, e.g. http://prometheus:9090"
            )
        if timeout <= 0:
            raise ValueError(f"prometheus timeout must be positive seconds, got {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client()

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> PrometheusProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusProvider({self.base_url!r}, timeout={self.timeout!r})"

    def is_online(self) -> bool:
        """True when `/-/ready` answers 200 (Prometheus has started and can serve queries)."""
        try:
            response = self._client.get(f"{self.base_url}/-/ready", timeout=self.timeout)
        except Exception:
            return False
        return response.status_code == 200

    def query(self, promql: str) -> types.Measurement:
        """Evaluate `promql` at the current time; one sample or a scalar gives the value."""
        url = f"{self.base_url}/api/v1/query"
        try:
            response = self._client.post(
                url,
                data={"query": promql, "timeout": f"{self.timeout:g}"},
                timeout=self.timeout,
            )
        except httpx.TimeoutException as exc:
            return self._unreachable(f"no answer within {self.timeout:g}s ({type(exc).__name__})")
        except httpx.TransportError as exc:
            return self._unreachable(str(exc) or type(exc).__name__)
        except Exception as exc:  # an invalid URL or anything httpx did not foresee: still a Measurement
            return self._unreachable(f"{type(exc).__name__}: {exc}")
        try:
            return _parse(response)
        except Exception as exc:  # a malformed body must not crash the reconcile loop
            return _error(f"{provider.HTTP_ERROR} from {url}: cannot read the answer ({type(exc).__name__}: {exc})")

    def _unreachable(self, why: str) -> types.Measurement:
        return _error(
            f"prometheus {provider.UNREACHABLE} at {self.base_url}: {why}; "
            "check that Prometheus runs and that analysis.prometheusUrl (or --prometheus-url) is right"
        )


def _error(message: str) -> types.Measurement:
    return types.Measurement(value=None, error=message)


def _parse(response: httpx.Response) -> types.Measurement:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
        snippet = response.text[:200].strip()
        return _error(
            f"{provider.HTTP_ERROR} {response.status_code} from {response.request.url}: {snippet!r}; "
            "is the URL Prometheus' base URL (without /api/v1)?"
        )
    if body["status"] == "error":
        return _error(
            f"{provider.QUERY_FAILED}: prometheus answered HTTP {response.status_code}, "
            f"{body.get('errorType', 'error')}: {body.get('error', '(no message)')}"
        )
    data = body.get("data") or {}
    result_type = data.get("resultType")
    result: Any = data.get("result")  # JSON; a malformed one raises here and is reported by `query`
    if result_type == "scalar":
        return _number(result[1])
    if result_type != "vector":
        return _error(
            f"{provider.NOT_SCALAR}: the query returned a {result_type}; a guardrail query must return "
            "an instant vector with one series or a scalar (wrap a range selector in e.g. avg_over_time(...))"
        )
    if not result:
        return _error(
            f"{provider.NO_DATA}: the query returned no series; the metric may not be scraped yet, "
            "its label matchers may not match, or the variant has had no traffic"
        )
    if len(result) > 1:
        shown = ", ".join(_labels(s.get("metric", {})) for s in result[:_SHOWN_SERIES])
        more = ", ..." if len(result) > _SHOWN_SERIES else ""
        return _error(
            f"{provider.MULTIPLE_SERIES}: the query returned {len(result)} series ({shown}{more}); "
            "a guardrail needs one number: aggregate it, e.g. sum(...) or max(...)"
        )
    sample = result[0]
    if "value" not in sample:
        return _error(f"{provider.NOT_SCALAR}: the series holds a native histogram, not a number")
    return _number(sample["value"][1])


def _number(text: str) -> types.Measurement:
    value = float(text)
    if math.isnan(value):
        return _error(f"{provider.NOT_A_NUMBER}: the query returned NaN (e.g. 0/0 when a variant served no requests)")
    if math.isinf(value):
        return _error(f"{provider.NOT_A_NUMBER}: the query returned {text} (a division by zero?)")
    return types.Measurement(value=value)


def _labels(metric: dict[str, str]) -> str:
    name = metric.get("__name__", "")
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{inner}}}"
