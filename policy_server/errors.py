"""The root of every error the policy server, router, OPE and training code raise on purpose.

`except PolicyServerError` catches a failure we anticipated and described (the message says what
was wrong and what to do); anything else is a bug. Each subclass keeps the builtin it extended
before (ValueError, RuntimeError) so existing handlers still match.
"""

from __future__ import annotations

__all__ = ["PolicyServerError"]


class PolicyServerError(Exception):
    """A failure of serving, routing, logging, evaluation or training that we anticipated."""
