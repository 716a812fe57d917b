"""The offline-evaluation gate: should this candidate go on to shadow and canary?

Three verdicts, checked in this order:

- `refuse`: the logs cannot answer the question (evaluation-policy mass on actions the behaviour policy never or
  almost never takes, unknown support, a mean importance weight clearly away from 1, too few effective samples,
  non-finite numbers). A refusal is not a failure of the candidate; it says "collect better data". It never turns
  into a pass.
- `fail`: a (1 - delta) lower confidence bound on the candidate's value is below the required level.
- `pass`: the lower bound clears the required level.

The required level is the baseline's value, optionally scaled (`min_lower_bound_ratio`, e.g. 0.98 tolerates a 2 %
regression of a positive baseline) or shifted (`delta`: baseline + delta).
"""

from __future__ import annotations

import dataclasses
import enum
import math

import numpy as np
from scipy import stats

from policy_server.ope import confidence as conf
from policy_server.ope._checks import OPEInputError
from policy_server.ope.diagnostics import Diagnostics

__all__ = ["DEFAULT_WEIGHT_BAND", "GateResult", "Verdict", "gate"]

DEFAULT_WEIGHT_BAND = 0.1  # the mean importance weight must be consistent with 1 +- this


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    REFUSE = "refuse"


@dataclasses.dataclass(frozen=True)
class GateResult:
    verdict: Verdict
    reason: str
    estimate: float
    lower_bound: float | None
    required: float
    baseline_value: float
    confidence: float
    bound: str
    n: int
    ess: float
    unsupported_mass: float | None
    mean_weight: float | None = None

    def as_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["verdict"] = str(self.verdict)
        return out


def _required_level(baseline: float, ratio: float | None, delta: float | None) -> float:
    if ratio is not None and delta is not None:
        raise OPEInputError("give either min_lower_bound_ratio or delta, not both")
    if ratio is not None:
        if baseline <= 0:
            raise OPEInputError(
                f"min_lower_bound_ratio needs a positive baseline value (got {baseline}); use delta= (an absolute "
                "margin) for baselines that can be zero or negative"
            )
        return ratio * baseline
    if delta is not None:
        return baseline + delta
    return baseline


def _never(floor: float) -> str:
    return "never takes" if floor <= 0 else f"takes with probability below {floor:.3g}"


def _weight_check(diagnostics: Diagnostics, band: float, confidence: float) -> str | None:
    """The self-normalisation check: a refusal reason when the mean weight is clearly outside 1 +- band.

    E_b[pi_e / pi_b] = 1 when the behaviour policy covers the evaluation policy. Its two-sided Student-t interval
    (at the gate's confidence) lying wholly below 1 - band means the candidate lives where the logs hold almost no
    decisions (near-deficient support: the unobserved actions' rewards are missing from every estimate), wholly
    above 1 + band that the logged propensities are wrong. A wide interval (heavy weights, little data) is no
    evidence either way and passes this check; the ESS check and the bound deal with it.
    """
    if not 0.0 < band < 1.0:
        raise OPEInputError(f"`weight_band` must lie in (0, 1), got {band}")
    se = diagnostics.mean_weight_se
    if se is None or diagnostics.n < 2:
        return None
    half = float(stats.t.ppf(0.5 + confidence / 2.0, diagnostics.n - 1)) * se
    low, high = diagnostics.mean_weight - half, diagnostics.mean_weight + half
    if low <= 1.0 + band and high >= 1.0 - band:
        return None
    where = (
        f"the candidate puts about {1.0 - diagnostics.mean_weight:.0%} of its probability where the logs hold "
        "almost no decisions (near-deficient support); log with more exploration of its actions"
        if high < 1.0 - band
        else "the logged propensities are too small for the actions taken; check that the log records the "
        "probabilities the logging policy sampled from"
    )
    return (
        f"self-normalisation check failed: mean importance weight {diagnostics.mean_weight:.4g} "
        f"({confidence:.0%} interval [{low:.4g}, {high:.4g}]) lies outside 1 +- {band:g}, which full support "
        f"guarantees in expectation; {where}"
    )


def gate(
    contributions: object,
    baseline_value: float,
    *,
    diagnostics: Diagnostics,
    min_lower_bound_ratio: float | None = None,
    delta: float | None = None,
    confidence: float = 0.95,
    bound: conf.BoundMethod = "student_t",
    min_ess: float = 100.0,
    max_unsupported_mass: float | None = 0.01,
    weight_band: float | None = DEFAULT_WEIGHT_BAND,
    value_range: tuple[float, float] | None = None,
    precomputed_lower_bound: float | None = None,
    rng: int | np.random.Generator | None = None,
) -> GateResult:
    """Judge a candidate from its per-sample contributions (e.g. `bandit.dr_rounds`) and weight diagnostics.

    `max_unsupported_mass=None` skips the support check explicitly; otherwise unknown support (diagnostics computed
    without the behaviour distribution) is a refusal, because IPS/DR silently miss rewards they never observed.
    `weight_band=None` skips the self-normalisation check (see `_weight_check`). `precomputed_lower_bound` is a
    lower bound the caller computed by `bound` in a form this function cannot (SNIPS' ratio under Bernstein).
    """
    if not 0.0 < confidence < 1.0:
        raise OPEInputError(f"`confidence` must lie in (0, 1), got {confidence}")
    baseline = float(baseline_value)
    if not math.isfinite(baseline):
        raise OPEInputError(f"`baseline_value` must be finite, got {baseline_value}")
    required = _required_level(baseline, min_lower_bound_ratio, delta)
    x = np.asarray(contributions, dtype=np.float64).ravel()
    estimate = float(x.mean()) if x.size else float("nan")

    def result(verdict: Verdict, reason: str, lb: float | None = None) -> GateResult:
        return GateResult(
            verdict=verdict,
            reason=reason,
            estimate=estimate,
            lower_bound=lb,
            required=required,
            baseline_value=baseline,
            confidence=confidence,
            bound=bound,
            n=int(x.size),
            ess=diagnostics.ess,
            unsupported_mass=diagnostics.unsupported_mass,
            mean_weight=diagnostics.mean_weight,
        )

    if x.size < 2 or not np.isfinite(x).all():
        return result(Verdict.REFUSE, f"need at least 2 finite contributions, got {x.size} (non-finite values?)")
    if max_unsupported_mass is not None:
        if diagnostics.unsupported_mass is None:
            return result(
                Verdict.REFUSE,
                "support unknown: compute diagnostics with behavior_dist, or pass max_unsupported_mass=None to "
                "accept the risk explicitly",
            )
        if diagnostics.unsupported_mass > max_unsupported_mass:
            return result(
                Verdict.REFUSE,
                f"deficient support: the candidate puts {diagnostics.unsupported_mass:.3%} of its probability on "
                f"actions the behaviour policy {_never(diagnostics.support_floor)} (limit "
                f"{max_unsupported_mass:.3%}); log with more exploration or restrict the candidate's actions",
            )
    if weight_band is not None:
        problem = _weight_check(diagnostics, weight_band, confidence)
        if problem is not None:
            return result(Verdict.REFUSE, problem)
    if diagnostics.ess < min_ess:
        return result(
            Verdict.REFUSE,
            f"effective sample size {diagnostics.ess:.1f} is below {min_ess:g} (max weight "
            f"{diagnostics.max_weight:.3g}): the candidate differs too much from the logging policy for this much "
            "data; log more decisions or evaluate a closer candidate",
        )
    if precomputed_lower_bound is not None:
        lb = float(precomputed_lower_bound)
    else:
        lb = conf.lower_bound(x, 1.0 - confidence, bound, value_range=value_range, rng=rng)
    if not math.isfinite(lb):
        return result(Verdict.REFUSE, f"the {bound} lower bound is not finite", lb)
    named = f"({conf.ASSUMPTIONS.get(bound, bound)})"
    if lb < required:
        return result(
            Verdict.FAIL,
            f"{confidence:.0%} lower bound {lb:.6g} is below the required {required:.6g} "
            f"(estimate {estimate:.6g}, baseline {baseline:.6g}) {named}",
            lb,
        )
    return result(
        Verdict.PASS,
        f"{confidence:.0%} lower bound {lb:.6g} clears the required {required:.6g} (estimate {estimate:.6g}) {named}",
        lb,
    )
