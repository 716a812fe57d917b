"""Cost constraints of the offline gate: a candidate must stay within a budget on each named cost.

A reward alone lets a candidate buy it with costs (price under the margin floor, spam, unsafe
actions): the gate then passes the reward hacker the source documents warn about. Each
constraint names a cost posted with the rewards (`costs: {name: value}` on `/v1/reward`) and a
budget, absolute (`max`) or relative to the baseline evaluated on the same logs (`max_increase`).

The candidate's expected cost is estimated with the gate's own estimators, on the log whose
rewards are replaced by the negated cost, so the gate's lower bound of -cost is the upper bound of
the cost, and the same support, self-normalisation and ESS refusals apply per criterion. A cost
missing from any rewarded decision cannot be estimated: the constraint refuses, it never passes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from policy_server.ope._checks import OPEError
from policy_server.ope.logged import LoggedData

__all__ = ["Constraint", "as_cost_data", "missing_cost_reason", "parse_constraint"]


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A budget on one cost: exactly one of `max` (absolute) and `max_increase` (over the baseline)."""

    cost: str
    max: float | None = None
    max_increase: float | None = None
    estimators: tuple[str, ...] | None = None  # default: the gate's estimators
    confidence: float | None = None  # default: the gate's confidence

    def __post_init__(self) -> None:
        if not self.cost:
            raise OPEError("a constraint needs the cost's name (cost=NAME)")
        if (self.max is None) == (self.max_increase is None):
            raise OPEError(f"constraint on {self.cost!r}: give exactly one of max= and maxIncrease=")
        budget = self.max if self.max is not None else self.max_increase
        if budget is None or not math.isfinite(budget):
            raise OPEError(f"constraint on {self.cost!r}: the budget must be a finite number, got {budget}")
        if self.confidence is not None and not 0.0 < self.confidence < 1.0:
            raise OPEError(f"constraint on {self.cost!r}: confidence must lie in (0, 1), got {self.confidence}")

    @property
    def label(self) -> str:
        return f"cost:{self.cost}"


def parse_constraint(text: str) -> Constraint:
    """`cost=margin_violation,max=0.05[,estimators=snips+dr][,confidence=0.9]` (maxIncrease= for relative)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise OPEError(f"--constraint {text!r}: write KEY=VALUE pairs separated by commas, "
                           "e.g. cost=margin_violation,max=0.05")
        fields[key.strip()] = value.strip()
    unknown = sorted(set(fields) - {"cost", "max", "maxIncrease", "estimators", "confidence"})
    if unknown:
        raise OPEError(f"--constraint {text!r}: unknown key(s) {', '.join(unknown)}; "
                       "use cost, max or maxIncrease, estimators, confidence")

    def number(key: str) -> float | None:
        if key not in fields:
            return None
        try:
            return float(fields[key])
        except ValueError:
            raise OPEError(f"--constraint {text!r}: {key} must be a number, got {fields[key]!r}") from None

    estimators = tuple(e for e in fields["estimators"].split("+") if e) if "estimators" in fields else None
    return Constraint(cost=fields.get("cost", ""), max=number("max"), max_increase=number("maxIncrease"),
                      estimators=estimators or None, confidence=number("confidence"))


def missing_cost_reason(data: LoggedData, cost: str) -> str | None:
    """Why the cost cannot be estimated from this log, or None when every rewarded decision reported it."""
    values = data.costs.get(cost)
    n = data.actions.shape[0]
    if values is None:
        known = ", ".join(sorted(data.costs)) or "none"
        return (f"cost {cost!r} was never reported with a reward (costs in the log: {known}); post it with every "
                "reward (/v1/reward costs: {name: value}) or drop the constraint")
    missing = int(np.isnan(values).sum())
    if missing:
        return (f"cost {cost!r} is missing from {missing} of {n} rewarded decisions; it cannot be estimated "
                "without them: post it with every reward (0 when nothing was spent)")
    return None


def as_cost_data(data: LoggedData, cost: str) -> LoggedData:
    """The log with each decision's reward replaced by minus its cost (higher is better, as for rewards)."""
    return dataclasses.replace(data, rewards=-data.costs[cost])


def estimators_of(constraint: Constraint, default: Sequence[str]) -> list[str]:
    return list(constraint.estimators or default)
