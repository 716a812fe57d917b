"""Off-policy evaluation: how good would a candidate policy have been on decisions another policy logged?

This is the array-level foundation (numpy + scipy; `fqe` adds torch and is imported only on demand):

- `bandit`: IPS, SNIPS, DM, DR, SNDR, Switch-DR, DR-OS with obp-compatible definitions, and weight diagnostics.
- `sequential`: PDIS, WPDIS and doubly robust estimators for episodes; `fqe` for long horizons.
- `confidence`: vectorised bootstrap intervals and high-confidence lower bounds (Student-t, empirical Bernstein).
- `gate`: pass / fail / refuse a candidate from a lower bound, ESS and support.

Formulas and their obp correspondence: docs/ope.md.
"""

import importlib
from typing import Any

from policy_server.ope._checks import OPEInputError

__all__ = ["OPEInputError", "bandit", "confidence", "diagnostics", "gate", "sequential"]


def __getattr__(name: str) -> Any:
    """Submodules load on first use: ``confidence`` (and ``gate``) import scipy, ~80 MB that the
    policy server's ``serve`` and ``route`` commands, which register the ``ope`` command's
    arguments, never need."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
