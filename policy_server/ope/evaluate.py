"""Judge a candidate policy on logged decisions: estimates, intervals, diagnostics and one verdict.

Why a module of its own: `policy-server ope` (what the operator's offline-evaluation Job runs)
is only its command line, and `policy-server train` reports its artifact's value with the same
functions, so a trained artifact's report and the gate's verdict agree.

Steps: run the candidate's model over the logged observations in batches (CPU or CUDA) and turn
its outputs into action probabilities with its own exploration rule (`policy_probabilities`:
`policy.discrete_probabilities`, the rule the server samples with); fit a cross-fitted ridge
reward model per action for DM / DR (`fit_reward_model`); estimate with every requested
estimator (`ope.bandit`), bootstrap an interval, and gate each estimate against the baseline (a
baseline policy's estimate by the same estimator, or the mean logged reward). The verdict is
the worst of the estimators' verdicts: refuse > fail > pass (`evaluate`).

The result is a JSON-ready dict (`RESULT_VERSION`); `compact` fits it into `RESULT_LIMIT` bytes
because the operator reads it back from a Job's termination message. scipy (through `gate` and
`confidence`) and torch (through the artifact) are imported only when used.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policy_server.ope import bandit
from policy_server.ope import constraints as constraints_mod
from policy_server.ope._checks import OPEError
from policy_server.ope.logged import LoggedData

__all__ = [
    "ESTIMATORS",
    "RESULT_LIMIT",
    "RESULT_VERSION",
    "compact",
    "evaluate",
    "fit_reward_model",
    "policy_probabilities",
    "write_result",
]

ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr")
RESULT_LIMIT = 4096
RESULT_VERSION = 1


def policy_probabilities(artifact_url: str, observations: np.ndarray, *, device: str = "cpu",
                         batch_size: int = 65536) -> tuple[np.ndarray, str]:
    """(n, K) action probabilities of the artifact's policy (its exploration rule) and its version."""
    from policy_server import artifact, policy

    try:
        loaded = artifact.load_artifact(artifact_url, device=device)
    except artifact.ArtifactError as exc:
        raise OPEError(str(exc)) from exc
    if not isinstance(loaded.manifest.action, artifact.DiscreteAction):
        raise OPEError(f"artifact {artifact_url!r} has a continuous action space; `ope` evaluates discrete policies")
    pol = policy.Policy.from_artifact(loaded)
    shape = tuple(loaded.manifest.observation.shape)
    obs = observations.reshape(observations.shape[0], *shape)
    chunks = []
    for start in range(0, obs.shape[0], batch_size):
        raw = pol.forward(obs[start:start + batch_size])
        if not np.isfinite(raw).all():
            raise OPEError(f"artifact {artifact_url!r} returns NaN/inf on logged observations; fix the model")
        chunks.append(policy.discrete_probabilities(raw, pol.exploration, None))
    return np.concatenate(chunks), loaded.manifest.version


def _features(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    return np.hstack([np.ones((flat.shape[0], 1)), flat, flat * flat])


def fit_reward_model(data: LoggedData, folds: int = 2, ridge: float = 1.0, seed: int = 0) -> np.ndarray:
    """q_hat (n, K): per-action ridge regression on [1, x, x^2], cross-fitted (each row predicted by a fit
    that did not see it, which keeps DR's bias term honest)."""
    features = _features(data.observations)
    n, d = features.shape
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, folds, size=n)
    q_hat = np.zeros((n, data.n_actions))
    fallback = float(data.rewards.mean())
    for f in range(folds):
        train, test = fold != f, fold == f
        for a in range(data.n_actions):
            rows = train & (data.actions == a)
            if rows.sum() < 2:
                q_hat[test, a] = fallback
                continue
            x, y = features[rows], data.rewards[rows]
            coef = np.linalg.solve(x.T @ x + ridge * np.eye(d), x.T @ y)
            q_hat[test, a] = features[test] @ coef
    return q_hat


def _rounds(name: str, data: LoggedData, dist: np.ndarray, q_hat: np.ndarray) -> np.ndarray:
    args = (data.rewards, data.actions, data.propensities, dist)
    if name == "ips":
        return bandit.ips_rounds(*args)
    if name == "snips":
        return bandit.snips_rounds(*args)
    if name == "dm":
        return bandit.dm_rounds(dist, q_hat)
    if name == "dr":
        return bandit.dr_rounds(*args, q_hat)
    if name == "sndr":
        return bandit.sndr_rounds(*args, q_hat)
    raise OPEError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}")


def _interval(name: str, data: LoggedData, dist: np.ndarray, rounds: np.ndarray, n_resamples: int, alpha: float,
              seed: int) -> Any:
    """The two-sided bootstrap interval; for SNIPS the ratio sum(w r) / sum(w) is resampled, numerator and
    denominator together (a fixed normaliser ignores the denominator's noise and overstates the width)."""
    from policy_server.ope import confidence as conf

    if name == "snips":
        w = bandit.importance_weights(data.actions, data.propensities, dist)
        return conf.bootstrap_ci(w * data.rewards, n_resamples=n_resamples, alpha=alpha, rng=seed, denominator=w)
    return conf.bootstrap_ci(rounds, n_resamples=n_resamples, alpha=alpha, rng=seed)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def reward_range(data: LoggedData, given: tuple[float, float] | None) -> tuple[float, float]:
    """The rewards' range for the Bernstein bound: the one given, else the logged rewards' min and max."""
    if given is not None:
        lo, hi = float(given[0]), float(given[1])
        if not hi > lo:
            raise OPEError(f"the reward range must be LO,HI with HI > LO, got {given}")
        outside = (data.rewards < lo) | (data.rewards > hi)
        if outside.any():
            raise OPEError(
                f"{int(outside.sum())} logged rewards lie outside the reward range [{lo:g}, {hi:g}] "
                f"(observed [{data.rewards.min():g}, {data.rewards.max():g}]); widen --reward-range"
            )
        return lo, hi
    lo, hi = float(data.rewards.min()), float(data.rewards.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _bernstein_bound(
    name: str, data: LoggedData, dist: np.ndarray, q: np.ndarray, rewards: tuple[float, float], confidence: float
) -> tuple[np.ndarray, tuple[float, float] | None, float | None]:
    """(contributions, their a priori range) for the Bernstein bound, or a ready lower bound for SNIPS.

    The range follows from the rewards' range [lo, hi] and the largest importance weight the two policies allow
    on the logged contexts, w_max = max pi_e(a|x) / pi_b(a|x) over rows and actions (the logged propensity when
    the full behaviour distribution is unknown), so it is fixed before any reward is seen. SNIPS is a ratio: its
    bound is lo + LB(mean w (r - lo)) / UB(mean w), each side at delta/2 (a union bound).
    """
    from policy_server.ope import confidence as conf

    lo, hi = rewards
    span = hi - lo
    rows = np.arange(data.actions.shape[0])
    if data.behavior_dist is not None:
        with np.errstate(divide="ignore"):
            ratio = np.where(dist > 0, dist / np.maximum(data.behavior_dist, 1e-300), 0.0)
        w_max = float(ratio.max())
    else:
        w_max = float((dist[rows, data.actions] / data.propensities).max())
    w_max = max(w_max, 1.0)
    q_c = np.clip(q, lo, hi)
    args = (data.rewards, data.actions, data.propensities, dist)
    if name == "ips":
        return bandit.ips_rounds(*args), (min(0.0, w_max * lo), max(0.0, w_max * hi)), None
    if name == "dm":
        return bandit.dm_rounds(dist, q_c), (lo, hi), None
    if name == "dr":
        return bandit.dr_rounds(*args, q_c), (lo - w_max * span, hi + w_max * span), None
    if name == "snips":
        w = bandit.importance_weights(data.actions, data.propensities, dist)
        delta = (1.0 - confidence) / 2.0
        numerator = conf.bernstein_lower_bound(w * (data.rewards - lo), delta, (0.0, w_max * span))
        denominator = -conf.bernstein_lower_bound(-w, delta, (-w_max, 0.0))
        lower = lo + max(numerator, 0.0) / denominator if denominator > 0 else -math.inf
        return bandit.snips_rounds(*args), None, lower
    raise OPEError(f"the Bernstein bound has no a priori range for {name!r}; use ips, snips, dm or dr with it, "
                   "or another --bound")


@dataclasses.dataclass(frozen=True)
class _Settings:
    """How every criterion is judged (the gate's knobs, shared by the reward and the cost constraints)."""

    baseline: np.ndarray | None
    confidence: float
    bound: str
    min_ess: float
    max_unsupported_mass: float
    weight_band: float | None
    n_resamples: int
    seed: int


def _judge(name: str, data: LoggedData, candidate: np.ndarray, q: np.ndarray, diagnostics: Any, how: _Settings,
           rewards: tuple[float, float] | None, *, ratio: float | None, delta: float | None,
           required_level: float | None = None, interval: bool = True) -> tuple[Any, np.ndarray, float, Any]:
    """One estimator on one criterion: (gate result, contributions, baseline value, bootstrap interval).

    `required_level` replaces the baseline as the level to clear (an absolute budget); `interval=False`
    skips the bootstrap interval (None) where nobody reports it (the cost constraints)."""
    from policy_server.ope import gate

    rounds = _rounds(name, data, candidate, q)
    base_value = float(data.rewards.mean()) if how.baseline is None else float(
        _rounds(name, data, how.baseline, q).mean())
    ci = _interval(name, data, candidate, rounds, how.n_resamples, 1.0 - how.confidence, how.seed) if interval else None
    value_range, ready = None, None
    if rewards is not None:
        rounds, value_range, ready = _bernstein_bound(name, data, candidate, q, rewards, how.confidence)
    judged = gate.gate(
        rounds, base_value if required_level is None else required_level, diagnostics=diagnostics,
        min_lower_bound_ratio=ratio, delta=delta, confidence=how.confidence, bound=how.bound,  # type: ignore[arg-type]
        min_ess=how.min_ess, max_unsupported_mass=how.max_unsupported_mass, weight_band=how.weight_band,
        value_range=value_range, precomputed_lower_bound=ready, rng=how.seed,
    )
    return judged, rounds, base_value, ci


def _constraint_entries(
    data: LoggedData, candidate: np.ndarray, diagnostics: Any, how: _Settings,
    constraint: constraints_mod.Constraint, default_estimators: Sequence[str],
) -> list[dict[str, Any]]:
    """Each estimator's verdict on one cost budget: the upper bound of the cost against the budget."""
    label = constraint.label
    missing = constraints_mod.missing_cost_reason(data, constraint.cost)
    if missing is not None:
        return [{"criterion": label, "estimator": None, "verdict": "refuse", "reason": missing,
                 "budget": constraint.max}]
    cost_data = constraints_mod.as_cost_data(data, constraint.cost)
    settings = dataclasses.replace(how, confidence=constraint.confidence or how.confidence)
    names = constraints_mod.estimators_of(constraint, default_estimators)
    q_cost = fit_reward_model(cost_data, seed=how.seed) if any(e in ("dm", "dr", "sndr") for e in names) else None
    q = q_cost if q_cost is not None else np.zeros_like(candidate)
    ranges = reward_range(cost_data, None) if how.bound == "bernstein" else None
    entries = []
    for name in names:
        # On -cost, "lower bound >= -budget" is "upper bound <= budget".
        absolute = None if constraint.max is None else -constraint.max
        increase = None if constraint.max_increase is None else -constraint.max_increase
        judged, rounds, negated_base, _ = _judge(name, cost_data, candidate, q, diagnostics, settings, ranges,
                                                 ratio=None, delta=increase, required_level=absolute, interval=False)
        base = -negated_base
        upper = None if judged.lower_bound is None else -judged.lower_bound
        budget, estimate = -judged.required, -float(rounds.mean())
        reason = judged.reason
        if str(judged.verdict) in ("pass", "fail"):
            within = "within" if str(judged.verdict) == "pass" else "above"
            reason = (f"{settings.confidence:.0%} upper bound {upper:.6g} of cost {constraint.cost!r} is {within} "
                      f"its budget {budget:.6g} (estimate {estimate:.6g}, baseline {base:.6g}, {settings.bound} bound)")
        entries.append({
            "criterion": label, "estimator": name, "value": _finite(estimate), "upperBound": _finite(upper),
            "budget": _finite(budget), "baselineValue": _finite(base), "verdict": str(judged.verdict),
            "reason": reason,
        })
    return entries


def evaluate(
    data: LoggedData,
    candidate: np.ndarray,
    *,
    baseline: np.ndarray | None,
    estimators: Sequence[str] = ("snips", "dr"),
    confidence: float = 0.95,
    bound: str = "bernstein",
    min_ess: float = 100.0,
    max_unsupported_mass: float = 0.01,
    min_lower_bound_ratio: float | None = None,
    min_lower_bound_delta: float | None = None,
    n_resamples: int = 500,
    seed: int = 0,
    support_floor: float = bandit.DEFAULT_SUPPORT_FLOOR,
    weight_band: float | None = 0.1,
    rewards_range: tuple[float, float] | None = None,
    constraints: Sequence[constraints_mod.Constraint] = (),
) -> dict[str, Any]:
    """Estimates, intervals, diagnostics and the verdict of `candidate` (n, K) probabilities.

    `baseline` (n, K) are the baseline policy's probabilities, or None to compare with the logged rewards.
    `support_floor` is relative to 1/K (see `bandit.support_floor`); `rewards_range` (lo, hi) feeds the Bernstein
    bound (default: the logged rewards' min and max). `constraints` are cost budgets (`ope.constraints`): each
    is a criterion of its own, and the verdict is the worst over the reward and every constraint.
    """
    # here, not at the top: gate and confidence import scipy, which `policy-server serve` and `route` never need
    from policy_server.ope import gate

    rank = {gate.Verdict.PASS: 0, gate.Verdict.FAIL: 1, gate.Verdict.REFUSE: 2}
    unknown = [e for e in estimators if e not in ESTIMATORS]
    unknown += [e for c in constraints for e in (c.estimators or ()) if e not in ESTIMATORS]
    if unknown or not estimators:
        raise OPEError(f"unknown estimator(s) {unknown}; choose from {', '.join(ESTIMATORS)}")
    for name, dist in (("candidate", candidate), ("baseline", baseline)):
        if dist is not None and dist.shape[1] != data.n_actions:
            raise OPEError(f"the {name} policy has {dist.shape[1]} actions, the log has {data.n_actions}")
    q_hat = fit_reward_model(data, seed=seed) if any(e in ("dm", "dr", "sndr") for e in estimators) else None
    q = q_hat if q_hat is not None else np.zeros_like(candidate)
    floor = bandit.support_floor(data.n_actions, support_floor)
    diagnostics = bandit.diagnostics(data.actions, data.propensities, candidate, data.behavior_dist, floor)
    how = _Settings(baseline, confidence, bound, min_ess, max_unsupported_mass, weight_band, n_resamples, seed)
    rewards = reward_range(data, rewards_range) if bound == "bernstein" else None
    logged_value = float(data.rewards.mean())
    entries = []
    for name in estimators:
        judged, rounds, base_value, ci = _judge(name, data, candidate, q, diagnostics, how, rewards,
                                                ratio=min_lower_bound_ratio, delta=min_lower_bound_delta)
        entries.append({
            "estimator": name, "value": _finite(float(rounds.mean())), "lowerBound": _finite(judged.lower_bound),
            "ciLow": _finite(ci.lower), "ciHigh": _finite(ci.upper), "baselineValue": _finite(base_value),
            "required": _finite(judged.required), "verdict": str(judged.verdict), "reason": judged.reason,
        })
    costs = [e for c in constraints for e in _constraint_entries(data, candidate, diagnostics, how, c, estimators)]
    worst = max((gate.Verdict(e["verdict"]) for e in entries + costs), key=rank.__getitem__)
    deciding_reward = next((e for e in entries if e["verdict"] == str(worst)), entries[0])
    deciding = next(e for e in entries + costs if e["verdict"] == str(worst))
    prefix = deciding["criterion"] if "criterion" in deciding else deciding["estimator"]
    if "criterion" in deciding and deciding["estimator"]:
        prefix = f"{deciding['criterion']} ({deciding['estimator']})"
    return {
        "v": RESULT_VERSION,
        "kind": "ope",
        "verdict": str(worst),
        "reason": f"{prefix}: {deciding['reason']}",
        "baseline": "logged" if baseline is None else "policy",
        "baselineValue": deciding_reward["baselineValue"],
        "loggedValue": _finite(logged_value),
        "required": deciding_reward["required"],
        "confidence": confidence,
        "bound": bound,
        "n": int(data.actions.shape[0]),
        "ess": _finite(diagnostics.ess),
        "essRatio": _finite(diagnostics.ess_ratio),
        "maxWeight": _finite(diagnostics.max_weight),
        "unsupportedMass": _finite(diagnostics.unsupported_mass) if diagnostics.unsupported_mass is not None else None,
        "supportFloor": _finite(diagnostics.support_floor),
        "meanWeight": _finite(diagnostics.mean_weight),
        "estimates": entries,
        "constraints": costs,
    }


def compact(result: dict[str, Any], limit: int = RESULT_LIMIT) -> str:
    """Compact JSON within `limit` bytes (a termination message): long reasons are shortened first."""
    text = json.dumps(result, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) <= limit:
        return text
    slim = dict(result)
    for key in ("estimates", "constraints"):
        slim[key] = [{k: v for k, v in e.items() if k != "reason"} for e in result.get(key, [])]
    for size in (400, 120):
        slim["reason"] = str(result.get("reason", ""))[:size]
        text = json.dumps(slim, separators=(",", ":"), allow_nan=False)
        if len(text.encode()) <= limit:
            return text
    return json.dumps({k: slim[k] for k in ("v", "kind", "verdict", "reason") if k in slim}, separators=(",", ":"))


def write_result(path: str, result: dict[str, Any]) -> None:
    """Write the compact result to `path` (a Job's /dev/termination-log)."""
    Path(path).write_text(compact(result))
