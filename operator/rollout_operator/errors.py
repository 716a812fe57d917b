"""The root of every error this package raises on purpose.

`except RolloutOperatorError` catches a failure we anticipated and described (its message says
what was wrong and what to do); anything else is a bug. Each subclass keeps the builtin it
extended before (ValueError, RuntimeError) so existing handlers still match.
"""

from __future__ import annotations

__all__ = ["RolloutOperatorError"]


class RolloutOperatorError(Exception):
    """A failure the operator, its plug-ins or its CLI anticipated; the message is for the user."""
