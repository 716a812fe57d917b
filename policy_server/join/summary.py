"""What a join saw: the counts `policy-server join --json` prints, in total and per variant.

Why a module of its own: every hour (and every shard) of a streaming join yields one of these and
they add up, so the arithmetic lives in one place. ``decisions = rewarded + defaulted + excluded +
pending`` holds in total and per variant; ``late`` and ``duplicates`` count reward rows of known
decisions, ``orphans`` reward rows whose decision is nowhere in the log.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["COUNTS", "Counts", "Summary"]

COUNTS = ("decisions", "rewarded", "defaulted", "excluded", "pending", "late", "duplicates", "orphans")


@dataclass
class Counts:
    """The counters of one variant (or of all of them)."""

    decisions: int = 0
    rewarded: int = 0  # decisions in the output with at least one reward event in their window
    defaulted: int = 0  # decisions in the output that got the default reward
    excluded: int = 0  # decisions without a reward in their window, left out (no default reward)
    pending: int = 0  # decisions whose window was still open at as_of, left out
    late: int = 0  # distinct reward events that arrived after their decision's window
    duplicates: int = 0  # reward rows repeating an earlier (request_id, event_id), counted once
    orphans: int = 0  # reward rows whose decision is nowhere in the log

    def add(self, other: Counts) -> None:
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Summary:
    """Totals plus a per-variant breakdown (orphans have no decision, so they count under their logged variant)."""

    total: Counts = field(default_factory=Counts)
    variants: dict[str, Counts] = field(default_factory=dict)
    hours: int = 0
    shard: str | None = None

    def variant(self, name: str) -> Counts:
        return self.variants.setdefault(name, Counts())

    def add(self, name: str, counts: Counts) -> None:
        self.variant(name).add(counts)
        self.total.add(counts)

    def merge(self, other: Summary) -> None:
        for name, counts in other.variants.items():
            self.add(name, counts)
        self.hours += other.hours

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self.total)
        out["variants"] = {name: asdict(c) for name, c in sorted(self.variants.items())}
        out["hours"] = self.hours
        if self.shard is not None:
            out["shard"] = self.shard
        return out
