"""Off-policy estimates of the shadow candidate's reward and costs, from the stable's live decisions.

In shadow the stable serves every request and the router knows, for each one, the stable's
action and its exact propensity (the logging policy's probability) and the action the candidate
would have taken. When the request's reward (and costs) come back through the router, the
candidate's value is estimated by self-normalised importance sampling (SNIPS) with, for a
deterministic candidate, the importance weight

    w = 1{candidate's action == served action} / propensity(served action)

(Dudík et al., "Doubly robust policy evaluation", 2011; the definitions in docs/ope.md). Bounds
come from the delta method, var(SNIPS) ~ sum w^2 (r - est)^2 / (sum w)^2, which is the interval
the docs recommend for SNIPS; the normal quantile at `confidence`, and never narrower than Wilson's
interval at p = 0 (z^2 / (ESS + z^2) of the values' observed range). A candidate that never
agrees with the served action has no estimate (sum w = 0): the guardrail is inconclusive and,
after `inconclusiveLimit`, rolls back, never passes.

Discrete actions only: a deterministic continuous candidate has probability 0 of any served
action. Each router replica estimates from the rewards it sees; one process keeps the state of
one shadow window, which starts again when shadow is switched on.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping
from statistics import NormalDist

__all__ = ["Estimate", "ShadowEstimator"]

MIN_REWARDS = 30  # fewer joined rewards than this: no estimate (inconclusive), as the gate's min ESS


@dataclasses.dataclass
class _Sums:
    """Running sums for SNIPS of one quantity (reward, or one cost) and the stable's own mean."""

    n: int = 0
    low: float = math.inf  # the range of every joined value (agreeing or not): the interval's floor
    high: float = -math.inf
    w: float = 0.0
    wy: float = 0.0
    w2: float = 0.0
    w2y: float = 0.0
    w2y2: float = 0.0
    y: float = 0.0

    def add(self, weight: float, value: float) -> None:
        self.n += 1
        self.low, self.high = min(self.low, value), max(self.high, value)
        self.w += weight
        self.wy += weight * value
        self.w2 += weight * weight
        self.w2y += weight * weight * value
        self.w2y2 += weight * weight * value * value
        self.y += value


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The candidate's SNIPS estimate with its interval, and the stable's mean on the same requests."""

    point: float
    lower: float
    upper: float
    baseline: float
    rewards: int
    effective_sample_size: float


class ShadowEstimator:
    """Joins shadow decisions to their rewards by request id and keeps SNIPS sums per quantity."""

    def __init__(self, confidence: float = 0.95, capacity: int = 200_000) -> None:
        self.z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
        self.capacity = capacity
        self._weights: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._sums: dict[str, _Sums] = {}

    def reset(self) -> None:
        """A new shadow window: forget pending decisions and sums."""
        self._weights.clear()
        self._sums.clear()

    def decided(self, request_id: object, served_action: object, propensity: object, candidate_action: object) -> None:
        """Remember the importance weight of one mirrored request (discrete actions with a propensity only)."""
        if not isinstance(request_id, str) or isinstance(served_action, bool) or isinstance(candidate_action, bool):
            return
        if not (isinstance(served_action, int) and isinstance(candidate_action, int)):
            return
        if not isinstance(propensity, int | float) or not 0.0 < float(propensity) <= 1.0:
            return
        self._weights[request_id] = (served_action == candidate_action) / float(propensity)
        if len(self._weights) > self.capacity:
            self._weights.popitem(last=False)

    def rewarded(self, request_id: object, reward: object, costs: object) -> bool:
        """Count a reward (and its costs) of a mirrored request; False when the request is unknown here."""
        if not isinstance(request_id, str):
            return False
        weight = self._weights.pop(request_id, None)
        if weight is None or not _finite(reward):
            return False
        self._sums.setdefault("reward", _Sums()).add(weight, float(reward))  # type: ignore[arg-type]
        if isinstance(costs, Mapping):
            for name, value in costs.items():
                if isinstance(name, str) and _finite(value):
                    self._sums.setdefault(f"cost:{name}", _Sums()).add(weight, float(value))
        return True

    def joined(self, quantity: str) -> int:
        """Rewards of mirrored requests counted for `quantity` in this window."""
        sums = self._sums.get(quantity)
        return 0 if sums is None else sums.n

    def estimates(self) -> dict[str, Estimate | None]:
        """Per quantity ("reward", "cost:<name>"): the estimate, or None while it cannot be made."""
        return {quantity: self._estimate(sums) for quantity, sums in self._sums.items()}

    def _estimate(self, s: _Sums) -> Estimate | None:
        if s.n < MIN_REWARDS or s.w <= 0.0:
            return None
        point = s.wy / s.w
        spread = max(s.w2y2 - 2.0 * point * s.w2y + point * point * s.w2, 0.0)
        ess = s.w * s.w / s.w2
        # The delta method has zero width when every agreeing request had the same value (no violation at all):
        # never narrower than Wilson's interval at p = 0, z^2 / (ESS + z^2) of the values' observed range.
        floor = (s.high - s.low) * self.z * self.z / (ess + self.z * self.z)
        half = max(self.z * math.sqrt(spread) / s.w, floor)
        return Estimate(point=point, lower=point - half, upper=point + half, baseline=s.y / s.n,
                        rewards=s.n, effective_sample_size=ess)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
