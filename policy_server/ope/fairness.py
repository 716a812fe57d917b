"""The fairness criterion of the offline gate: the candidate's value may not differ between groups beyond a bound.

Each logged decision belongs to a group, read from one key of its request context with the same folding as the
live server (policy_server/groups.py: listed values, the rest ``other``). Per group the candidate's mean reward,
mean cost or rate of one action is estimated on that group's decisions alone, with a two-sided interval; the
disparity is judged conservatively:

* ``difference``: the upper bound of max_g - min_g is max_g U_g - min_g L_g (the largest upper bound minus the
  smallest lower bound: no pair of true means can be further apart while every interval covers);
* ``ratio``: max_g U_g / min_g L_g (unbounded when a lower bound is <= 0: the ratio then fails).

Every interval is at level 1 - (1 - confidence) / G per side pair (Bonferroni over the G groups), so the bound
holds with the gate's confidence jointly. Verdicts, in order: ``refuse`` when a group's effective sample size is
below ``min_group_ess`` (too little support to vouch for that group: never a pass) or fewer than two groups have
data; ``fail`` when the disparity bound exceeds ``max``; ``pass`` otherwise.

Reward and cost use an off-policy estimator (``snips`` default, ``ips``, ``dr``, ``sndr``, ``dm``) on the group's
rows; ``action-rate`` needs none: the candidate's probability of the action is known on every logged context, so
its per-group rate is a plain mean (and every row counts fully toward the group's sample size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections import Counter
from typing import Any

import numpy as np

from policy_server import groups as groups_mod
from policy_server.ope import bandit
from policy_server.ope._checks import OPEError
from policy_server.ope.logged import LoggedData

__all__ = ["FairnessCriterion", "add_args", "apply", "criterion_from_args", "evaluate_fairness", "group_labels"]

METRICS = ("reward", "cost", "action-rate")
MODES = ("difference", "ratio")
BOUNDS = ("student_t", "bootstrap", "bootstrap_t")
LISTED = 12  # groups listed in the compact result (the extremes first): it must fit a termination message


@dataclasses.dataclass(frozen=True)
class FairnessCriterion:
    """What may not differ between groups, and by how much."""

    group_key: str
    groups: tuple[str, ...] | None = None  # None: the most frequent values in the log (at most MAX_GROUPS)
    metric: str = "reward"
    cost: str | None = None
    action: int | None = None
    mode: str = "difference"
    max: float = 0.1
    min_group_ess: float = 30.0
    estimator: str = "snips"
    confidence: float = 0.95
    bound: str = "student_t"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise OPEError(f"--fairness-metric {self.metric!r}: use one of {', '.join(METRICS)}")
        if self.mode not in MODES:
            raise OPEError(f"--fairness-mode {self.mode!r}: use difference or ratio")
        if self.metric == "cost" and not self.cost:
            raise OPEError("--fairness-metric cost needs --fairness-cost NAME (a cost posted with the rewards)")
        if self.metric == "action-rate" and (self.action is None or self.action < 0):
            raise OPEError("--fairness-metric action-rate needs --fairness-action INDEX (a discrete action, >= 0)")
        if self.estimator not in bandit.ESTIMATORS:
            raise OPEError(f"--fairness-estimator {self.estimator!r}: use one of {', '.join(bandit.ESTIMATORS)}")
        if self.bound not in BOUNDS:
            raise OPEError(f"--fairness-bound {self.bound!r}: use one of {', '.join(BOUNDS)}")
        if not math.isfinite(self.max) or self.max < 0:
            raise OPEError(f"--fairness-max must be a finite number >= 0, got {self.max}")
        if not 0.0 < self.confidence < 1.0:
            raise OPEError(f"--fairness-confidence must lie in (0, 1), got {self.confidence}")


def group_labels(contexts: list[str | None], criterion: FairnessCriterion) -> tuple[list[str], groups_mod.GroupKey]:
    """Each decision's group (folded as the live server folds it) and the group configuration used."""
    parsed = [_context(text) for text in contexts]
    names = criterion.groups
    if names is None:  # the most frequent string/integer values, the rest into other
        seen: Counter[str] = Counter()
        for ctx in parsed:
            value = None if ctx is None else ctx.get(criterion.group_key)
            if type(value) is int or (type(value) is str and groups_mod.NAME_PATTERN.fullmatch(value)):
                seen[str(value)] += 1
        names = tuple(v for v, _ in seen.most_common(groups_mod.MAX_GROUPS) if v != groups_mod.OTHER)
        if not names:
            raise OPEError(
                f"no logged decision has a usable context.{criterion.group_key} (a string or integer); send the group "
                "in the request context or fix --fairness-group-key"
            )
    try:
        spec = groups_mod.parse(criterion.group_key, names)
    except groups_mod.GroupConfigError as exc:
        message = str(exc).replace("--groups", "--fairness-groups").replace("--group-key", "--fairness-group-key")
        raise OPEError(message) from None
    assert spec is not None
    return [spec.fold(ctx) for ctx in parsed], spec


def _context(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _quantity(data: LoggedData, criterion: FairnessCriterion) -> np.ndarray:
    if criterion.metric == "reward":
        return data.rewards
    values = data.costs.get(criterion.cost or "")
    if values is None:
        known = ", ".join(sorted(data.costs)) or "none"
        raise OPEError(f"fairness cost {criterion.cost!r} was never reported with a reward (costs in the log: {known})")
    if np.isnan(values).any():
        raise OPEError(
            f"fairness cost {criterion.cost!r} is missing from {int(np.isnan(values).sum())} rewarded decisions; "
            "post it with every reward (0 when nothing was spent)"
        )
    return values


def _interval(x: np.ndarray, delta: float, method: str, seed: int) -> tuple[float, float]:
    from policy_server.ope import confidence as conf

    lower = conf.lower_bound(x, delta, method, rng=seed)  # type: ignore[arg-type]
    upper = -conf.lower_bound(-x, delta, method, rng=seed)  # type: ignore[arg-type]
    return float(lower), float(upper)


def _group_estimate(
    data: LoggedData,
    rows: np.ndarray,
    dist: np.ndarray,
    y: np.ndarray | None,
    q_hat: np.ndarray | None,
    criterion: FairnessCriterion,
    delta: float,
    seed: int,
) -> dict[str, Any]:
    """One group's estimate, interval, sample size and effective sample size."""
    n = int(rows.size)
    if criterion.metric == "action-rate":
        x = dist[rows, criterion.action]
        ess = float(n)
    else:
        assert y is not None
        weights = bandit.importance_weights(data.actions[rows], data.propensities[rows], dist[rows])
        total = float(weights.sum())
        ess = total * total / float((weights * weights).sum()) if total > 0 else 0.0
        if total <= 0:
            return {"n": n, "ess": 0.0, "value": None, "lower": None, "upper": None}
        x = bandit.estimate_rounds(
            criterion.estimator,
            y[rows],
            data.actions[rows],
            data.propensities[rows],
            dist[rows],
            None if q_hat is None else q_hat[rows],
        )
    if n < 2:
        return {"n": n, "ess": ess, "value": float(x.mean()) if n else None, "lower": None, "upper": None}
    lower, upper = _interval(np.asarray(x, dtype=np.float64), delta, criterion.bound, seed)
    return {"n": n, "ess": ess, "value": float(x.mean()), "lower": lower, "upper": upper}


def evaluate_fairness(
    data: LoggedData,
    candidate: np.ndarray,
    groups: list[str],
    spec: groups_mod.GroupKey,
    criterion: FairnessCriterion,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """The fairness entry of the gate result: per-group estimates, the disparity bound and a verdict."""
    if criterion.metric == "action-rate" and criterion.action >= candidate.shape[1]:  # type: ignore[operator]
        raise OPEError(
            f"--fairness-action {criterion.action} is not an action of the candidate ({candidate.shape[1]} actions)"
        )
    labels = np.asarray(groups, dtype=object)
    present = [g for g in spec.labels if (labels == g).any()]
    y = None if criterion.metric == "action-rate" else _quantity(data, criterion)
    q_hat = None
    if y is not None and bandit.ESTIMATORS[criterion.estimator][1]:
        from policy_server.ope import evaluate

        q_hat = evaluate.fit_reward_model(dataclasses.replace(data, rewards=y), seed=seed)
    delta = (1.0 - criterion.confidence) / (2 * max(len(present), 1))  # both sides of every group's interval
    per_group = {
        g: _group_estimate(data, np.flatnonzero(labels == g), candidate, y, q_hat, criterion, delta, seed)
        for g in present
    }
    what = criterion.metric if criterion.metric != "cost" else f"cost {criterion.cost!r}"
    if criterion.metric == "action-rate":
        what = f"rate of action {criterion.action}"
    entry: dict[str, Any] = {
        "groupKey": criterion.group_key,
        "metric": criterion.metric,
        "mode": criterion.mode,
        "max": criterion.max,
        "minGroupEss": criterion.min_group_ess,
        "estimator": None if y is None else criterion.estimator,
        "confidence": criterion.confidence,
        "disparity": None,
        "bound": None,
    }

    def done(verdict: str, reason: str) -> dict[str, Any]:
        ranked = sorted(per_group.items(), key=lambda kv: -math.inf if kv[1]["value"] is None else kv[1]["value"])
        shown = ranked if len(ranked) <= LISTED else ranked[: LISTED // 2] + ranked[-LISTED // 2 :]
        entry["groups"] = [{"group": g, **{k: _short(v) for k, v in e.items()}} for g, e in shown]
        entry.update(verdict=verdict, reason=reason)
        return entry

    thin = [(g, e) for g, e in per_group.items() if e["ess"] < criterion.min_group_ess]
    if thin:
        listed = ", ".join(f"{g!r} (ESS {e['ess']:.1f}, {e['n']} decisions)" for g, e in thin)
        return done(
            "refuse",
            f"too little support to judge {what} by {criterion.group_key}: group(s) {listed} below "
            f"minGroupEss {criterion.min_group_ess:g}; log more decisions of these groups",
        )
    if len(per_group) < 2:
        return done(
            "refuse",
            f"only {len(per_group)} group of {criterion.group_key} in the log "
            f"({', '.join(per_group) or 'none'}): a disparity needs two",
        )
    values = {g: e["value"] for g, e in per_group.items()}
    hi_g, lo_g = max(values, key=values.__getitem__), min(values, key=values.__getitem__)
    upper_g = max(per_group, key=lambda g: per_group[g]["upper"])
    lower_g = min(per_group, key=lambda g: per_group[g]["lower"])
    top, bottom = per_group[upper_g]["upper"], per_group[lower_g]["lower"]
    if criterion.mode == "difference":
        disparity, bound = values[hi_g] - values[lo_g], top - bottom
    else:
        disparity = values[hi_g] / values[lo_g] if values[lo_g] > 0 else math.inf
        bound = top / bottom if bottom > 0 else math.inf
    entry.update(disparity=_finite(disparity), bound=_finite(bound))
    how = (
        f"{criterion.confidence:.0%} upper bound {bound:.4g} of the {criterion.mode} in {what} between groups "
        f"of {criterion.group_key} (estimate {disparity:.4g}: {hi_g!r} {values[hi_g]:.4g} vs {lo_g!r} "
        f"{values[lo_g]:.4g}; bound from {upper_g!r} upper {top:.4g} and {lower_g!r} lower {bottom:.4g})"
    )
    if not bound <= criterion.max:
        return done("fail", f"{how} exceeds the allowed {criterion.max:g}")
    return done("pass", f"{how} is within the allowed {criterion.max:g}")


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _short(x: Any) -> Any:
    if isinstance(x, float):
        return None if not math.isfinite(x) else float(f"{x:.6g}")
    return x


_RANK = {"pass": 0, "fail": 1, "refuse": 2}


def apply(result: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The gate result with the fairness criterion folded in: the worst verdict wins and names its reason."""
    out = dict(result, fairness=entry)
    mine, theirs = _RANK[entry["verdict"]], _RANK[str(result["verdict"])]
    if mine > theirs:
        out["verdict"], out["reason"] = entry["verdict"], f"fairness: {entry['reason']}"
    elif mine == theirs and mine > 0:
        out["reason"] = f"{result['reason']}; fairness: {entry['reason']}"
    return out


# ---------------------------------------------------------------------------- command line


def add_args(p: argparse.ArgumentParser) -> None:
    """`policy-server ope --fairness-group-key KEY ...`: the fairness criterion (off without a group key)."""
    p.add_argument(
        "--fairness-group-key",
        default=None,
        help="judge the disparity of the candidate's value between groups of this request-context key",
    )
    p.add_argument(
        "--fairness-groups",
        default=None,
        help="comma-separated groups (the rest fold into other); default the log's most frequent values",
    )
    p.add_argument("--fairness-metric", default="reward", choices=METRICS)
    p.add_argument("--fairness-cost", default=None, help="the cost's name (--fairness-metric cost)")
    p.add_argument("--fairness-action", type=int, default=None, help="the action index (--fairness-metric action-rate)")
    p.add_argument("--fairness-mode", default="difference", choices=MODES)
    p.add_argument("--fairness-max", type=float, default=None, help="largest allowed disparity bound")
    p.add_argument(
        "--fairness-min-group-ess",
        type=float,
        default=30.0,
        help="refuse when a group's effective sample size is below this",
    )
    p.add_argument("--fairness-estimator", default="snips", help="estimator of each group's reward or cost")
    p.add_argument(
        "--fairness-bound",
        default="student_t",
        choices=BOUNDS,
        help="each group's interval (Bonferroni over the groups)",
    )


def criterion_from_args(args: argparse.Namespace) -> FairnessCriterion | None:
    if args.fairness_group_key is None:
        return None
    if args.fairness_max is None:
        raise OPEError("--fairness-group-key needs --fairness-max, the largest allowed disparity")
    groups = None
    if args.fairness_groups:
        groups = tuple(g.strip() for g in args.fairness_groups.split(",") if g.strip()) or None
    return FairnessCriterion(
        group_key=args.fairness_group_key,
        groups=groups,
        metric=args.fairness_metric,
        cost=args.fairness_cost,
        action=args.fairness_action,
        mode=args.fairness_mode,
        max=args.fairness_max,
        min_group_ess=args.fairness_min_group_ess,
        estimator=args.fairness_estimator,
        confidence=args.confidence,
        bound=args.fairness_bound,
    )
