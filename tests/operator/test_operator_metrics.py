"""The operator's /metrics: names and labels from docs/operator-metrics.md, fed by each reconcile."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rollout_operator import api, metrics
from rollout_operator.cluster.control_plane import ControlPlane
from rollout_operator.engine import types

from tests.support.kube import policy_rollout_manifest, wait_for
from tests.support.operator_run import OperatorRun, rollout_manifest
from tests.support.prometheus import PrometheusServer, free_port


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[Any, float], metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def _exposition(m: metrics.OperatorMetrics) -> dict[Any, float]:
    from prometheus_client import generate_latest

    return _samples(generate_latest(m.registry).decode())


def _rollout(phase: str) -> api.PolicyRollout:
    body = policy_rollout_manifest("pricing", "shop")
    body["status"] = {"phase": phase}
    return api.PolicyRollout.model_validate(body)


def _decision(rollout: api.PolicyRollout, phase: str, weight: int = 0,
              guardrails: list[dict[str, Any]] | None = None, reason: str = "Step") -> types.Decision:
    status = rollout.status.model_copy(deep=True)
    status.phase = api.Phase(phase)
    status.canary_weight = weight
    status.guardrails = [api.GuardrailStatus.model_validate(g) for g in guardrails or []]
    status.history.append(api.HistoryEntry(time="t", phase=status.phase, reason=reason))
    return types.Decision(status=status, workloads=types.Workloads(stable=rollout.spec.fallback, candidate=None),
                          weights=types.Weights(candidate=weight))


def test_series_exist_before_anything_happens() -> None:
    samples = _exposition(metrics.OperatorMetrics())
    for verdict in ("Pass", "Fail", "Inconclusive"):
        assert _value(samples, "policyrollouts_guardrail_evaluations_total", verdict=verdict) == 0
    for state in metrics.TRAINING_JOB_STATES:
        assert _value(samples, "policyrollouts_training_jobs", state=state) == 0
    assert _value(samples, "policyrollouts_reconcile_duration_seconds_count") == 0


def test_observer_tracks_phase_weight_verdicts_and_rollbacks() -> None:
    m = metrics.OperatorMetrics()
    observer = metrics.MetricsObserver(m)
    rollout = _rollout("Progressing")
    measured = types.Observations(generation=1, measurements={"errors": types.Measurement(0.01),
                                                              "latency": types.Measurement(None, "no data")})
    observer.reconciled(rollout, measured, _decision(rollout, "Progressing", 30, [
        {"name": "errors", "verdict": "Pass"}, {"name": "latency", "verdict": "Inconclusive"}]), 0.02)
    observer.reconciled(rollout, types.Observations(generation=1), _decision(rollout, "Progressing", 30), 0.01)
    samples = _exposition(m)
    assert _value(samples, "policyrollouts_phase", namespace="shop", name="pricing", phase="Progressing") == 1
    assert _value(samples, "policyrollouts_phase", namespace="shop", name="pricing", phase="Promoted") is None, \
        "only the current phase has a series"
    assert _value(samples, "policyrollouts_canary_weight_percent", namespace="shop", name="pricing") == 30
    assert _value(samples, "policyrollouts_guardrail_evaluations_total", verdict="Pass") == 1
    assert _value(samples, "policyrollouts_guardrail_evaluations_total", verdict="Inconclusive") == 1
    assert _value(samples, "policyrollouts_reconcile_duration_seconds_count") == 2
    assert _value(samples, "policyrollouts_reconcile_duration_seconds_sum") == pytest.approx(0.03)

    observer.reconciled(rollout, types.Observations(generation=1),
                        _decision(rollout, "RollingBack", reason="GuardrailFailed"), 0.01)
    rolling = _rollout("RollingBack")
    observer.reconciled(rolling, types.Observations(generation=1),
                        _decision(rolling, "RolledBack", reason="RolledBack"), 0.01)  # the same rollback, finishing
    samples = _exposition(m)
    assert _value(samples, "policyrollouts_rollbacks_total", namespace="shop", name="pricing",
                  reason="GuardrailFailed") == 1
    assert sum(v for (n, _), v in samples.items() if n == "policyrollouts_rollbacks_total") == 1
    assert _value(samples, "policyrollouts_phase", namespace="shop", name="pricing", phase="RolledBack") == 1
    phases = [labels for name, labels in samples if name == "policyrollouts_phase" and ("name", "pricing") in labels]
    assert len(phases) == 1, "the previous phase's series was removed"

    m.forget("shop", "pricing")
    samples = _exposition(m)
    left = {name for name, labels in samples if ("name", "pricing") in labels}
    # Gauges of a deleted rollout go; its rollback count stays (alerts look at its increase).
    assert left == {"policyrollouts_rollbacks_total", "policyrollouts_rollbacks_created"}


def test_training_jobs_are_summed_over_rollouts() -> None:
    m = metrics.OperatorMetrics()
    m.set_training_jobs("a", "r1", ["Running", "Succeeded", "Succeeded"])
    m.set_training_jobs("b", "r2", ["Running"])
    samples = _exposition(m)
    assert _value(samples, "policyrollouts_training_jobs", state="Running") == 2
    assert _value(samples, "policyrollouts_training_jobs", state="Succeeded") == 2
    m.forget("a", "r1")
    assert _value(_exposition(m), "policyrollouts_training_jobs", state="Succeeded") == 0


@pytest.mark.integration
@pytest.mark.slow
def test_the_operator_serves_metrics_over_http(control_plane: ControlPlane, prometheus: PrometheusServer,
                                              tmp_path: Path) -> None:
    port, liveness = free_port(), free_port()
    args = ("--metrics-port", str(port), "--metrics-host", "127.0.0.1",
            "--liveness", f"http://127.0.0.1:{liveness}/healthz")  # the chart's two probe endpoints
    with OperatorRun(control_plane, tmp_path, prometheus.url, extra_args=args) as run:
        run.client.create(rollout_manifest("breaching", "vector(1)", [{"setWeight": 20}, {"pause": {}}],
                                           prometheus.url))
        run.wait_phase("breaching", "RolledBack")
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{liveness}/healthz", timeout=5).status_code == 200  # kopf's own

        def scrape() -> dict[Any, float]:
            return _samples(httpx.get(f"{url}/metrics", timeout=5).text)

        samples = wait_for(lambda: (s := scrape()) and _value(
            s, "policyrollouts_phase", namespace="default", name="breaching", phase="RolledBack") == 1 and s, 20,
            what="the RolledBack phase in /metrics")
        rollbacks = [(dict(labels), v) for (n, labels), v in samples.items() if n == "policyrollouts_rollbacks_total"]
        assert len(rollbacks) == 1 and rollbacks[0][1] == 1
        assert rollbacks[0][0]["name"] == "breaching" and rollbacks[0][0]["reason"]
        assert _value(samples, "policyrollouts_guardrail_evaluations_total", verdict="Fail")
        assert _value(samples, "policyrollouts_reconcile_duration_seconds_count")
        run.client.delete("breaching")
        run.wait_gone("breaching")
        wait_for(lambda: _value(scrape(), "policyrollouts_phase", namespace="default", name="breaching",
                                phase="RolledBack") is None, 20, what="the deleted rollout's series to go")


def test_a_busy_metrics_port_is_a_clear_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "rollout_operator.cli.main", "operator", "--kubeconfig",
                                 str(kubeconfig), "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr and "--metrics-port" in result.stderr
