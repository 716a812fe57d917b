"""The root of every error local mode, the demo and the judge benchmark raise on purpose."""

from __future__ import annotations

__all__ = ["RolloutLabError"]


class RolloutLabError(Exception):
    """A failure of a local run or the demo that we anticipated; the message says what to do."""
