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

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policy_server.ope import bandit
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


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def evaluate(
    data: LoggedData,
    candidate: np.ndarray,
    *,
    baseline: np.ndarray | None,
    estimators: Sequence[str] = ("snips", "dr"),
    confidence: float = 0.95,
    bound: str = "student_t",
    min_ess: float = 100.0,
    max_unsupported_mass: float = 0.01,
    min_lower_bound_ratio: float | None = None,
    min_lower_bound_delta: float | None = None,
    n_resamples: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Estimates, intervals, diagnostics and the verdict of `candidate` (n, K) probabilities.

    `baseline` (n, K) are the baseline policy's probabilities, or None to compare with the logged rewards.
    """
    # here, not at the top: gate and confidence import scipy, which `policy-server serve` and `route` never need
    from policy_server.ope import confidence as conf
    from policy_server.ope import gate

    rank = {gate.Verdict.PASS: 0, gate.Verdict.FAIL: 1, gate.Verdict.REFUSE: 2}
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise OPEError(f"unknown estimator(s) {unknown}; choose from {', '.join(ESTIMATORS)}")
    for name, dist in (("candidate", candidate), ("baseline", baseline)):
        if dist is not None and dist.shape[1] != data.n_actions:
            raise OPEError(f"the {name} policy has {dist.shape[1]} actions, the log has {data.n_actions}")
    q_hat = fit_reward_model(data, seed=seed) if any(e in ("dm", "dr", "sndr") for e in estimators) else None
    q = q_hat if q_hat is not None else np.zeros_like(candidate)
    diagnostics = bandit.diagnostics(data.actions, data.propensities, candidate, data.behavior_dist)
    alpha = 1.0 - confidence
    logged_value = float(data.rewards.mean())
    entries = []
    worst: gate.Verdict = gate.Verdict.PASS
    first: gate.GateResult | None = None
    for name in estimators:
        rounds = _rounds(name, data, candidate, q)
        base_value = logged_value if baseline is None else float(_rounds(name, data, baseline, q).mean())
        ci = conf.bootstrap_ci(rounds, n_resamples=n_resamples, alpha=alpha, rng=seed)
        judged = gate.gate(
            rounds, base_value, diagnostics=diagnostics, min_lower_bound_ratio=min_lower_bound_ratio,
            delta=min_lower_bound_delta, confidence=confidence, bound=bound,  # type: ignore[arg-type]
            min_ess=min_ess, max_unsupported_mass=max_unsupported_mass, rng=seed,
        )
        first = first or judged
        if rank[judged.verdict] > rank[worst]:
            worst = judged.verdict
        entries.append({
            "estimator": name, "value": _finite(float(rounds.mean())), "lowerBound": _finite(judged.lower_bound),
            "ciLow": _finite(ci.lower), "ciHigh": _finite(ci.upper), "baselineValue": _finite(base_value),
            "required": _finite(judged.required), "verdict": str(judged.verdict), "reason": judged.reason,
        })
    assert first is not None
    deciding = next(e for e in entries if e["verdict"] == str(worst))
    return {
        "v": RESULT_VERSION,
        "kind": "ope",
        "verdict": str(worst),
        "reason": f"{deciding['estimator']}: {deciding['reason']}",
        "baseline": "logged" if baseline is None else "policy",
        "baselineValue": deciding["baselineValue"],
        "loggedValue": _finite(logged_value),
        "required": deciding["required"],
        "confidence": confidence,
        "bound": bound,
        "n": int(data.actions.shape[0]),
        "ess": _finite(diagnostics.ess),
        "essRatio": _finite(diagnostics.ess_ratio),
        "maxWeight": _finite(diagnostics.max_weight),
        "unsupportedMass": _finite(diagnostics.unsupported_mass) if diagnostics.unsupported_mass is not None else None,
        "estimates": entries,
    }


def compact(result: dict[str, Any], limit: int = RESULT_LIMIT) -> str:
    """Compact JSON within `limit` bytes (a termination message): long reasons are shortened first."""
    text = json.dumps(result, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) <= limit:
        return text
    slim = dict(result)
    slim["estimates"] = [{k: v for k, v in e.items() if k != "reason"} for e in result.get("estimates", [])]
    for size in (400, 120):
        slim["reason"] = str(result.get("reason", ""))[:size]
        text = json.dumps(slim, separators=(",", ":"), allow_nan=False)
        if len(text.encode()) <= limit:
            return text
    return json.dumps({k: slim[k] for k in ("v", "kind", "verdict", "reason") if k in slim}, separators=(",", ":"))


def write_result(path: str, result: dict[str, Any]) -> None:
    """Write the compact result to `path` (a Job's /dev/termination-log)."""
    Path(path).write_text(compact(result))
