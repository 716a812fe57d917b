"""The operator process: caches, one work queue, and the reconcile of one PolicyRollout from them.

Reads come from watch-backed caches (`informers`), writes happen only where the desired state
differs from the cached one (`kube.Client.apply`, `reconciler.status_patch`), and a rollout is
reconciled when it is due: at the engine's next deadline (`Decision.requeue_after`), or when
something it depends on changes (its own object, a Deployment becoming available, a traffic
object edited by hand, a Job finishing). An idle or finished rollout costs no API call.

Which rollouts this process works on is kopf's call (`adopt`/`release` from the handlers):
kopf stops them when the rollout is deleted or when a peer with a higher priority takes
over, so a paused replica neither reconciles nor starts its caches.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Hashable
from typing import Any

import pydantic

from rollout_operator import api, checks, engine, informers, kube, reconciler, workqueue
from rollout_operator import metrics as operator_metrics
from rollout_operator.engine import types
from rollout_operator.guardrails import allowlist, provider
from rollout_operator.guardrails import factory as metrics_factory
from rollout_operator.notifications import base as notify_base
from rollout_operator.notifications import dispatcher as notify_dispatcher
from rollout_operator.notifications import observer as notify_observer
from rollout_operator.resources import reward_key
from rollout_operator.traffic import base as traffic_base
from rollout_operator.traffic import factory as traffic_factory
from rollout_operator.workloads import jobs as k8s_jobs
from rollout_operator.workloads import kubernetes as k8s_workloads
from rollout_operator.workqueue import Outcome, Priority

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    kubeconfig: str | None = None
    prometheus_url: str = "http://prometheus-operated.monitoring:9090"
    tick_seconds: float = 1.0  # first retry after a failed reconcile (doubling up to 30 s)
    query_timeout_seconds: float = 5.0
    notify_targets: tuple[notify_base.Target, ...] = ()
    notify_timeout_seconds: float = 5.0
    notify_retries: int = 3
    namespaces: tuple[str, ...] | None = None  # None: every namespace (cluster scope)
    workers: int = 8
    # A rollout waiting only on the outside world is woken by the change; this is the safety net.
    resync_seconds: float = 300.0
    # What rollouts may make the operator do (docs/security.md); None: from the environment
    # (checks.TrustPolicy.from_env: the operator's own Prometheus, Job images/accounts as listed).
    trust: checks.TrustPolicy | None = None


def priority_of(body: dict[str, Any]) -> Priority:
    """How urgent a reconcile of this rollout is, from its stored object alone (see `_priority`)."""
    status = body.get("status") or {}
    action = ((body.get("metadata") or {}).get("annotations") or {}).get(api.ANNOTATION_ACTION)
    return _priority(status.get("phase"), int(status.get("canaryWeight") or 0), bool(status.get("shadow")),
                     action, status.get("lastActionId"))


def _priority(phase: str | None, canary_weight: int, shadow: bool, action: str | None,
              last_action_id: str | None) -> Priority:
    """A rollback under way or an abort not yet acted on lowers traffic: first. A rollout with
    live candidate traffic whose guardrails may breach: next. Everything else can wait."""
    if phase in (api.Phase.PROMOTED, api.Phase.ROLLED_BACK, api.Phase.ABORTED, api.Phase.FAILED):
        return Priority.ROUTINE
    if phase == api.Phase.ROLLING_BACK:
        return Priority.ROLLBACK
    manual = engine.parse_action(action)
    if manual is not None and manual.verb == "abort" and manual.id != last_action_id:
        return Priority.ROLLBACK
    if canary_weight > 0 or shadow:
        return Priority.ANALYSIS
    return Priority.ROUTINE


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


class Controller:
    """Collaborators built once per operator process (kept in kopf's memo)."""

    def __init__(self, config: OperatorConfig, metrics: operator_metrics.OperatorMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.trust = config.trust or checks.TrustPolicy.from_env(
            config.prometheus_url, webhook_urls=[t.url for t in config.notify_targets])
        log.info("policy (docs/security.md): Prometheus %s; Job images %s; Job ServiceAccounts %s",
                 ", ".join(self.trust.prometheus.urls), ", ".join(self.trust.jobs.images) or "none",
                 ", ".join(self.trust.jobs.service_accounts) or "none besides the namespace default")
        on_request = metrics.api_request if metrics is not None else None
        self.client = informers.CachedClient(kube.Client.from_config(config.kubeconfig), config.namespaces,
                                             on_request=on_request)
        # PolicyRollouts come from kopf's watch (see handlers); our status writes go through to here.
        self.rollouts = informers.Store(compact=False)
        self.client.extra_stores[api.API_VERSION, api.KIND] = self.rollouts
        self.client.informers.listen(self._owned_changed)
        self.notifier = notify_dispatcher.Dispatcher(timeout=config.notify_timeout_seconds,
                                                     retries=config.notify_retries)
        observers: list[reconciler.Observer] = [notify_observer.NotificationObserver(
            self.notifier, config.notify_targets, allows=self.trust.webhooks.allows)]
        queue_observer: workqueue.Observer | None = None
        if metrics is not None:
            observers.append(operator_metrics.MetricsObserver(metrics))
            queue_observer = operator_metrics.QueueObserver(metrics)
        self._metrics: dict[str, provider.MetricProvider] = {}
        self._routers: dict[api.TrafficProvider, traffic_base.TrafficRouter] = {}
        self._locks: dict[Key, threading.Lock] = {}
        self._adopted: set[Key] = set()
        self._warned: dict[Key, tuple[int | None, str]] = {}  # the last SpecProblem said, per rollout
        self._keys_checked: dict[Key, tuple[int | None, str, str]] = {}  # spec.rewardKeySecret found usable
        self._guard = threading.Lock()
        self.platform = reconciler.Platform(
            workloads=k8s_workloads.KubernetesWorkloads(self.client),
            router_for=self.router_for,
            metrics_for=self.metrics_for,
            write_status=self.write_status,
            record_event=self.record_event,
            observers=observers,
            jobs=k8s_jobs.KubernetesJobs(self.client, self.trust.jobs),
            write_policy=self.write_policy,
        )
        self.queue = workqueue.WorkQueue(self.process, workers=config.workers, observer=queue_observer,
                                         retry_after=config.tick_seconds, max_backoff=30.0)
        if metrics is not None:
            metrics.watch_queue(self.queue.snapshot, self.client.informers.sizes)

    def start(self) -> Controller:
        self.queue.start()
        return self

    def stop(self) -> None:
        self.queue.stop()
        self.client.close()

    # ---- which rollouts are ours (kopf decides) and when they are due

    def adopt(self, body: dict[str, Any]) -> None:
        """kopf handed us this rollout (created, operator started, or peering resumed): reconcile it now."""
        key = _key(body)
        self.rollouts.put(body)
        with self._guard:
            self._adopted.add(key)
        self.queue.add(key, priority_of(body))

    def release(self, namespace: str, name: str) -> None:
        """kopf took it away (deleted, or paused for a peer): no more timers for it here."""
        with self._guard:
            self._adopted.discard((namespace, name))
        self.queue.forget((namespace, name))

    def rollout_changed(self, event: str, body: dict[str, Any]) -> None:
        """A watch event of a PolicyRollout: a human's annotation or edit is acted on at once.

        Our own status writes come back as events too; the store already holds them (written
        through), so they wake nothing.
        """
        if event == "DELETED":
            self.rollouts.remove(body)
            return
        if self.rollouts.put(body) and self._is_adopted(_key(body)):
            self.queue.add(_key(body), priority_of(body))

    def _owned_changed(self, event: str, obj: dict[str, Any]) -> None:
        """A Deployment became available, a traffic object was edited, a Job ended: wake its rollout."""
        meta = obj.get("metadata") or {}
        name = (meta.get("labels") or {}).get(api.LABEL_ROLLOUT)
        key = (meta.get("namespace") or "", name or "")
        if name and self._is_adopted(key):
            body = self.rollouts.get(*key)
            self.queue.add(key, priority_of(body) if body is not None else Priority.ROUTINE)

    def _is_adopted(self, key: Key) -> bool:
        with self._guard:
            return key in self._adopted

    def lock_for(self, namespace: str, name: str) -> threading.Lock:
        """One rollout's reconcile and its finalizer never overlap: a reconcile already running when
        the rollout is deleted would otherwise write its HTTPRoute back after the finalizer removed it."""
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget_lock(self, namespace: str, name: str) -> None:
        with self._guard:
            self._locks.pop((namespace, name), None)

    # ---- one reconcile

    def process(self, key: Hashable) -> Outcome:
        """The work queue's worker: reconcile one rollout from the caches; say when it is next due."""
        namespace, name = key  # type: ignore[misc]
        with self.lock_for(namespace, name):
            body = self.rollouts.get(namespace, name)
            deleting = body is not None and (body.get("metadata") or {}).get("deletionTimestamp")
            if not self._is_adopted((namespace, name)) or body is None or deleting:
                return Outcome(None, result="skipped")
            stale: list[str] = []  # why a rollout stored before today's rules is read without them
            try:
                rollout = api.PolicyRollout.model_validate(body)
            except pydantic.ValidationError as error:
                invalid = f"invalid spec: {checks.format_validation_error(error)}"
                older = _read_without_promotion_rules(body)
                if older is None or not _has_started(older):
                    self._reject(body, invalid)
                    return Outcome(None, result="invalid")
                # Stored before the promotion rules and moving traffic: finish it (or roll it back), say why.
                rollout, stale = older, [invalid]
            problems = checks.spec_problems(rollout, self.trust) + self._reward_key_problems(rollout)
            if problems and not _has_started(rollout):
                self._reject(body, f"the spec cannot work: {'; '.join(problems)} (fix the spec; then "
                             "`kubectl policyrollout retry` starts the rollout over)")
                return Outcome(None, result="invalid")
            if problems or stale:  # traffic is moving: the engine's own safety (inconclusive -> rollback) governs
                self._warn_once(rollout, "; ".join(stale + problems))
            started = time.monotonic()
            try:
                decision = reconciler.reconcile(self.platform, rollout, _now())
            except kube.NotFound:
                if self.rollouts.get(namespace, name) is None:
                    return Outcome(None, result="skipped")  # deleted meanwhile
                raise
        return self._next(rollout, decision, time.monotonic() - started)

    def _next(self, rollout: api.PolicyRollout, decision: types.Decision, elapsed: float) -> Outcome:
        status = decision.status
        if decision.requeue_after is None:
            # Only the outside world can move it now, and its changes wake us; finished ones sleep for good.
            if status.phase.terminal:
                return Outcome(None)
            degraded = self.client.informers.degraded  # some kind is not watched: its changes must be polled
            return Outcome(self.config.tick_seconds if degraded else self.config.resync_seconds)
        # requeue_after counts from when the reconcile started, not from its (possibly slow) end.
        priority = _priority(status.phase, status.canary_weight, status.shadow,
                             rollout.metadata.annotations.get(api.ANNOTATION_ACTION), status.last_action_id)
        return Outcome(max(decision.requeue_after - elapsed, 0.0), priority)

    def _reward_key_problems(self, rollout: api.PolicyRollout) -> list[str]:
        """Why the Secret named by spec.rewardKeySecret cannot be used (missing, unlabelled, no usable key).

        Read from the API (no watch of ours sees a user's Secret), once per generation while it is fine:
        a settled rollout costs no call. A problem fails a rollout that has not started, like any spec problem.
        """
        ref = rollout.spec.reward_key_secret
        if ref is None:
            return []
        key = (rollout.metadata.namespace, rollout.metadata.name)
        checked = (rollout.metadata.generation, ref.name, ref.key)
        with self._guard:
            if self._keys_checked.get(key) == checked:
                return []
        problem = reward_key.problem(rollout, self.client.read("v1", "Secret", ref.name, rollout.metadata.namespace))
        if problem is not None:
            return [problem]
        with self._guard:
            self._keys_checked[key] = checked
        return []

    def _warn_once(self, rollout: api.PolicyRollout, message: str) -> None:
        """A spec edited into one that cannot work, mid-rollout: one Warning per generation, not one per reconcile."""
        key, said = (rollout.metadata.namespace, rollout.metadata.name), (rollout.metadata.generation, message)
        with self._guard:
            if self._warned.get(key) == said:
                return
            self._warned[key] = said
        self.record_event(rollout, types.Event(types.EventType.WARNING, "SpecProblem", message))

    def _reject(self, body: dict[str, Any], message: str) -> None:
        """A spec that cannot work (past the CRD's schema, or semantically): say why in status and an Event,
        change nothing else. Permanent: not retried until the spec changes."""
        meta = body.get("metadata", {})
        status = body.get("status") or {}
        if status.get("message") == message:
            return
        self.client.patch_status(
            api.API_VERSION, api.KIND, meta["name"], meta.get("namespace"),
            {"phase": api.Phase.FAILED.value, "message": message, "observedGeneration": meta.get("generation")},
        )
        self.client.create_event(
            {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": meta}, "InvalidSpec", message,
            type="Warning",
        )

    def finalize(self, body: dict[str, Any]) -> None:
        """Remove the traffic objects of a deleted rollout; Deployments and Services go with the owner references."""
        namespace, name = _key(body)
        self.release(namespace, name)
        with self._guard:
            self._warned.pop((namespace, name), None)
            self._keys_checked.pop((namespace, name), None)
        if self.metrics is not None:
            self.metrics.forget(namespace, name)
        rollout = _read_without_promotion_rules(body)  # one stored before them may have traffic objects
        if rollout is None:
            return  # never got as far as creating traffic objects
        # Waits for a reconcile in flight; any later one finds the rollout released and writes nothing.
        with self.lock_for(namespace, name):
            self.router_for(rollout).finalize(rollout)
        self.forget_lock(namespace, name)

    # ---- the platform's collaborators

    def router_for(self, rollout: api.PolicyRollout) -> traffic_base.TrafficRouter:
        provider_name = rollout.spec.traffic.provider
        with self._guard:
            if provider_name not in self._routers:
                self._routers[provider_name] = traffic_factory.make_router(provider_name, self.client)
            return self._routers[provider_name]

    def metrics_for(self, rollout: api.PolicyRollout) -> provider.MetricProvider:
        url = rollout.spec.analysis.prometheus_url or self.config.prometheus_url
        refused = self.trust.prometheus.problem(url)
        if refused is not None:  # edited in mid-rollout (a new one fails before it starts): never contacted
            return allowlist.RefusedProvider(refused)
        with self._guard:
            if url not in self._metrics:
                self._metrics[url] = metrics_factory.make_metric_provider(
                    "prometheus", base_url=url, timeout=self.config.query_timeout_seconds
                )
            return self._metrics[url]

    def write_status(self, rollout: api.PolicyRollout, patch: dict[str, Any]) -> None:
        self.client.patch_status(api.API_VERSION, api.KIND, rollout.metadata.name, rollout.metadata.namespace, patch)

    def write_policy(self, rollout: api.PolicyRollout, policy: api.PolicySpec) -> None:
        # A merge patch keeps keys it does not mention: clear a lineage the previous version's spec had.
        desired = {"lineage": None, **policy.wire()}
        self.client.patch(api.API_VERSION, api.KIND, rollout.metadata.name, rollout.metadata.namespace,
                          {"spec": {"policy": desired}})

    def record_event(self, rollout: api.PolicyRollout, event: types.Event) -> None:
        involved = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": rollout.metadata.name, "namespace": rollout.metadata.namespace,
                         "uid": rollout.metadata.uid},
        }
        self.client.create_event(involved, event.reason, event.message, type=event.type.value)


_LIVE = {api.Phase.SHADOW, api.Phase.PROGRESSING, api.Phase.PAUSED, api.Phase.AWAITING_APPROVAL,
         api.Phase.ROLLING_BACK}


def _has_started(rollout: api.PolicyRollout) -> bool:
    """Whether the candidate may see traffic now: a reject would strand it there, so the engine keeps going.

    Otherwise (not started, or ended: a spec edit would start it over) the rollout is failed as it stands.
    """
    status = rollout.status
    return status.canary_weight > 0 or status.shadow or status.phase in _LIVE


def _read_without_promotion_rules(body: dict[str, Any]) -> api.PolicyRollout | None:
    try:
        return api.PolicyRollout.model_validate(body, context=api.WITHOUT_PROMOTION_RULES)
    except pydantic.ValidationError:
        return None


def _key(body: dict[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""
