"""Timestamps as the status stores them.

Status keeps ISO-8601 strings. The engine must read back exactly the instant it wrote, or a
replay at the same `now` would see an analysis as due again (and count a measurement twice),
so sub-second precision is kept whenever the clock has it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["from_iso", "require_utc", "seconds_until", "to_iso"]


def require_utc(now: datetime) -> datetime:
    """Refuse naive datetimes: a wrong offset would shift every timer in the rollout."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(timezone.utc); got a naive datetime")
    return now.astimezone(UTC)


def to_iso(t: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as Kubernetes writes times; microseconds only when present."""
    t = t.astimezone(UTC)
    spec = "microseconds" if t.microsecond else "seconds"
    return t.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def from_iso(text: str | None) -> datetime | None:
    """Parse a status timestamp; None stays None. Naive strings are read as UTC."""
    if not text:
        return None
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def seconds_until(when: datetime, now: datetime) -> float:
    """Non-negative seconds from `now` to `when` (0 when already past)."""
    return max(0.0, (when - now) / timedelta(seconds=1))
