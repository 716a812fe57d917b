"""kopf wiring, and nothing else: one daemon per PolicyRollout that reconciles on a tick.

Why a daemon rather than kopf's timers or change handlers: the engine says when it next
needs to look (`Decision.requeue_after`: the next analysis, the end of a step), and a daemon
can sleep exactly that long, so a guardrail breach is acted on within one analysis interval
plus a tick. Each iteration reads the object fresh from the API (the status we wrote last
time included), so a restarted operator resumes from status alone.

The daemon is async and waits in the event loop; only a reconcile itself runs in a worker
thread. A sync daemon would hold one of asyncio's default executor threads (cpu_count + 4) for
the life of its rollout: on 2 cores the 7th rollout was never reconciled, and the sync event
and delete handlers that share those threads never ran either.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import threading
import time
from typing import Any

import kopf
import pydantic

from rollout_operator import api, kube, reconciler
from rollout_operator import metrics as operator_metrics
from rollout_operator.engine import types
from rollout_operator.guardrails import factory as metrics_factory
from rollout_operator.guardrails import provider
from rollout_operator.notifications import base as notify_base
from rollout_operator.notifications import dispatcher as notify_dispatcher
from rollout_operator.notifications import observer as notify_observer
from rollout_operator.traffic import base as traffic_base
from rollout_operator.traffic import factory as traffic_factory
from rollout_operator.workloads import jobs as k8s_jobs
from rollout_operator.workloads import kubernetes as k8s_workloads

log = logging.getLogger(__name__)
IDLE_TICKS = 30


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    kubeconfig: str | None = None
    prometheus_url: str = "http://prometheus-operated.monitoring:9090"
    tick_seconds: float = 1.0
    query_timeout_seconds: float = 5.0
    notify_targets: tuple[notify_base.Target, ...] = ()
    notify_timeout_seconds: float = 5.0
    notify_retries: int = 3


class _Operator:
    """Collaborators built once per operator process (kept in kopf's memo)."""

    def __init__(self, config: OperatorConfig, metrics: operator_metrics.OperatorMetrics | None = None) -> None:
        self.config = config
        self.client = kube.Client.from_config(config.kubeconfig)
        self.metrics = metrics
        self.notifier = notify_dispatcher.Dispatcher(timeout=config.notify_timeout_seconds,
                                                     retries=config.notify_retries)
        observers: list[reconciler.Observer] = [notify_observer.NotificationObserver(self.notifier,
                                                                                     config.notify_targets)]
        if metrics is not None:
            observers.append(operator_metrics.MetricsObserver(metrics))
        self._metrics: dict[str, provider.MetricProvider] = {}
        self._routers: dict[api.TrafficProvider, traffic_base.TrafficRouter] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.platform = reconciler.Platform(
            workloads=k8s_workloads.KubernetesWorkloads(self.client),
            router_for=self.router_for,
            metrics_for=self.metrics_for,
            write_status=self.write_status,
            record_event=self.record_event,
            observers=observers,
            jobs=k8s_jobs.KubernetesJobs(self.client),
            write_policy=self.write_policy,
        )

    def lock_for(self, namespace: str, name: str) -> threading.Lock:
        """One rollout's reconcile and its finalizer never overlap: a reconcile already running when
        the rollout is deleted would otherwise write its HTTPRoute back after the finalizer removed it."""
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget_lock(self, namespace: str, name: str) -> None:
        with self._locks_guard:
            self._locks.pop((namespace, name), None)

    def router_for(self, rollout: api.PolicyRollout) -> traffic_base.TrafficRouter:
        provider_name = rollout.spec.traffic.provider
        if provider_name not in self._routers:
            self._routers[provider_name] = traffic_factory.make_router(provider_name, self.client)
        return self._routers[provider_name]

    def metrics_for(self, rollout: api.PolicyRollout) -> provider.MetricProvider:
        url = rollout.spec.analysis.prometheus_url or self.config.prometheus_url
        if url not in self._metrics:
            self._metrics[url] = metrics_factory.make_metric_provider(
                "prometheus", base_url=url, timeout=self.config.query_timeout_seconds
            )
        return self._metrics[url]

    def write_status(self, rollout: api.PolicyRollout, patch: dict[str, Any]) -> None:
        self.client.patch_status(api.API_VERSION, api.KIND, rollout.metadata.name, rollout.metadata.namespace, patch)

    def write_policy(self, rollout: api.PolicyRollout, policy: api.PolicySpec) -> None:
        self.client.patch(api.API_VERSION, api.KIND, rollout.metadata.name, rollout.metadata.namespace,
                          {"spec": {"policy": policy.wire()}})

    def record_event(self, rollout: api.PolicyRollout, event: types.Event) -> None:
        self.client.create_event(_involved(rollout), event.reason, event.message, type=event.type.value)


def _involved(rollout: api.PolicyRollout) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": rollout.metadata.name, "namespace": rollout.metadata.namespace,
                     "uid": rollout.metadata.uid},
    }


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _reject_invalid(operator: _Operator, body: dict[str, Any], error: pydantic.ValidationError) -> None:
    """A manifest that slipped past the CRD's schema: say why in status and an Event, change nothing else."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)
    )
    message = f"invalid spec: {problems}"
    meta = body.get("metadata", {})
    status = body.get("status") or {}
    if status.get("message") == message:
        return
    operator.client.patch_status(
        api.API_VERSION, api.KIND, meta["name"], meta.get("namespace"),
        {"phase": api.Phase.FAILED.value, "message": message, "observedGeneration": meta.get("generation")},
    )
    operator.client.create_event(
        {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": meta}, "InvalidSpec", message, type="Warning"
    )


def reconcile_once(operator: _Operator, name: str, namespace: str) -> float:
    """One iteration; returns how long to sleep before the next.

    A finished rollout (Promoted, RolledBack, ...) has nothing to time: it is looked at again
    only on a change to the object (which wakes the daemon) or every `IDLE_TICKS` ticks.
    """
    with operator.lock_for(namespace, name):
        return _reconcile_locked(operator, name, namespace)


def _reconcile_locked(operator: _Operator, name: str, namespace: str) -> float:
    tick = operator.config.tick_seconds
    body = operator.client.get(api.API_VERSION, api.KIND, name, namespace)
    if body.get("metadata", {}).get("deletionTimestamp"):
        return tick
    try:
        rollout = api.PolicyRollout.model_validate(body)
    except pydantic.ValidationError as error:
        _reject_invalid(operator, body, error)
        return tick * 5
    started = time.monotonic()
    decision = reconciler.reconcile(operator.platform, rollout, _now())
    if decision.status.phase.terminal and decision.requeue_after is None:
        return tick * IDLE_TICKS
    # requeue_after counts from `now` above, not from the end of this (possibly slow) reconcile.
    wanted = decision.requeue_after - (time.monotonic() - started) if decision.requeue_after is not None else tick
    return min(tick, wanted)


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations under our group; status belongs to the engine alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=api.GROUP)
    settings.posting.level = logging.WARNING  # we post our own, meaningful Events
    settings.watching.server_timeout = 60
    config: OperatorConfig = memo.get("config") or OperatorConfig(kubeconfig=os.environ.get("KUBECONFIG"))
    memo["operator"] = _Operator(config, memo.get("metrics"))


@kopf.on.cleanup()
def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    operator: _Operator | None = memo.get("operator")
    if operator is not None:
        operator.notifier.close(timeout=5.0)  # deliver what is queued (a rollback notice) before exiting


@kopf.on.login()
def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    if os.environ.get("KUBECONFIG") or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs)


def _wake_event(memo: kopf.Memo, namespace: str, name: str) -> asyncio.Event:
    wakers: dict[tuple[str, str], asyncio.Event] = memo.setdefault("wakers", {})
    return wakers.setdefault((namespace, name), asyncio.Event())


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=10.0)
async def run_rollout(stopped: kopf.DaemonStopped, name: str, namespace: str, memo: kopf.Memo,
                      logger: logging.Logger, **_: Any) -> None:
    operator: _Operator = memo["operator"]
    wake = _wake_event(memo, namespace, name)
    backoff = operator.config.tick_seconds
    try:
        while not stopped:
            wake.clear()
            try:
                delay = await asyncio.to_thread(reconcile_once, operator, name, namespace)
                backoff = operator.config.tick_seconds
            except kube.NotFound:
                return
            except Exception as exc:  # keep the rollout's loop alive; the next tick retries
                logger.exception("reconcile of %s/%s failed: %s", namespace, name, exc)
                backoff = min(backoff * 2, 30.0)
                delay = backoff
            # Sleep until the engine's next deadline, a change to the object (see _wake), or a stop.
            deadline = time.monotonic() + max(delay, 0.05)
            while not stopped and not wake.is_set() and (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=min(left, 0.5))
    finally:
        memo.get("wakers", {}).pop((namespace, name), None)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def _wake(event: dict[str, Any], name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A human's annotation or a spec edit is acted on at once, not at the next tick."""
    if event.get("type") in ("MODIFIED", "DELETED", None):
        _wake_event(memo, namespace, name).set()


@kopf.on.delete(api.GROUP, api.VERSION, api.PLURAL)
def finalize(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Remove traffic objects; Deployments and Services go with the owner references."""
    operator: _Operator = memo["operator"]
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    if operator.metrics is not None:
        operator.metrics.forget(namespace, name)
    try:
        rollout = api.PolicyRollout.model_validate(dict(body))
    except pydantic.ValidationError:
        return  # never got as far as creating traffic objects
    # Waits for a reconcile in flight; any later one reads the deletionTimestamp and writes nothing.
    with operator.lock_for(namespace, name):
        operator.router_for(rollout).finalize(rollout)
    operator.forget_lock(namespace, name)
