"""Prometheus metrics of the policy server: "metrics contract v1" (docs/metrics.md).

Guardrail queries of the operator are written against these names, so renaming or relabelling
one is a breaking change: bump the contract version in docs/metrics.md.

Every label set is created at start-up (every action, every shield reason, every error reason,
every declared cost) so that ratios such as ``rate(errors) / rate(decisions)`` are never empty.
The hot path costs one list append per micro-batch (:meth:`ServerMetrics.record_batch`); the
batches are folded into the counters and into :class:`BatchHistogram` (numpy bucket arrays,
one ``searchsorted`` for thousands of values) at scrape time or every ``FOLD_EVERY`` batches.
prometheus_client's own ``Histogram.observe`` takes a lock per value, which is measurable at
thousands of decisions per second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Summary, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from policy_server import shield

__all__ = [
    "CONTRACT_VERSION",
    "ERROR_REASONS",
    "LATENCY_BUCKETS",
    "BatchHistogram",
    "LogHealth",
    "LogHealthCollector",
    "ServerMetrics",
]

CONTRACT_VERSION = "v1"
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ERROR_REASONS = (
    "bad_request",
    "body_too_large",
    "not_found",
    "method_not_allowed",
    "unknown_request_id",
    "duplicate_request_id",
    "not_ready",
    "internal",
    "timeout",
    "not_logged",
    "expired_request_id",
)
MAX_COST_NAMES = 64  # undeclared cost names get label sets lazily, up to this many
MAX_REWARD_VARIANTS = 16  # variants that decided rewarded decisions (a rollout has 2-3); beyond: "other"
VALUE_SERIES = {  # policy_value_<what>_sum / _count: predicted vs realised, per rewarded prediction
    "predicted": "Predicted values (Q of the served action) of rewarded decisions, by deciding variant",
    "realized": "Rewards of those decisions (the realised one-step return), by deciding variant",
    "abs_error": "Absolute error |predicted - realised| of those decisions, by deciding variant",
    "squared_error": "Squared error (predicted - realised)^2 of those decisions, by deciding variant",
}
FOLD_EVERY = 256  # batches buffered before a fold into the metrics (folding 4,096 stalled the loop ~2 ms)


class BatchHistogram(Collector):
    """A labelled histogram fed with numpy arrays; cheap to update, rendered on scrape.

    Not thread-safe by design: the event loop owns it (updates and /metrics both run there).
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], label: str, value: str) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.label, self.value = label, value
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self.total = 0.0

    def observe_many(self, values: np.ndarray) -> None:
        self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
        self.total += float(values.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        cum = np.cumsum(self.counts)
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
        buckets.append(("+Inf", int(cum[-1])))
        fam.add_metric([self.value], buckets, self.total)
        yield fam


@dataclass(frozen=True, slots=True)
class LogHealth:
    """The decision log's state at scrape time: errors by stage, rows behind, age of the oldest."""

    errors: dict[str, int]  # stage (wal | parquet | row) -> failures so far
    backlog_rows: int
    oldest_unflushed_age_s: float


class LogHealthCollector(Collector):
    """``policy_decision_log_*``: read from the log when scraped, so the hot path pays nothing."""

    STAGES = ("wal", "parquet", "row")

    def __init__(self, variant: str, read: Callable[[], LogHealth]) -> None:
        self.variant = variant
        self.read = read

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        h = self.read()
        errors = CounterMetricFamily(
            "policy_decision_log_errors",
            "Decision-log failures: wal = a failed commit, parquet = a failed segment write (both retried), "
            "row = a decision that could not be logged and was answered 500",
            labels=["variant", "stage"],
        )
        for stage in self.STAGES:
            errors.add_metric([self.variant, stage], h.errors.get(stage, 0))
        yield errors
        backlog = GaugeMetricFamily(
            "policy_decision_log_backlog_rows", "Acknowledged rows not yet written to Parquet", labels=["variant"]
        )
        backlog.add_metric([self.variant], h.backlog_rows)
        yield backlog
        age = GaugeMetricFamily(
            "policy_decision_log_oldest_unflushed_age_seconds",
            "Seconds since the oldest acknowledged row not yet in Parquet was logged (0 when none)",
            labels=["variant"],
        )
        age.add_metric([self.variant], h.oldest_unflushed_age_s)
        yield age


class ServerMetrics:
    """All metrics of one server process (one variant), in their own registry."""

    def __init__(
        self,
        *,
        variant: str,
        name: str,
        version: str,
        actions: Sequence[str],
        features: Sequence[str],
        costs: Sequence[str] = (),
    ) -> None:
        self.variant = variant
        self.registry = r = CollectorRegistry(auto_describe=True)
        v = [variant]
        self.decisions = Counter("policy_decisions", "Decisions served, by action", ["variant", "action"], registry=r)
        self._action_children = {a: self.decisions.labels(variant, a) for a in actions}
        self.latency = BatchHistogram(
            "policy_decision_latency_seconds",
            "Seconds from a complete /v1/act request to its response",
            LATENCY_BUCKETS,
            "variant",
            variant,
        )
        r.register(self.latency)
        self.errors = Counter(
            "policy_errors", "Requests answered with an error, by reason", ["variant", "reason"], registry=r
        )
        self._errors = {reason: self.errors.labels(variant, reason) for reason in ERROR_REASONS}
        self.reward = Summary(
            "policy_reward",
            "Rewards reported on /v1/reward, by the variant that made the decision",
            ["variant"],
            registry=r,
        )
        self._rewards = {variant: self.reward.labels(*v)}  # by deciding variant (any replica takes any reward)
        self.cost = Summary(
            "policy_cost", "Costs reported on /v1/reward, by cost name", ["variant", "cost"], registry=r
        )
        self.violations = Counter(
            "policy_constraint_violations", "Rewards whose cost was > 0, by cost name", ["variant", "cost"], registry=r
        )
        self._costs: dict[tuple[str, str], tuple[object, object]] = {}  # (deciding variant, cost) -> children
        self._cost_names: set[str] = set()
        for c in costs:
            self._cost_children(c)
        self.shield = Counter(
            "policy_shield_interventions", "Shield interventions, by reason", ["variant", "reason"], registry=r
        )
        self._shield = {reason: self.shield.labels(variant, reason) for reason in shield.REASONS}
        self.drift = Gauge(
            "policy_observation_drift_psi",
            "Population stability index of each observation feature: rolling window vs the artifact's reference",
            ["variant", "feature"],
            registry=r,
        )
        self._drift = {f: self.drift.labels(variant, f) for f in features}
        for g in self._drift.values():
            g.set(0.0)
        self.drift_max = Gauge("policy_observation_drift_psi_max", "Largest per-feature PSI", ["variant"], registry=r)
        self.drift_max.labels(*v).set(0.0)
        self.drift_window = Gauge(
            "policy_observation_drift_window_size", "Observations in the drift window", ["variant"], registry=r
        )
        self.drift_window.labels(*v).set(0)
        self.info = Gauge("policy_info", "Served policy (always 1)", ["variant", "version", "name"], registry=r)
        self.info.labels(variant, version, name).set(1)
        self.batch_size = BatchHistogram(
            "policy_batch_size", "Requests per forward pass", BATCH_BUCKETS, "variant", variant
        )
        r.register(self.batch_size)
        self._pending: list[tuple[np.ndarray, np.ndarray, dict[str, int]]] = []
        self.value = {
            what: Summary(f"policy_value_{what}", doc, ["variant"], registry=r) for what, doc in VALUE_SERIES.items()
        }
        self._values: dict[str, tuple[Summary, ...]] = {}  # deciding variant -> its children, in VALUE_SERIES order

    def _cost_children(self, cost: str, variant: str | None = None) -> tuple[object, object] | None:
        variant = variant or self.variant
        children = self._costs.get((variant, cost))
        if children is None:
            if cost not in self._cost_names and len(self._cost_names) >= MAX_COST_NAMES:
                return None
            self._cost_names.add(cost)
            children = (self.cost.labels(variant, cost), self.violations.labels(variant, cost))
            self._costs[(variant, cost)] = children
        return children

    def _decided_by(self, variant: str) -> str:
        """The ``variant`` label for a reward of a decision made by ``variant`` (bounded cardinality)."""
        if variant in self._rewards or len(self._rewards) < MAX_REWARD_VARIANTS:
            return variant
        return "other"

    def can_record_cost(self, cost: str) -> bool:
        return cost in self._cost_names or len(self._cost_names) < MAX_COST_NAMES

    # ------------------------------------------------------------------ hot path (per batch)

    def record_batch(self, actions: np.ndarray, latencies_s: np.ndarray, shield_counts: dict[str, int]) -> None:
        """One micro-batch: action indices (int64; zeros for continuous), latencies, shield reasons.

        The arrays must not be modified afterwards: they are folded in later.
        """
        self._pending.append((actions, latencies_s, shield_counts))
        if len(self._pending) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Move buffered batches into the metrics (scrape time, or every FOLD_EVERY batches)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        actions = np.concatenate([p[0] for p in pending])
        counts = np.bincount(actions, minlength=len(self._action_children))
        children = list(self._action_children.values())
        for a in np.nonzero(counts)[0]:
            children[a].inc(int(counts[a]))
        self.latency.observe_many(np.concatenate([p[1] for p in pending]))
        self.batch_size.observe_many(np.fromiter((len(p[1]) for p in pending), dtype=np.float64, count=len(pending)))
        for _, _, shield_counts in pending:
            for reason, n in shield_counts.items():
                self._shield[reason].inc(n)

    def error(self, reason: str) -> None:
        self._errors[reason].inc()

    def register_log_health(self, read: Callable[[], LogHealth]) -> None:
        self.registry.register(LogHealthCollector(self.variant, read))

    def record_reward(self, reward: float, costs: dict[str, float] | None, variant: str | None = None) -> None:
        """Observe one reward of a decision made by ``variant`` (default: this server's own).

        Labelled with the deciding variant, not this process's: with several replicas and the
        router, any process may accept a reward for a decision of any variant, and guardrails
        compare variants by their decisions' outcomes. Non-finite values are ignored
        (validation bounds them; a sum must stay finite).
        """
        if not math.isfinite(reward):
            return
        label = self._decided_by(variant or self.variant)
        child = self._rewards.get(label)
        if child is None:
            child = self._rewards[label] = self.reward.labels(label)
        child.observe(reward)
        for name, value in (costs or {}).items():
            if not math.isfinite(value):
                continue
            children = self._cost_children(name, label)
            if children is None:
                continue
            summary, violations = children
            summary.observe(value)
            if value > 0:
                violations.inc()

    def init_value(self, variant: str) -> None:
        """Create the critic-error series of ``variant`` at 0 (a server whose policy predicts values)."""
        if variant not in self._values:
            self._values[variant] = tuple(s.labels(variant) for s in self.value.values())

    def record_value(self, predicted: str | float, realized: float, variant: str | None = None) -> None:
        """Compare a decision's predicted value (from its signed id) with its realised reward.

        Labelled by the deciding variant like rewards. A prediction that does not parse or is not
        finite, and a non-finite reward, are ignored: the sums must stay finite.
        """
        try:
            v = float(predicted)
        except ValueError:
            return
        if not (math.isfinite(v) and math.isfinite(realized)):
            return
        label = self._decided_by(variant or self.variant)
        if label not in self._values:
            self.init_value(label)
        err = v - realized
        for child, x in zip(self._values[label], (v, realized, abs(err), err * err), strict=True):
            child.observe(x)

    def init_envelope(self, labels: Sequence[str]) -> None:
        """Create ``policy_envelope_proposals_total`` at 0 for every ``proposed`` label (a server with an envelope).

        Bounded: the action indices (discrete) or ``dim<i>_low|dim<i>_high|budget`` (continuous).
        """
        self.proposals = Counter(
            "policy_envelope_proposals",
            "Proposed actions outside the envelope, replaced by the fallback's, by proposed action",
            ["variant", "proposed"],
            registry=self.registry,
        )
        self._proposals = {label: self.proposals.labels(self.variant, label) for label in labels}

    def record_proposals(self, counts: dict[str, int]) -> None:
        for label, n in counts.items():
            self._proposals[label].inc(n)

    def set_drift(self, psi: dict[str, float], window: int) -> None:
        for feature, value in psi.items():
            self._drift[feature].set(value)
        self.drift_max.labels(self.variant).set(max(psi.values(), default=0.0))
        self.drift_window.labels(self.variant).set(window)

    def render(self) -> bytes:
        self.fold()
        return generate_latest(self.registry)
