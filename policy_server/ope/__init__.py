"""Off-policy evaluation: how good would a candidate policy have been on decisions another policy logged?

This is the array-level foundation (numpy + scipy; `fqe` adds torch and is imported only on demand):

- `bandit`: IPS, SNIPS, DM, DR, SNDR, Switch-DR, DR-OS with obp-compatible definitions, and weight diagnostics.
- `sequential`: PDIS, WPDIS and doubly robust estimators for episodes; `fqe` for long horizons.
- `confidence`: vectorised bootstrap intervals and high-confidence lower bounds (Student-t, empirical Bernstein).
- `gate`: pass / fail / refuse a candidate from a lower bound, ESS and support.

On top of it, what `policy-server ope` and `policy-server train` share (their command lines live in `cli`
and `policy_server.train.cli`):

- `logged`: the decision log's rewarded, served, discrete decisions as arrays (`LoggedData`).
- `evaluate`: a candidate artifact's probabilities on them, every estimator, intervals and one verdict.

Formulas and their obp correspondence: docs/ope.md.
"""

import importlib
from typing import Any

from policy_server.ope._checks import OPEError, OPEInputError

__all__ = [
    "OPEError",
    "OPEInputError",
    "bandit",
    "confidence",
    "diagnostics",
    "evaluate",
    "gate",
    "logged",
    "sequential",
]


def __getattr__(name: str) -> Any:
    """Submodules load on first use: ``confidence`` (and ``gate``) import scipy, ~80 MB that the
    policy server's ``serve`` and ``route`` commands, which register the ``ope`` command's
    arguments, never need."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
