"""How much evidence the logs hold about the evaluation policy.

An estimate is only as good as the overlap between the behaviour and evaluation policies. These numbers let the gate
refuse to judge when the overlap is too thin (few effective samples) or missing (the evaluation policy takes actions
the behaviour policy never took, which no importance weight can recover).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Diagnostics", "effective_sample_size", "summarize_weights"]


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """Summary of the importance weights of one evaluation.

    `unsupported_mass` is None when the behaviour policy's full distribution was not given, i.e. support was not
    checked (the gate treats that as unknown, not as fine). It counts the evaluation policy's mass on actions whose
    behaviour probability is below `support_floor` (absolute; 0 counts only never-taken actions): an action logged
    with probability 1e-10 is as good as never logged, and Kish's ESS (scale invariant) cannot tell.

    `mean_weight_se` is the standard error of `mean_weight`. E[w] = 1 whenever the behaviour policy covers the
    evaluation policy, so a mean weight clearly below 1 is the self-normalisation check's evidence that the
    evaluation policy lives where the logs hold (almost) no decisions, or that the propensities are wrong.
    """

    n: int
    ess: float
    ess_ratio: float
    max_weight: float
    mean_weight: float
    unsupported_mass: float | None = None
    support_floor: float = 0.0
    mean_weight_se: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2; 0 when every weight is 0."""
    w = np.asarray(weights, dtype=np.float64)
    total_sq = float(np.dot(w, w))
    if total_sq == 0.0:
        return 0.0
    total = float(w.sum())
    return total * total / total_sq


def summarize_weights(
    weights: np.ndarray, unsupported_mass: float | None = None, support_floor: float = 0.0
) -> Diagnostics:
    w = np.asarray(weights, dtype=np.float64)
    n = int(w.shape[0])
    ess = effective_sample_size(w)
    return Diagnostics(
        n=n,
        ess=ess,
        ess_ratio=ess / n if n else 0.0,
        max_weight=float(w.max()) if n else 0.0,
        mean_weight=float(w.mean()) if n else 0.0,
        unsupported_mass=unsupported_mass,
        support_floor=support_floor,
        mean_weight_se=float(w.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
    )
