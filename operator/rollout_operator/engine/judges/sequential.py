"""`sequential`: stop early for harm (roll back) or sufficiency (end a timed pause) on reward.

Every guardrail is still judged exactly as `threshold` does. On top, each analysis reads the
cumulative Prometheus counters `policy_reward_sum` / `policy_reward_count` (or the cost pair)
of both variants, turns them into per-interval means, and updates an always-valid normal-mixture
confidence sequence (`mixture`) for candidate minus stable (sign flipped for a cost, so
positive always means "candidate better"):

* harm: the whole sequence lies below 0 -> roll back (false-rollback probability <= alpha over
  the rollout, however many intervals are looked at);
* sufficiency: its lower end is above -margin (margin = minDetectableEffect x |stable mean|)
  -> the candidate is no worse than the margin; with `allowEarlyAdvance` a timed pause ends.

Assumptions (docs/guardrails.md): per-decision rewards independent with a common variance
sigma^2 within each variant, and stable-vs-candidate differences in interval means roughly
normal (true for a few hundred rewards per interval by the CLT). Pairing by interval removes
drift that hits both variants alike (time of day, traffic mix). sigma is `rewardStdDev` when
given (the normal mixture), else unknown: Lai's scale-invariant t-mixture integrates it out, so no
variance estimate enters the decision (only the mixture's tuning, fixed once after the burn-in).
Interval means that are autocorrelated within a variant (sticky callers keep returning to one
variant) would fake evidence, so the test runs on batch means of `batchIntervals` consecutive
intervals (20 by default when traffic is sticky): the t-mixture's scale-invariance absorbs the
batch means' larger variance, and decisions come at batch ends (`_fold`).
A variant's counters were reset (a server restart) when its count went down; then, as with
Prometheus' `increase()`, the new values are the increments. A falling sum is no reset: sums of
negative rewards (costs, penalties) legitimately go down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

from rollout_operator import api
from rollout_operator.engine.judges import base, mixture, threshold
from rollout_operator.engine.types import Measurement

__all__ = ["SERIES_KEYS", "STICKY_BATCH", "SequentialJudge", "batch_intervals", "increments", "update"]

SERIES_KEYS = ("candidate_sum", "candidate_count", "stable_sum", "stable_count")

# The mixture prior on the effect is centred at 0 with this many margins of spread: wide enough that
# a regression several times the margin is caught nearly as fast as by a test tuned to it.
PRIOR_SCALE = 2.0

# Intervals per batch mean when traffic is sticky and the spec names none: at per-variant AR(1) interval noise with
# phi = 0.9 this keeps A/A false rollbacks below alpha over 150 intervals (bench/calibration.py).
STICKY_BATCH = 20

COLLECTING = "Collecting"
HARM = "Harm"
NO_WORSE = "NoWorseThanMargin"
UNDECIDED = "Undecided"


def _series_templates(spec: api.JudgeSpec) -> tuple[str, str, dict[str, str]]:
    if spec.metric is api.JudgeMetric.COST:
        assert spec.cost is not None  # validated by the API
        return "cost-sum", "cost-count", {"cost": spec.cost}
    return "reward-sum", "reward-count", {}


def _metric_name(spec: api.JudgeSpec) -> str:
    return f"cost {spec.cost}" if spec.metric is api.JudgeMetric.COST else "reward"


def batch_intervals(spec: api.PolicyRolloutSpec) -> int:
    """Intervals per batch mean: the judge's `batchIntervals`, else STICKY_BATCH for sticky traffic, else 1.

    Without a sticky key every request picks its variant afresh, so whatever makes rewards
    autocorrelated over time hits both variants alike and cancels in the paired difference.
    """
    judge = spec.analysis.judge
    if judge.batch_intervals is not None:
        return judge.batch_intervals
    return STICKY_BATCH if spec.traffic.sticky_key else 1


def update(
    spec: api.JudgeSpec,
    state: api.JudgeStatus | None,
    raw: Mapping[str, float | None],
    batch: int | None = None,
) -> tuple[api.JudgeStatus, str | None]:
    """Fold one analysis' counter values into the state; returns (new state, why unusable or None).

    `batch` (intervals per batch mean, default `spec.batchIntervals` or 1) is fixed in the state
    at the first reading. Pure and deterministic: the same state and values always give the same
    new state, so a restarted operator that replays an analysis from status computes the same statistic.
    """
    new = (state or api.JudgeStatus(kind="sequential")).model_copy()  # only last_raw is mutable inside
    new.last_raw = dict(new.last_raw)
    values: dict[str, float] = {}
    missing = []
    for key in SERIES_KEYS:
        value = raw.get(key)
        if value is None or not math.isfinite(value):
            missing.append(key)
        else:
            values[key] = float(value)
    if missing:
        new.consecutive_inconclusive += 1
        return new, f"no value for {', '.join(missing)}"
    if not new.last_raw:
        new.last_raw = values
        new.consecutive_inconclusive = 0
        new.decision = COLLECTING
        new.batch_intervals = batch or spec.batch_intervals or 1
        new.message = "first reading of the counters taken; the comparison starts at the next analysis"
        return new, None
    delta = increments(new.last_raw, values)
    new.last_raw = values
    n_c, n_s = delta["candidate_count"], delta["stable_count"]
    if n_c <= 0 or n_s <= 0:
        new.consecutive_inconclusive += 1
        who = "candidate" if n_c <= 0 else "stable"
        return new, f"the {who} variant reported no {_metric_name(spec)} during the interval"
    sign = -1.0 if spec.metric is api.JudgeMetric.COST else 1.0
    d = sign * (delta["candidate_sum"] / n_c - delta["stable_sum"] / n_s)
    w = 1.0 / (1.0 / n_c + 1.0 / n_s)
    new.consecutive_inconclusive = 0
    new.intervals += 1
    new.candidate_sum += delta["candidate_sum"]
    new.candidate_count += n_c
    new.stable_sum += delta["stable_sum"]
    new.stable_count += n_s
    if _fold(new, w, d):
        _conclude(spec, new)
    elif new.lower is not None and new.upper is not None:  # the last batch's decision stands until the next
        new.message = (
            f"{_verdict(spec, new)}; batch {new.batches + 1} open ({new.open_intervals}/{new.batch_intervals} "
            "intervals), next decision at its end"
        )
    else:
        new.message = _collecting(spec, new)
    return new, None


def _fold(state: api.JudgeStatus, w: float, d: float) -> bool:
    """Add one interval (weight w, difference d) to the open batch; True when that closed it.

    A closed batch enters the test as one observation: its weighted mean with weight W_b = sum w.
    With one interval per batch this is the per-interval test exactly.
    """
    state.open_intervals += 1
    state.open_weight += w
    state.open_weighted_diff += w * d
    if state.open_intervals < state.batch_intervals:
        return False
    mean = state.open_weighted_diff / state.open_weight
    state.batches += 1
    state.weight_sum += state.open_weight
    state.weighted_diff_sum += state.open_weighted_diff
    state.weighted_diff_sq_sum += state.open_weight * mean * mean
    state.open_intervals, state.open_weight, state.open_weighted_diff = 0, 0.0, 0.0
    return True


def _collecting(spec: api.JudgeSpec, state: api.JudgeStatus) -> str:
    batches = f", {state.batches}/2 batches of {state.batch_intervals}" if state.batch_intervals > 1 else ""
    return (
        f"collecting: {state.intervals}/{spec.min_intervals} intervals{batches}, "
        f"{state.candidate_count:g}/{spec.min_samples} candidate and {state.stable_count:g}/{spec.min_samples} "
        f"stable samples"
    )


def increments(last: Mapping[str, float], values: Mapping[str, float]) -> dict[str, float]:
    """Per-interval increments of each variant's (sum, count), with Prometheus' reset rule on the counts.

    A variant's counters were reset (a server restart) when its *count* went down: then, as
    Prometheus' `increase()` does, the new values are the increments of both its sum and count.
    A falling sum alone is no reset: sums of negative rewards, costs or penalties go down.
    """
    out: dict[str, float] = {}
    for variant in ("candidate", "stable"):
        sum_key, count_key = f"{variant}_sum", f"{variant}_count"
        if values[count_key] < last.get(count_key, 0.0):
            out[sum_key], out[count_key] = values[sum_key], values[count_key]
        else:
            out[sum_key] = values[sum_key] - last.get(sum_key, 0.0)
            out[count_key] = values[count_key] - last.get(count_key, 0.0)
    return out


def _conclude(spec: api.JudgeSpec, state: api.JudgeStatus) -> None:
    estimate = state.weighted_diff_sum / state.weight_sum
    stable_mean = state.stable_sum / state.stable_count
    margin = spec.min_detectable_effect * (abs(stable_mean) if stable_mean != 0 else 1.0)
    state.estimate, state.margin = estimate, margin
    if (
        state.intervals < spec.min_intervals
        or state.batches < 2
        or state.candidate_count < spec.min_samples
        or state.stable_count < spec.min_samples
    ):
        state.decision = COLLECTING
        state.lower = state.upper = None
        state.message = _collecting(spec, state)
        return
    if spec.reward_std_dev is not None:
        # Known sigma: the normal mixture (Robbins), tuned to the margin.
        if state.mixture_scale is None:  # fixed once: a prior chosen from later data voids the bound
            state.mixture_scale = PRIOR_SCALE * margin
        r = mixture.radius(spec.reward_std_dev**2, state.weight_sum, state.mixture_scale, spec.alpha)
        state.lower, state.upper = estimate - r, estimate + r
    else:
        # Unknown sigma: Lai's t-mixture, scale-invariant. Its prior on effect/sigma is centred on
        # margin/sigma, with sigma read once at the end of the burn-in (the only use of an estimate).
        if state.mixture_precision is None:
            spread = state.weighted_diff_sq_sum - state.weighted_diff_sum * estimate
            sigma2 = spread / (state.batches - 1)
            if sigma2 <= 0:
                state.decision = COLLECTING
                state.message = "collecting: the per-interval differences do not vary yet"
                return
            state.mixture_precision = sigma2 / (PRIOR_SCALE * margin) ** 2
        state.lower, state.upper = mixture.t_bounds(
            state.weighted_diff_sum,
            state.weighted_diff_sq_sum,
            state.weight_sum,
            state.batches,
            state.mixture_precision,
            spec.alpha,
        )
    if state.upper < 0:
        state.decision = HARM
    elif state.lower > -margin:
        state.decision = NO_WORSE
    else:
        state.decision = UNDECIDED
    state.message = _verdict(spec, state)


def _verdict(spec: api.JudgeSpec, state: api.JudgeStatus) -> str:
    assert state.estimate is not None and state.lower is not None and state.upper is not None
    batches = f" ({state.batches} batches of {state.batch_intervals})" if state.batch_intervals > 1 else ""
    return (
        f"candidate - stable {_metric_name(spec)} (better is positive): {state.estimate:+.4g}, "
        f"{1 - spec.alpha:.0%} always-valid interval [{state.lower:+.4g}, {state.upper:+.4g}], "
        f"margin {state.margin:.4g}, after {state.intervals - state.open_intervals} intervals{batches}: "
        f"{state.decision}"
    )


class SequentialJudge:
    kind = "sequential"

    def series(self, spec: api.PolicyRolloutSpec) -> dict[str, base.SeriesQuery]:
        sum_template, count_template, params = _series_templates(spec.analysis.judge)
        return {
            "candidate_sum": base.SeriesQuery(sum_template, "candidate", params),
            "candidate_count": base.SeriesQuery(count_template, "candidate", params),
            "stable_sum": base.SeriesQuery(sum_template, "stable", params),
            "stable_count": base.SeriesQuery(count_template, "stable", params),
        }

    def judge(
        self,
        spec: api.PolicyRolloutSpec,
        status: api.PolicyRolloutStatus,
        measurements: Mapping[str, Measurement],
        now: datetime,
    ) -> base.Judgement:
        guardrails = threshold.ThresholdJudge().judge(spec, status, measurements, now)
        judge_spec = spec.analysis.judge
        raw: dict[str, float | None] = {}
        errors = []
        for key in SERIES_KEYS:
            measurement = measurements.get(base.SERIES_PREFIX + key)
            raw[key] = None if measurement is None else measurement.value
            if measurement is not None and measurement.error:
                errors.append(f"{key}: {measurement.error}")
        previous = status.judge if status.judge is not None and status.judge.kind == self.kind else None
        state, unusable = update(judge_spec, previous, raw, batch_intervals(spec))
        warnings = list(guardrails.warnings)
        rollback = guardrails.rollback
        sufficient = None
        name = _metric_name(judge_spec)
        if unusable is not None:
            detail = f"{unusable}" + (f" ({'; '.join(errors)})" if errors else "")
            state.message = f"inconclusive: {detail}"
            warnings.append(
                base.Finding(
                    "JudgeInconclusive",
                    f"sequential judge: {detail}; "
                    f"{state.consecutive_inconclusive}/{judge_spec.inconclusive_limit} consecutive inconclusive",
                )
            )
            if rollback is None and state.consecutive_inconclusive >= judge_spec.inconclusive_limit:
                rollback = base.Finding(
                    "InconclusiveLimitExceeded",
                    f"sequential judge: {detail}; inconclusive {state.consecutive_inconclusive} time(s) in a row "
                    f"(judge.inconclusiveLimit {judge_spec.inconclusive_limit}), rolling back to "
                    f"{status.stable_version}",
                )
        elif state.decision == HARM and rollback is None:
            rollback = base.Finding(
                "SequentialHarm",
                f"sequential judge: the candidate's {name} is worse than stable's ({state.message}), "
                f"rolling back to {status.stable_version}",
            )
        elif state.decision == NO_WORSE and judge_spec.allow_early_advance:
            sufficient = base.Finding("SequentialNoWorse", f"sequential judge: {state.message}")
        return base.Judgement(
            guardrails=guardrails.guardrails,
            state=state,
            warnings=warnings,
            rollback=rollback,
            inconclusive=guardrails.inconclusive,
            sufficient=sufficient,
        )
