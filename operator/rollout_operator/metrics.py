"""The operator's own Prometheus metrics (`/metrics` on `--metrics-port`), documented in docs/operator-metrics.md.

Why a private registry: tests start several operators in one interpreter, and a chart's
dashboards and alerts depend on these names and labels, so they live in one place and are
fed from one hook (`MetricsObserver.reconciled`, called by `reconciler.reconcile`), never
from inside the engine. Every labelled series that an alert or a panel reads is
pre-initialised: a counter that does not exist yet makes `increase()` return nothing.
"""

from __future__ import annotations

import contextlib
import threading
import wsgiref.simple_server
from collections.abc import Callable, Iterable
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.core import GaugeMetricFamily

from rollout_operator import api, workqueue
from rollout_operator.engine import types

__all__ = ["RECONCILE_OUTCOMES", "TRAINING_JOB_STATES", "MetricsObserver", "OperatorMetrics", "QueueObserver",
           "serve"]

TRAINING_JOB_STATES = ("Pending", "Running", "Succeeded", "Failed")
RECONCILE_OUTCOMES = ("ok", "error", "invalid", "skipped")
QUEUE_PRIORITIES = tuple(p.name.lower() for p in workqueue.Priority)
_ROLLBACK_PHASES = {api.Phase.ROLLING_BACK, api.Phase.ROLLED_BACK}


class OperatorMetrics:
    """The metric families; one instance per operator process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.phase = Gauge(
            "policyrollouts_phase", "1 for the phase each PolicyRollout is in (one series per rollout).",
            ["namespace", "name", "phase"], registry=self.registry,
        )
        self.canary_weight = Gauge(
            "policyrollouts_canary_weight_percent", "Share of traffic (0-100) the candidate policy receives.",
            ["namespace", "name"], registry=self.registry,
        )
        self.guardrails_inconclusive = Gauge(
            "policyrollouts_guardrails_inconclusive", "Guardrails whose latest measurement was inconclusive.",
            ["namespace", "name"], registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "policyrollouts_reconcile_duration_seconds", "Time one reconcile (observe, decide, apply) takes.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=self.registry,
        )
        self.guardrail_evaluations = Counter(
            "policyrollouts_guardrail_evaluations", "Guardrail measurements judged, by verdict.",
            ["verdict"], registry=self.registry,
        )
        self.rollbacks = Counter(
            "policyrollouts_rollbacks", "Rollbacks started, by rollout and the reason recorded in its history.",
            ["namespace", "name", "reason"], registry=self.registry,
        )
        self.training_jobs = Gauge(
            "policyrollouts_training_jobs", "Training Jobs listed in the rollouts' status, by state.",
            ["state"], registry=self.registry,
        )
        self.workqueue_wait = Histogram(
            "policyrollouts_workqueue_wait_seconds",
            "From when a rollout's reconcile was due (its timer's deadline, or a change it watches) to when a "
            "worker started it.", ["priority"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
            registry=self.registry,
        )
        self.reconciles = Counter(
            "policyrollouts_reconciles", "Reconciles run by the work queue's workers, by outcome.",
            ["outcome"], registry=self.registry,
        )
        self.api_requests = Counter(
            "policyrollouts_api_requests", "Calls the operator's reconciles made to the Kubernetes API (cache reads "
            "excluded; kopf's own watches and finalizers are not counted).", ["verb", "kind"], registry=self.registry,
        )
        for verdict in api.Verdict:
            self.guardrail_evaluations.labels(verdict=verdict.value)
        for outcome in RECONCILE_OUTCOMES:
            self.reconciles.labels(outcome=outcome)
        for priority in QUEUE_PRIORITIES:
            self.workqueue_wait.labels(priority=priority)
        self._queue = _QueueCollector(lambda: ({p: 0 for p in workqueue.Priority}, 0, 0), dict)
        self.registry.register(self._queue)
        for state in TRAINING_JOB_STATES:
            self.training_jobs.labels(state=state).set(0)
        self._jobs: dict[tuple[str, str], dict[str, int]] = {}
        self._phases: dict[tuple[str, str], api.Phase] = {}
        self._lock = threading.Lock()

    def set_phase(self, namespace: str, name: str, phase: api.Phase) -> None:
        """One series per rollout, for its current phase (eleven per rollout were 20 MB at 2,000 rollouts)."""
        with self._lock:
            before = self._phases.get((namespace, name))
            self._phases[namespace, name] = phase
        if before is not None and before is not phase:
            self._remove(self.phase, namespace, name, before.value)
        self.phase.labels(namespace=namespace, name=name, phase=phase.value).set(1)

    def set_training_jobs(self, namespace: str, name: str, states: Iterable[str]) -> None:
        """Replace one rollout's job states and publish the sums over all rollouts."""
        counts: dict[str, int] = {}
        for state in states:
            counts[state] = counts.get(state, 0) + 1
        with self._lock:
            if counts:
                self._jobs[namespace, name] = counts
            else:
                self._jobs.pop((namespace, name), None)
            totals = {state: 0 for state in TRAINING_JOB_STATES}
            for per_rollout in self._jobs.values():
                for state, count in per_rollout.items():
                    totals[state] = totals.get(state, 0) + count
        for state, total in totals.items():
            self.training_jobs.labels(state=state).set(total)

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted rollout's series, so dashboards do not show it forever."""
        with self._lock:
            phase = self._phases.pop((namespace, name), None)
        if phase is not None:
            self._remove(self.phase, namespace, name, phase.value)
        self._remove(self.canary_weight, namespace, name)
        self._remove(self.guardrails_inconclusive, namespace, name)
        self.set_training_jobs(namespace, name, ())

    def api_request(self, verb: str, kind: str) -> None:
        self.api_requests.labels(verb=verb, kind=kind).inc()

    def watch_queue(self, snapshot: Callable[[], tuple[dict[Any, int], int, int]],
                    cache_sizes: Callable[[], dict[str, int]]) -> None:
        """Publish this work queue's depth and these caches' sizes, read when Prometheus scrapes."""
        self._queue.snapshot, self._queue.cache_sizes = snapshot, cache_sizes

    @staticmethod
    def _remove(metric: Any, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)


def _training_states(rollout: api.PolicyRollout) -> list[str]:
    """States of `status.trainingJobs` entries, for operators whose API has that field."""
    jobs = getattr(rollout.status, "training_jobs", None) or []
    states = []
    for job in jobs:
        # api.TrainingJobStatus names it `phase`; older drafts used `state`.
        if isinstance(job, dict):
            state = job.get("phase") or job.get("state")
        else:
            state = getattr(job, "phase", None) or getattr(job, "state", None)
        if state:
            states.append(str(state))
    return states


class _QueueCollector(prometheus_client.registry.Collector):
    """Gauges computed at scrape time: counting on every queue operation would cost more than it tells."""

    def __init__(self, snapshot: Callable[[], tuple[dict[Any, int], int, int]],
                 cache_sizes: Callable[[], dict[str, int]]) -> None:
        self.snapshot, self.cache_sizes = snapshot, cache_sizes

    def collect(self) -> Iterable[Metric]:
        ready, timers, busy = self.snapshot()
        depth = GaugeMetricFamily("policyrollouts_workqueue_depth",
                                  "Rollouts due and waiting for a worker, by priority.", labels=["priority"])
        for priority, count in ready.items():
            depth.add_metric([priority.name.lower()], count)
        yield depth
        yield GaugeMetricFamily("policyrollouts_workqueue_timers", "Rollouts with a timer set (their next "
                                "analysis, step end or deadline).", value=timers)
        yield GaugeMetricFamily("policyrollouts_workqueue_busy_workers", "Workers reconciling right now.",
                                value=busy)
        cached = GaugeMetricFamily("policyrollouts_cache_objects", "Objects held in the watch-backed caches, by "
                                   "kind.", labels=["kind"])
        for kind, count in sorted(self.cache_sizes().items()):
            cached.add_metric([kind], count)
        yield cached


class QueueObserver:
    """Feeds the work queue's wait times and outcomes into `OperatorMetrics` (a `workqueue.Observer`)."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self.metrics = metrics

    def waited(self, priority: Any, seconds: float) -> None:
        self.metrics.workqueue_wait.labels(priority=priority.name.lower()).observe(seconds)

    def finished(self, result: str, seconds: float) -> None:
        self.metrics.reconciles.labels(outcome=result).inc()


class MetricsObserver:
    """Feeds `OperatorMetrics` from each reconcile's before/after (a `reconciler.Observer`)."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self.metrics = metrics

    def reconciled(
        self, rollout: api.PolicyRollout, observations: types.Observations, decision: types.Decision, seconds: float
    ) -> None:
        meta, m = rollout.metadata, self.metrics
        new = decision.status
        m.reconcile_duration.observe(seconds)
        m.set_phase(meta.namespace, meta.name, new.phase)
        m.canary_weight.labels(namespace=meta.namespace, name=meta.name).set(new.canary_weight)
        verdicts = {g.name: g.verdict for g in new.guardrails}
        m.guardrails_inconclusive.labels(namespace=meta.namespace, name=meta.name).set(
            sum(v is api.Verdict.INCONCLUSIVE for v in verdicts.values())
        )
        for guardrail in observations.measurements:
            verdict = verdicts.get(guardrail)
            if verdict is not None:
                m.guardrail_evaluations.labels(verdict=verdict.value).inc()
        if new.phase in _ROLLBACK_PHASES and rollout.status.phase not in _ROLLBACK_PHASES:
            reason = next((h.reason for h in reversed(new.history) if h.phase in _ROLLBACK_PHASES), "Unknown")
            m.rollbacks.labels(namespace=meta.namespace, name=meta.name, reason=reason).inc()
        m.set_training_jobs(meta.namespace, meta.name, _training_states(rollout))


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds would flood the log
        pass


def serve(metrics: OperatorMetrics, port: int, host: str = "127.0.0.1") -> tuple[Any, threading.Thread]:
    """Serve `/metrics` (and `/healthz`, answering 200 while the process is up) in a daemon thread."""
    metrics_app = prometheus_client.make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        return metrics_app(environ, start_response)

    server = wsgiref.simple_server.make_server(
        host, port, app, server_class=prometheus_client.exposition.ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="operator-metrics", daemon=True)
    thread.start()
    return server, thread
