"""Guardrail measurement: metric providers (Prometheus), query templating, the factory.

`provider` holds the interface and the error sentinels, one module per backend implements it,
`factory.make_metric_provider` picks one by kind, and `templating.render` turns a manifest's
guardrail query into safe PromQL.
"""

from rollout_operator.guardrails.factory import make_metric_provider
from rollout_operator.guardrails.prometheus import PrometheusProvider
from rollout_operator.guardrails.provider import MetricProvider
from rollout_operator.guardrails.templating import TemplateError, guardrail_variables, render

__all__ = [
    "MetricProvider",
    "PrometheusProvider",
    "TemplateError",
    "guardrail_variables",
    "make_metric_provider",
    "render",
]
