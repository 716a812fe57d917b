"""The trajectory gate: a candidate judged on logged episodes, with refusals for what the estimates cannot see.

Why a module of its own: `policy-server ope --trajectories` is only its command line, and the result has the
bandit gate's shape (`evaluate.evaluate`: ``estimates`` per estimator, ``constraints`` per cost and
estimator, one ``verdict`` and a one-line ``reason``) so that the operator's status and reports read either.

Order of judgement (the first that applies decides):

1. refuse on unsupported actions: the candidate's mean probability per step on actions the logger took
   with probability below ``support_floor / K`` exceeds ``max_unsupported_mass`` (needs logged probabilities);
2. refuse when the Kish effective number of trajectories, (sum W)^2 / sum W^2 over the whole-trajectory
   weights W_i = prod_t pi_e / pi_b, is below ``min_effective_trajectories``;
3. refuse when the reward estimators disagree: max - min of their values exceeds ``agreement_tolerance``
   times the largest absolute value (a *relative* tolerance);
4. fail when an estimator's lower bound of the discounted return is below the required level (the baseline,
   or its ratio / delta), or when a cost's upper bound exceeds its budget (``max``, or the baseline's cost
   plus ``maxIncrease``); refuse a cost that the log never reported.

Bounds are bootstrap percentiles by trajectory at ``confidence`` (one-sided for the gate, two-sided for the
reported interval). A cost is estimated like the reward, with the per-step cost as the signal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy_server.join.trajectories import Trajectories
from policy_server.ope import bandit, diagnostics, evaluate
from policy_server.ope import constraints as constraints_mod
from policy_server.ope import trajectory as tr
from policy_server.ope._checks import OPEError

__all__ = ["DEFAULT_ESTIMATORS", "GateSettings", "evaluate_trajectories"]

DEFAULT_ESTIMATORS = tr.ESTIMATORS
_RANK = {"pass": 0, "fail": 1, "refuse": 2}


@dataclass(frozen=True)
class GateSettings:
    """The trajectory gate's knobs (flags of `policy-server ope --trajectories`)."""

    gamma: float
    estimators: Sequence[str] = DEFAULT_ESTIMATORS
    confidence: float = 0.95
    agreement_tolerance: float | None = 0.2
    min_effective_trajectories: float = 30.0
    support_floor: float = bandit.DEFAULT_SUPPORT_FLOOR
    max_unsupported_mass: float = 0.01
    min_lower_bound_ratio: float | None = None
    min_lower_bound_delta: float | None = None
    n_resamples: int = 200
    seed: int = 0
    reward_range: tuple[float, float] | None = None  # for PDIS's reported HCOPE bound; default: logged min, max


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _inputs(traj: Trajectories, dist: np.ndarray) -> tr.Inputs:
    return tr.Inputs(traj.observations, traj.actions, traj.propensities, dist, traj.done, traj.mask)


def _logged_value(traj: Trajectories, signal: np.ndarray, gamma: float) -> float:
    """The logger's own discounted return (or cost), averaged over trajectories: the on-policy baseline."""
    return float((np.where(traj.mask, signal, 0.0) @ (gamma ** np.arange(traj.horizon))).mean())


def _unsupported_mass(traj: Trajectories, candidate: np.ndarray, floor: float) -> float | None:
    if traj.behavior_probabilities is None:
        return None
    thin = traj.behavior_probabilities < floor
    per_step = np.where(thin, candidate, 0.0).sum(axis=2)
    return float(per_step[traj.mask].mean())


def _required(baseline: float, s: GateSettings) -> float:
    if s.min_lower_bound_ratio is not None:
        if baseline <= 0:
            raise OPEError(f"--min-lower-bound-ratio needs a positive baseline value (got {baseline:.6g}); use "
                           "--min-lower-bound-delta instead")
        return s.min_lower_bound_ratio * baseline
    return baseline + (s.min_lower_bound_delta or 0.0)


def _refusal(traj: Trajectories, candidate: np.ndarray, s: GateSettings, diag: diagnostics.Diagnostics,
             unsupported: float | None, floor: float) -> str | None:
    if unsupported is not None and unsupported > s.max_unsupported_mass:
        return (f"unsupported actions: the candidate puts {unsupported:.3g} of its probability per step on actions "
                f"the logger took with probability below {floor:.3g} (limit {s.max_unsupported_mass:g}); the log "
                "cannot evaluate them: log with more exploration or keep the candidate closer to the logger")
    if not diag.ess >= s.min_effective_trajectories:
        return (f"effective number of trajectories {diag.ess:.1f} (Kish, of {traj.n} trajectory weights) is below "
                f"the minimum {s.min_effective_trajectories:g}: the candidate departs too far from the logger over "
                "these episodes; log more episodes or lower --min-effective-trajectories")
    return None


def _agreement(entries: list[dict[str, Any]], tolerance: float | None) -> tuple[dict[str, Any], str | None]:
    values = [(e["estimator"], e["value"]) for e in entries if e["value"] is not None]
    if len(values) < 2:
        return {"spread": 0.0, "tolerance": tolerance, "relativeTo": "max |estimate|"}, None
    low, high = min(values, key=lambda v: v[1]), max(values, key=lambda v: v[1])
    spread, scale = high[1] - low[1], max(abs(v) for _, v in values)
    out = {"spread": spread, "tolerance": tolerance, "relativeTo": "max |estimate|", "scale": scale}
    if tolerance is not None and spread > tolerance * scale:
        return out, (f"estimators disagree: {low[0]} {low[1]:.4g} vs {high[0]} {high[1]:.4g}, spread {spread:.3g} "
                     f"> {tolerance:g} x {scale:.3g} (the largest |estimate|); collect more episodes or check the "
                     "value model before trusting any of them")
    return out, None


def _reward_entries(x: tr.Inputs, traj: Trajectories, baseline: np.ndarray | None, s: GateSettings
                    ) -> list[dict[str, Any]]:
    entries = []
    logged = _logged_value(traj, traj.rewards, s.gamma)
    for name in s.estimators:
        e = tr.estimate(name, x, traj.rewards, s.gamma, confidence_level=s.confidence, n_resamples=s.n_resamples,
                        seed=s.seed)
        base = logged if baseline is None else tr.estimate(
            name, _inputs(traj, baseline), traj.rewards, s.gamma, n_resamples=1, seed=s.seed).value
        required = _required(base, s)
        ok = e.lower_bound >= required
        reason = (f"{s.confidence:.0%} lower bound {e.lower_bound:.6g} of the discounted return is "
                  f"{'at or above' if ok else 'below'} the required {required:.6g} (estimate {e.value:.6g}, "
                  f"baseline {base:.6g})")
        entry = {"estimator": name, "value": _finite(e.value), "lowerBound": _finite(e.lower_bound),
                 "ciLow": _finite(e.ci_low), "ciHigh": _finite(e.ci_high), "baselineValue": _finite(base),
                 "required": _finite(required), "verdict": "pass" if ok else "fail", "reason": reason}
        if name == "pdis":  # reported beside the bootstrap bound; the verdict uses the bootstrap
            entry["hcopeLowerBound"] = _finite(tr.hcope_lower_bound(
                x, traj.rewards, s.gamma, _reward_range(traj, s.reward_range), confidence_level=s.confidence,
                seed=s.seed))
        entries.append(entry)
    return entries


def _reward_range(traj: Trajectories, given: tuple[float, float] | None) -> tuple[float, float]:
    if given is not None:
        return given
    real = traj.rewards[traj.mask]
    lo, hi = float(real.min()), float(real.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _cost_entries(x: tr.Inputs, traj: Trajectories, baseline: np.ndarray | None, s: GateSettings,
                  constraint: constraints_mod.Constraint) -> list[dict[str, Any]]:
    label, cost = constraint.label, constraint.cost
    if cost not in traj.costs:
        known = ", ".join(sorted(traj.costs)) or "none"
        return [{"criterion": label, "estimator": None, "verdict": "refuse", "budget": constraint.max,
                 "reason": f"cost {cost!r} was never reported with a reward (costs in the log: {known}); post it "
                           "with the rewards of each step (/v1/reward costs) or drop the constraint"}]
    signal = traj.costs[cost]
    confidence = constraint.confidence or s.confidence
    entries = []
    for name in constraints_mod.estimators_of(constraint, s.estimators):
        e = tr.estimate(name, x, signal, s.gamma, confidence_level=confidence, n_resamples=s.n_resamples,
                        seed=s.seed)
        base = _logged_value(traj, signal, s.gamma) if baseline is None else tr.estimate(
            name, _inputs(traj, baseline), signal, s.gamma, n_resamples=1, seed=s.seed).value
        budget = constraint.max if constraint.max is not None else base + (constraint.max_increase or 0.0)
        ok = e.upper_bound <= budget
        reason = (f"{confidence:.0%} upper bound {e.upper_bound:.6g} of the discounted cost {cost!r} is "
                  f"{'within' if ok else 'above'} its budget {budget:.6g} (estimate {e.value:.6g}, baseline "
                  f"{base:.6g})")
        entries.append({"criterion": label, "estimator": name, "value": _finite(e.value),
                        "upperBound": _finite(e.upper_bound), "budget": _finite(budget),
                        "baselineValue": _finite(base), "verdict": "pass" if ok else "fail", "reason": reason})
    return entries


def evaluate_trajectories(traj: Trajectories, candidate: np.ndarray, settings: GateSettings, *,
                          baseline: np.ndarray | None = None,
                          constraints: Sequence[constraints_mod.Constraint] = ()) -> dict[str, Any]:
    """The gate's JSON-ready result for ``candidate`` (N, T, K) probabilities pi_e(. | s_t) on the trajectories.

    ``baseline`` (N, T, K) is a baseline policy's probabilities, or None to compare with the logged returns.
    """
    s = settings
    unknown = [e for e in [*s.estimators, *(e for c in constraints for e in c.estimators or ())]
               if e not in tr.ESTIMATORS]
    if unknown or not s.estimators:
        raise OPEError(f"unknown trajectory estimator(s) {unknown}; choose from {', '.join(tr.ESTIMATORS)}")
    for name, dist in (("candidate", candidate), ("baseline", baseline)):
        if dist is not None and dist.shape != (traj.n, traj.horizon, traj.n_actions):
            raise OPEError(f"the {name} policy has {dist.shape[-1]} actions, the log has {traj.n_actions}")
    x = _inputs(traj, candidate)
    floor = bandit.support_floor(traj.n_actions, s.support_floor)
    unsupported = _unsupported_mass(traj, candidate, floor)
    diag = diagnostics.summarize_weights(tr.trajectory_weights(x), unsupported, floor)
    refusal = _refusal(traj, candidate, s, diag, unsupported, floor)
    entries = _reward_entries(x, traj, baseline, s)
    agreement, disagreement = _agreement(entries, s.agreement_tolerance)
    refusal = refusal or disagreement
    costs = [e for c in constraints for e in _cost_entries(x, traj, baseline, s, c)]
    if refusal is not None:
        verdict, reason = "refuse", refusal
    else:
        worst = max((e for e in entries + costs), key=lambda e: _RANK[e["verdict"]])
        verdict = worst["verdict"]
        prefix = worst["estimator"] if "criterion" not in worst else f"{worst['criterion']} ({worst['estimator']})"
        reason = f"{prefix}: {worst['reason']}" if worst["estimator"] else f"{worst['criterion']}: {worst['reason']}"
    deciding = next((e for e in entries if e["verdict"] == verdict), entries[0])
    return {
        "v": evaluate.RESULT_VERSION, "kind": "ope", "mode": "trajectories", "verdict": verdict, "reason": reason,
        "baseline": "logged" if baseline is None else "policy", "baselineValue": deciding["baselineValue"],
        "loggedValue": _finite(_logged_value(traj, traj.rewards, s.gamma)), "required": deciding["required"],
        "confidence": s.confidence, "bound": "bootstrap-by-trajectory", "gamma": s.gamma, "n": traj.n,
        "steps": int(traj.mask.sum()), "horizon": traj.horizon, "truncated": int(traj.truncated.sum()),
        "ess": _finite(diag.ess), "essRatio": _finite(diag.ess_ratio), "maxWeight": _finite(diag.max_weight),
        "meanWeight": _finite(diag.mean_weight), "unsupportedMass": _finite(unsupported),
        "supportFloor": floor, "agreement": agreement, "estimates": entries, "constraints": costs,
    }
