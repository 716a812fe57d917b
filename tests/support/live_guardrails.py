"""Judging a guardrail template live: real policy servers scraped by a real Prometheus with the labels a
cluster's scrape configuration adds, measured through the operator's provider, decided by the threshold judge.

Shared by the end-to-end guardrail tests (critic error, group disparity, envelope proposals).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from rollout_operator import api, reconciler
from rollout_operator.engine.judges.threshold import ThresholdJudge
from rollout_operator.guardrails import prometheus as prometheus_provider

from tests.support.prometheus import PrometheusServer

NAMESPACE = "critic"  # the namespace label every scraped target gets


class LabelledPrometheus(PrometheusServer):
    """Scrapes each target with its own `rollout` and `namespace` labels, as the cluster's relabelling does."""

    def __init__(self, targets: dict[str, str], namespace: str = NAMESPACE) -> None:
        self.rollouts = targets  # target -> rollout name
        self.namespace = namespace
        super().__init__(list(targets))

    def _write_config(self) -> None:
        static = [
            {"targets": [t], "labels": {"rollout": r, "namespace": self.namespace}} for t, r in self.rollouts.items()
        ]
        config = {
            "global": {
                key: self.scrape_interval for key in ("scrape_interval", "scrape_timeout", "evaluation_interval")
            },
            "scrape_configs": [{"job_name": "policy", "static_configs": static}],
        }
        self.config_path.write_text(json.dumps(config))


def judge_when_scraped(
    spec: api.PolicyRollout,
    metrics: prometheus_provider.PrometheusProvider,
    guardrail: str,
    count_query: str,
    expected: float,
    timeout: float = 60.0,
) -> tuple[api.GuardrailStatus, bool]:
    """Measure until `guardrail` has a value and `count_query` says Prometheus holds all `expected` samples
    (bounded by `timeout`), then judge once: (the guardrail's status, whether the judge rolls back)."""
    deadline = time.monotonic() + timeout
    while True:
        got = reconciler.measure_guardrails(spec, metrics)
        if got[guardrail].value is not None and metrics.query(count_query).value == expected:
            got = reconciler.measure_guardrails(spec, metrics)
            judgement = ThresholdJudge().judge(spec.spec, spec.status, got, datetime.now(UTC))
            return judgement.guardrails[0], judgement.rollback is not None
        assert time.monotonic() < deadline, f"no {guardrail} measurement for {spec.metadata.name}; last {got}"
        time.sleep(0.25)
