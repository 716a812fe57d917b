"""`policy-server ope`: judge a candidate artifact on the decision log, from the command line or a Job.

    policy-server ope --logs URL --policy ARTIFACT --baseline ARTIFACT|logged [--estimators snips,dr] [--json]
                      [--write-result /dev/termination-log]

Steps: read the log's rewarded, served, discrete decisions (`decision_log.join_rewards`); run the
candidate's model over the logged observations in batches (CPU or CUDA) and turn its outputs into
action probabilities with its own exploration rule (`policy.discrete_probabilities`, the rule the
server samples with); fit a cross-fitted ridge reward model per action for DM / DR; estimate with
every requested estimator (`ope.bandit`), bootstrap an interval, and gate each estimate against the
baseline (the fallback artifact's estimate by the same estimator, or the mean logged reward).
The verdict is the worst of the estimators' verdicts: refuse > fail > pass.

The result JSON is compact (`RESULT_LIMIT` bytes at most) because the operator reads it back
from the Job's termination message. Exit codes: 0 when a verdict was reached (pass, fail or
refuse: the verdict is in the result), 2 when the inputs cannot be evaluated (the message and
the result's `error` say why).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy_server.ope import bandit
from policy_server.ope._checks import OPEInputError

__all__ = ["ESTIMATORS", "LoggedData", "OPEError", "add_parser", "evaluate", "load_logged", "main", "run"]

ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr")
RESULT_LIMIT = 4096
RESULT_VERSION = 1


class OPEError(Exception):
    """The evaluation cannot run; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class LoggedData:
    observations: np.ndarray  # float32 (n, *shape)
    actions: np.ndarray  # int64 (n,)
    propensities: np.ndarray  # float64 (n,)
    rewards: np.ndarray  # float64 (n,)
    behavior_dist: np.ndarray | None  # float64 (n, K) when every row logged its probabilities
    n_actions: int


def load_logged(url: str, obs_shape: Sequence[int] | None = None) -> LoggedData:
    """The rewarded, served, discrete decisions of the log at `url`, as arrays."""
    import pyarrow.compute as pc

    from policy_server import decision_log

    try:
        table = decision_log.join_rewards(url, how="inner")
    except (OSError, ValueError) as exc:
        raise OPEError(f"cannot read the decision log at {url!r}: {exc}") from exc
    if table.num_rows:
        served = pc.and_(pc.not_equal(table["variant"], "shadow"), pc.is_valid(table["action_index"]))
        table = table.filter(pc.fill_null(served, False))
    if table.num_rows == 0:
        raise OPEError(
            f"the decision log at {url!r} has no rewarded, served discrete decisions; check the URL, that rewards "
            "were posted (/v1/reward) and that the policy has a discrete action space"
        )
    obs_lists = table["observation"].combine_chunks()
    flat = obs_lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    n = table.num_rows
    if flat.size % n:
        raise OPEError("observations in the log have different lengths; evaluate one policy's log at a time")
    observations = flat.reshape(n, -1)
    if obs_shape is not None:
        size = int(np.prod(obs_shape))
        if observations.shape[1] != size:
            raise OPEError(
                f"the log's observations have {observations.shape[1]} features, the policy expects shape "
                f"{list(obs_shape)}; evaluate on a log of the same environment"
            )
        observations = observations.reshape(n, *obs_shape)
    actions = table["action_index"].to_numpy(zero_copy_only=False).astype(np.int64)
    propensities = table["propensity"].to_numpy(zero_copy_only=False).astype(np.float64)
    rewards = table["reward"].to_numpy(zero_copy_only=False).astype(np.float64)
    probs = table["probabilities"]
    behavior = None
    n_actions = int(actions.max()) + 1
    if probs.null_count == 0:
        lengths = pc.list_value_length(probs).to_numpy(zero_copy_only=False)
        if (lengths == lengths[0]).all():
            k = int(lengths[0])
            behavior = probs.combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64)
            behavior = behavior.reshape(n, k)
            n_actions = max(n_actions, k)
    return LoggedData(observations, actions, propensities, rewards, behavior, n_actions)


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
    Path(path).write_text(compact(result))


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("ope", help="off-policy evaluation of a candidate artifact on the decision log")
    p.add_argument("--logs", required=True, help="decision log URL (directory with decisions/ and rewards/)")
    p.add_argument("--policy", required=True, help="candidate artifact directory or fsspec URL")
    p.add_argument("--baseline", default="logged", help="baseline artifact, or 'logged' for the logged rewards")
    p.add_argument("--estimators", default="snips,dr", help=f"comma-separated, from {','.join(ESTIMATORS)}")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--bound", choices=["student_t", "bernstein", "bootstrap"], default="student_t")
    p.add_argument("--min-ess", type=float, default=100.0)
    p.add_argument("--max-unsupported-mass", type=float, default=0.01)
    p.add_argument("--min-lower-bound-ratio", type=float, default=None)
    p.add_argument("--min-lower-bound-delta", type=float, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the models' forward passes")
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--resamples", type=int, default=500, help="bootstrap resamples for the intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--write-result", default=None, metavar="PATH",
                   help="also write the compact JSON result here (a Job's /dev/termination-log)")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.min_lower_bound_ratio is not None and args.min_lower_bound_delta is not None:
        raise OPEError("give at most one of --min-lower-bound-ratio and --min-lower-bound-delta")
    data = load_logged(args.logs)
    candidate, version = policy_probabilities(args.policy, data.observations, device=args.device,
                                              batch_size=args.batch_size)
    baseline = None
    baseline_version = None
    if args.baseline != "logged":
        baseline, baseline_version = policy_probabilities(args.baseline, data.observations, device=args.device,
                                                          batch_size=args.batch_size)
    try:
        result = evaluate(
            data, candidate, baseline=baseline, estimators=[e.strip() for e in args.estimators.split(",") if e.strip()],
            confidence=args.confidence, bound=args.bound, min_ess=args.min_ess,
            max_unsupported_mass=args.max_unsupported_mass, min_lower_bound_ratio=args.min_lower_bound_ratio,
            min_lower_bound_delta=args.min_lower_bound_delta, n_resamples=args.resamples, seed=args.seed,
        )
    except OPEInputError as exc:
        raise OPEError(str(exc)) from exc
    result["candidate"] = version
    if baseline_version is not None:
        result["baselineVersion"] = baseline_version
    return result


def _print_human(result: dict[str, Any]) -> None:
    print(f"verdict: {result['verdict'].upper()} ({result['reason']})")
    print(f"n={result['n']} ESS={result['ess']:.1f} unsupported mass={result['unsupportedMass']}")
    for e in result["estimates"]:
        print(f"  {e['estimator']:>5}: {e['value']:.5g}  CI [{e['ciLow']:.5g}, {e['ciHigh']:.5g}]  "
              f"lower bound {e['lowerBound']}  baseline {e['baselineValue']:.5g}  -> {e['verdict']}")


def main(args: argparse.Namespace) -> int:
    try:
        result = run(args)
    except OPEError as exc:
        print(f"policy-server ope: {exc}", file=sys.stderr)
        if args.write_result:
            write_result(args.write_result, {"v": RESULT_VERSION, "kind": "ope", "error": str(exc)[:3500]})
        return 2
    if args.write_result:
        write_result(args.write_result, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_human(result)
    return 0
