"""What a join means: the reward window, the reward function and what happens to decisions without a reward.

Why a module of its own: the streaming joiner, the in-memory dataset step of `policy-server ope`
and `train`, and the CLIs must read one set of rules the same way. Azure Personalizer's Reward
Wait Time and Default Reward are the model: a reward counts when it arrives within the window
after its decision; later ones are `late` (counted, not joined); a decision with none gets the
default reward or is left out; a decision whose window is still open at ``as_of`` is `pending`.
"""

from __future__ import annotations

import enum
import math
import re
import time
from dataclasses import dataclass, field

from policy_server.errors import PolicyServerError

__all__ = ["JoinError", "JoinOptions", "RewardFunction", "parse_as_of", "parse_duration"]


class JoinError(PolicyServerError, ValueError):
    """The join cannot run as asked; the message says what to change (one line, no traceback)."""


class RewardFunction(enum.Enum):
    """How the distinct reward events of one decision (and each cost, by name) combine into one value."""

    SUM = "sum"
    FIRST = "first"
    LAST = "last"
    MEAN = "mean"
    MAX = "max"

    def sql(self, value: str, order: str) -> str:
        """The DuckDB aggregate over ``value``; ``order`` breaks first/last (time, then log order)."""
        return {
            RewardFunction.SUM: f"sum({value})",
            RewardFunction.FIRST: f"first({value} ORDER BY {order})",
            RewardFunction.LAST: f"last({value} ORDER BY {order})",
            RewardFunction.MEAN: f"avg({value})",
            RewardFunction.MAX: f"max({value})",
        }[self]


@dataclass(frozen=True)
class JoinOptions:
    """The rules of one join.

    * **window**: seconds after its decision within which a reward counts (``None``: unbounded, nothing is
      late and nothing is pending).
    * **reward_function**: combines several distinct events of one decision.
    * **default_reward**: the reward of a decision with none in its window (``None``: such decisions are
      excluded from the output).
    * **as_of**: Unix seconds the join is taken at (default: now). Rewards logged after it are ignored, and a
      decision whose window closes after it is pending.
    """

    window: float | None = None
    reward_function: RewardFunction = RewardFunction.FIRST
    default_reward: float | None = None
    as_of: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.window is not None and not (self.window >= 0 and math.isfinite(self.window)):
            raise JoinError(f"the reward window must be a duration >= 0 (e.g. 1h), got {self.window!r} seconds")
        if self.default_reward is not None and not math.isfinite(self.default_reward):
            raise JoinError(f"--default-reward must be a finite number, got {self.default_reward!r}")


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str | None) -> float | None:
    """Seconds of a duration such as ``90s``, ``15m``, ``1h30m``, ``7d`` or a bare number of seconds.

    ``None``, ``""``, ``none``, ``unbounded`` and ``inf`` mean no window.
    """
    if text is None or text.strip().lower() in ("", "none", "unbounded", "inf"):
        return None
    s = text.strip().lower()
    try:
        return float(s)
    except ValueError:
        pass
    parts = _PART.findall(s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise JoinError(f"cannot read the duration {text!r}: use e.g. 90s, 15m, 1h, 1h30m, 7d or seconds")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_as_of(text: str | None) -> float:
    """Unix seconds of ``--as-of``: an ISO 8601 time (UTC when it has no offset) or epoch seconds; now if None."""
    if text is None:
        return time.time()
    try:
        return float(text)
    except ValueError:
        pass
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise JoinError(f"cannot read --as-of {text!r}: use ISO 8601 (2026-12-06T20:00:00Z) or epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()
