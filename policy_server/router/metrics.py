"""Prometheus metrics of the router, by variant (metrics contract v1, docs/metrics.md and docs/router.md).

Names follow the policy server's contract: ``policy_`` prefix, a ``variant`` label on everything
per variant, every label set created at start so ratios are never empty. Shadow agreement is
exported both as counters (for ``rate()`` windows in guardrails) and as cumulative gauges.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from policy_server.router.shadow_ope import ShadowEstimator

__all__ = ["FALLBACK_REASONS", "SERVED_BY", "RouterMetrics"]

# The policy server's buckets (policy_server.metrics.LATENCY_BUCKETS, contract v1), copied because
# importing that module loads torch, which the router never needs (a test keeps them equal).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
VARIANTS = ("stable", "candidate")
SERVED_BY = ("stable", "candidate", "fallback")
FALLBACK_REASONS = ("error", "timeout", "status")
SHADOW_OUTCOMES = ("ok", "error", "timeout", "status", "dropped")
REWARD_OUTCOMES = ("forwarded", "rejected", "refused", "failed")


class FastHistogram(Collector):
    """A labelled histogram updated with one bisect and one list increment (no lock, no loop).

    prometheus_client's ``Histogram.observe`` walks the buckets in Python under a lock; on the
    router's hot path that is measurable. Not thread-safe by design: the event loop owns it.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], label: str, values: Sequence[str]
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = list(buckets)
        self.counts = {v: [0] * (len(buckets) + 1) for v in values}
        self.sums = dict.fromkeys(values, 0.0)

    def observe(self, value: str, seconds: float) -> None:
        self.counts[value][bisect.bisect_left(self.bounds, seconds)] += 1
        self.sums[value] += seconds

    def collect(self) -> Iterable[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, counts in self.counts.items():
            cum, buckets = 0, []
            for bound, n in zip(self.bounds, counts, strict=False):
                cum += n
                buckets.append((repr(float(bound)), cum))
            buckets.append(("+Inf", cum + counts[-1]))
            fam.add_metric([value], buckets, self.sums[value])
        yield fam


class FastCounter(Collector):
    """A labelled counter kept as plain ints (no lock): the event loop owns it."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], keys: Iterable[tuple[str, ...]]) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.values = dict.fromkeys(keys, 0)

    def collect(self) -> Iterable[CounterMetricFamily]:
        fam = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.values.items():
            fam.add_metric(list(key), value)
        yield fam


class ShadowEstimates(Collector):
    """The shadow candidate's off-policy estimates, computed at scrape time (nothing on the hot path).

    `policy_router_shadow_estimate{quantity, bound}`: quantity `reward` or `cost:<name>`, bound
    `point`, `lower`, `upper`, or `baseline` (the stable's own mean on the same requests); NaN until
    enough rewards were joined, so a guardrail on it is inconclusive, never passing.
    """

    def __init__(self, estimator: ShadowEstimator) -> None:
        self.estimator = estimator

    def collect(self) -> Iterable[GaugeMetricFamily]:
        values = GaugeMetricFamily(
            "policy_router_shadow_estimate",
            "Shadow candidate's SNIPS estimate from the stable's live decisions, with bounds",
            labels=["variant", "quantity", "bound"],
        )
        joined = GaugeMetricFamily(
            "policy_router_shadow_rewards_joined",
            "Rewards of mirrored requests joined to the candidate's would-be decision",
            labels=["variant", "quantity"],
        )
        ess = GaugeMetricFamily(
            "policy_router_shadow_effective_sample_size",
            "Kish effective sample size of the shadow estimate",
            labels=["variant", "quantity"],
        )
        for quantity, estimate in sorted(self.estimator.estimates().items()):
            nan = float("nan")
            for bound in ("point", "lower", "upper", "baseline"):
                values.add_metric(["candidate", quantity, bound], getattr(estimate, bound) if estimate else nan)
            joined.add_metric(["candidate", quantity], float(self.estimator.joined(quantity)))
            ess.add_metric(["candidate", quantity], estimate.effective_sample_size if estimate else nan)
        yield values
        yield joined
        yield ess


class RouterMetrics:
    def __init__(self, shadow_estimator: ShadowEstimator | None = None) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        if shadow_estimator is not None:
            r.register(ShadowEstimates(shadow_estimator))
        self.requests = FastCounter(
            "policy_router_requests",
            "Decisions answered through the router, by the variant whose action was served and how",
            ["variant", "served_by"],
            [("stable", "stable"), ("candidate", "candidate"), ("stable", "fallback")],
        )
        r.register(self.requests)
        self._requests = self.requests.values
        self.assigned = FastCounter(
            "policy_router_assignments",
            "Requests assigned to each variant (before any fallback)",
            ["variant"],
            [(v,) for v in VARIANTS],
        )
        r.register(self.assigned)
        self._assigned = self.assigned.values
        self.latency = FastHistogram(
            "policy_router_latency_seconds",
            "Seconds from a complete request to the answer, by served variant",
            LATENCY_BUCKETS,
            "variant",
            VARIANTS,
        )
        r.register(self.latency)
        self.errors = Counter(
            "policy_router_upstream_errors",
            "Failed calls to a policy server, by variant and reason",
            ["variant", "reason"],
            registry=r,
        )
        self._errors = {(v, why): self.errors.labels(v, why) for v in VARIANTS for why in FALLBACK_REASONS}
        self.fallbacks = Counter(
            "policy_router_fallbacks",
            "Candidate requests answered by the stable/fallback policy, by reason",
            ["variant", "reason"],
            registry=r,
        )
        self._fallbacks = {why: self.fallbacks.labels("candidate", why) for why in FALLBACK_REASONS}
        self.failed = Counter(
            "policy_router_failed_requests",
            "Requests the router could not answer with a decision (502/504)",
            ["variant"],
            registry=r,
        )
        self._failed = {v: self.failed.labels(v) for v in VARIANTS}
        self.weight = Gauge(
            "policy_router_weight", "Percent of requests routed to each variant", ["variant"], registry=r
        )
        self.shadow_on = Gauge(
            "policy_router_shadow_enabled", "1 while the candidate is shadowed", ["variant"], registry=r
        )
        self.generation = Gauge(
            "policy_router_config_generation", "Generation of the applied routing table", registry=r
        )
        self.propagation = Gauge(
            "policy_router_config_propagation_seconds",
            "Seconds from the operator's decision (table updatedAt) to the router applying it",
            registry=r,
        )
        # endpoints and rewards
        self.endpoints_gauge = Gauge(
            "policy_router_endpoints",
            "Endpoints of each variant, by state (ready, or out after a connection error until /readyz answers)",
            ["variant", "state"],
            registry=r,
        )
        self.retries = Counter(
            "policy_router_retries",
            "Requests re-sent to another endpoint of the same variant after a connection error",
            ["variant"],
            registry=r,
        )
        self._retries = {v: self.retries.labels(v) for v in VARIANTS}
        self.rewards = Counter(
            "policy_router_rewards",
            "Rewards posted to the router: forwarded (2xx upstream), rejected (4xx upstream, e.g. 409 duplicate), "
            "refused (by the router: forged, malformed or unknown id), failed (no endpoint answered)",
            ["outcome"],
            registry=r,
        )
        self._rewards = {o: self.rewards.labels(o) for o in REWARD_OUTCOMES}
        # shadow
        self.shadow_requests = Counter(
            "policy_router_shadow_requests",
            "Mirrored requests to the candidate, by outcome",
            ["variant", "outcome"],
            registry=r,
        )
        self._shadow = {o: self.shadow_requests.labels("candidate", o) for o in SHADOW_OUTCOMES}
        self.shadow_latency = FastHistogram(
            "policy_router_shadow_latency_seconds",
            "Candidate latency on mirrored requests",
            LATENCY_BUCKETS,
            "variant",
            ("candidate",),
        )
        r.register(self.shadow_latency)
        self.shadow_compared = Counter(
            "policy_router_shadow_compared",
            "Mirrored decisions compared with the served one",
            ["variant"],
            registry=r,
        )
        self.shadow_agreed = Counter(
            "policy_router_shadow_agreements",
            "Discrete actions: mirrored decisions equal to the served one",
            ["variant"],
            registry=r,
        )
        self.shadow_abs_diff = Counter(
            "policy_router_shadow_abs_diff",
            "Continuous actions: sum over compared requests of the mean |a_c - a_s|",
            ["variant"],
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "policy_router_shadow_agreement_ratio",
            "Discrete actions: share of mirrored decisions equal to served",
            ["variant"],
            registry=r,
        )
        self.shadow_mad = Gauge(
            "policy_router_shadow_mean_abs_diff",
            "Continuous actions: mean |a_candidate - a_stable| so far",
            ["variant"],
            registry=r,
        )
        self._cmp = (
            self.shadow_compared.labels("candidate"),
            self.shadow_agreed.labels("candidate"),
            self.shadow_abs_diff.labels("candidate"),
        )
        self._n_cmp = 0
        self._n_agree = 0
        self._sum_diff = 0.0
        self._n_cont = 0
        for v in VARIANTS:
            self.weight.labels(v).set(0)
        self.shadow_on.labels("candidate").set(0)
        self.shadow_agreement.labels("candidate").set(float("nan"))
        self.shadow_mad.labels("candidate").set(float("nan"))

    # ---- hot path
    def served(self, variant: str, served_by: str, seconds: float) -> None:
        self._requests[variant, served_by] += 1
        self.latency.observe(variant, seconds)

    def assign(self, variant: str) -> None:
        self._assigned[(variant,)] += 1

    def upstream_error(self, variant: str, reason: str) -> None:
        self._errors[variant, reason].inc()

    def fallback(self, reason: str) -> None:
        self._fallbacks[reason].inc()

    def fail(self, variant: str) -> None:
        self._failed[variant].inc()

    def retry(self, variant: str) -> None:
        self._retries[variant].inc()

    def reward(self, outcome: str) -> None:
        self._rewards[outcome].inc()

    def endpoints(self, counts: dict[str, tuple[int, int]]) -> None:
        """(ready, total) endpoints per variant; a variant absent from ``counts`` has none."""
        for v in VARIANTS:
            ready, n = counts.get(v, (0, 0))
            self.endpoints_gauge.labels(v, "ready").set(ready)
            self.endpoints_gauge.labels(v, "out").set(n - ready)

    def shadow_outcome(self, outcome: str, seconds: float | None = None) -> None:
        self._shadow[outcome].inc()
        if seconds is not None:
            self.shadow_latency.observe("candidate", seconds)

    def shadow_compare(self, agreed: bool | None, abs_diff: float | None) -> None:
        compared, agreements, diffs = self._cmp
        compared.inc()
        self._n_cmp += 1
        if agreed is not None:
            self._n_agree += agreed
            if agreed:
                agreements.inc()
            self.shadow_agreement.labels("candidate").set(self._n_agree / self._n_cmp)
        if abs_diff is not None:
            diffs.inc(abs_diff)
            self._sum_diff += abs_diff
            self._n_cont += 1
            self.shadow_mad.labels("candidate").set(self._sum_diff / self._n_cont)

    def table(self, weight: float, shadow: bool, generation: int, propagation_s: float | None) -> None:
        self.weight.labels("candidate").set(weight)
        self.weight.labels("stable").set(100 - weight)
        self.shadow_on.labels("candidate").set(1 if shadow else 0)
        self.generation.set(generation)
        if propagation_s is not None:
            self.propagation.set(propagation_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
