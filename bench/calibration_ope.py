"""The offline gate's half of the calibration benchmark: does each bound and interval cover at its stated level?

Context-free bandits with exact ground truth (the value of the evaluation policy is sum_a pi_e(a) mu(a)), replicated
many times; every bound is the library's own (`confidence.lower_bound`), on the contributions the gate judges.

* `HEAVY`: DR on heavy importance weights. One action is logged with probability 0.001 and taken 10 % of the time by
  the evaluation policy (weight 100), where the reward model is badly optimistic: the DR terms are strongly
  negatively skewed, the regime where Student-t and percentile bounds claim more than they hold.
* `MODERATE`: SNIPS intervals on weights up to 13, fixed normaliser (the CLI before #20) against the ratio bootstrap.
* `NEAR_DEFICIENT`: a logger that gives 1e-10 to the action the candidate takes 94 % of the time.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np

from policy_server.ope import bandit, confidence, gate


@dataclasses.dataclass(frozen=True)
class Bandit:
    behavior: tuple[float, ...]
    target: tuple[float, ...]
    mean_reward: tuple[float, ...]
    q_hat: tuple[float, ...]
    n: int

    @property
    def truth(self) -> float:
        return float(np.dot(self.target, self.mean_reward))

    @property
    def max_weight(self) -> float:
        """max pi_e / pi_b over actions: known before any reward is seen (both policies are)."""
        return float(max(e / b for e, b in zip(self.target, self.behavior, strict=True)))

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = len(self.behavior)
        action = rng.choice(k, size=self.n, p=np.asarray(self.behavior))
        reward = (rng.random(self.n) < np.asarray(self.mean_reward)[action]).astype(np.float64)
        return {
            "reward": reward,
            "action": action,
            "pscore": np.asarray(self.behavior)[action],
            "target": np.broadcast_to(np.asarray(self.target), (self.n, k)),
            "behavior": np.broadcast_to(np.asarray(self.behavior), (self.n, k)),
            "q_hat": np.broadcast_to(np.asarray(self.q_hat), (self.n, k)),
        }


HEAVY = Bandit(
    behavior=(0.5, 0.25, 0.15, 0.099, 0.001),
    target=(0.2, 0.2, 0.2, 0.3, 0.1),
    mean_reward=(0.5, 0.4, 0.6, 0.5, 0.05),
    q_hat=(0.5, 0.4, 0.6, 0.5, 0.6),
    n=5000,
)
MODERATE = Bandit(
    behavior=(0.4, 0.3, 0.2, 0.07, 0.03),
    target=(0.05, 0.05, 0.1, 0.4, 0.4),
    mean_reward=(0.2, 0.3, 0.5, 0.6, 0.4),
    q_hat=(0.3, 0.3, 0.4, 0.5, 0.5),
    n=2000,
)
NEAR_DEFICIENT = Bandit(
    behavior=(0.5, 0.3, 0.2 - 1e-10, 1e-10),
    target=(0.02, 0.02, 0.02, 0.94),
    mean_reward=(0.6, 0.5, 0.4, 0.02),
    q_hat=(0.6, 0.5, 0.4, 0.9),  # the reward model is optimistic where no data is
    n=5000,
)


def dr_value_range(case: Bandit) -> tuple[float, float]:
    """A priori range of one DR term for rewards in [0, 1]: the DM part in [0, 1], the correction within w_max."""
    return -case.max_weight, 1.0 + case.max_weight


def bound_coverage(runs: int, boot_runs: int, resamples: int, seed: int, confidence_level: float = 0.95) -> list[dict]:
    """Each bound's coverage of the true value (and mean distance below it) on HEAVY's DR terms."""
    delta = 1.0 - confidence_level
    rng = np.random.default_rng(seed)
    methods = typing.get_args(confidence.BoundMethod)
    lows: dict[str, list[float]] = {m: [] for m in methods}
    skews = []
    for r in range(runs):
        d = HEAVY.sample(rng)
        x = bandit.dr_rounds(d["reward"], d["action"], d["pscore"], d["target"], d["q_hat"])
        centred = x - x.mean()
        skews.append(float((centred**3).mean() / max(float((centred**2).mean()), 1e-300) ** 1.5))
        for m in methods:
            if m in ("bootstrap", "bootstrap_t") and r >= boot_runs:
                continue
            value_range = dr_value_range(HEAVY) if m == "bernstein" else None
            lows[m].append(confidence.lower_bound(x, delta, m, value_range=value_range, rng=seed + r))
    rows = []
    for m in methods:
        lb = np.asarray(lows[m])
        cover = float((lb <= HEAVY.truth).mean())
        rows.append({"case": "heavy-weight DR", "bound": m, "stated": confidence_level, "runs": int(lb.size),
                     "coverage": cover, "se": math.sqrt(max(cover * (1 - cover), 1e-12) / lb.size),
                     "mean_gap_below_truth": float((HEAVY.truth - lb).mean()),
                     "median_skewness": float(np.median(skews))})
    return rows


def snips_intervals(runs: int, resamples: int, seed: int, level: float = 0.95) -> list[dict]:
    """Two-sided SNIPS intervals on MODERATE: fixed normaliser (resampling w r / mean(w)) against the ratio."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[float, float]]] = {"fixed normaliser (before #20)": [], "ratio bootstrap": []}
    for r in range(runs):
        d = MODERATE.sample(rng)
        args = (d["reward"], d["action"], d["pscore"], d["target"])
        w = bandit.importance_weights(d["action"], d["pscore"], d["target"])
        fixed = confidence.bootstrap_ci(bandit.snips_rounds(*args), resamples, 1 - level, rng=seed + r)
        ratio = confidence.bootstrap_ci(w * d["reward"], resamples, 1 - level, rng=seed + r, denominator=w)
        out["fixed normaliser (before #20)"].append((fixed.lower, fixed.upper))
        out["ratio bootstrap"].append((ratio.lower, ratio.upper))
    rows = []
    for name, pairs in out.items():
        arr = np.asarray(pairs)
        cover = float(((arr[:, 0] <= MODERATE.truth) & (MODERATE.truth <= arr[:, 1])).mean())
        rows.append({"case": "SNIPS, weights up to 13", "interval": name, "stated": level, "runs": runs,
                     "coverage": cover, "se": math.sqrt(max(cover * (1 - cover), 1e-12) / runs),
                     "mean_width": float((arr[:, 1] - arr[:, 0]).mean())})
    return rows


def near_deficient_verdicts(seed: int) -> dict[str, object]:
    """The gate on a candidate that lives where the logger (almost) never goes, without and with the #20 checks."""
    d = NEAR_DEFICIENT.sample(np.random.default_rng(seed))
    x = bandit.dr_rounds(d["reward"], d["action"], d["pscore"], d["target"], d["q_hat"])
    old = bandit.diagnostics(d["action"], d["pscore"], d["target"], d["behavior"], floor=0.0)
    new = bandit.diagnostics(d["action"], d["pscore"], d["target"], d["behavior"])
    baseline = float(np.dot(NEAR_DEFICIENT.behavior, NEAR_DEFICIENT.mean_reward))
    before = gate.gate(x, baseline, diagnostics=old, bound="student_t", weight_band=None)
    after = gate.gate(x, baseline, diagnostics=new, bound="bernstein", value_range=dr_value_range(NEAR_DEFICIENT))
    weight_only = gate.gate(x, baseline, diagnostics=old, bound="bernstein", value_range=dr_value_range(NEAR_DEFICIENT))
    return {
        "truth": NEAR_DEFICIENT.truth, "baseline": baseline, "estimate": float(x.mean()), "ess": old.ess,
        "mean_weight": old.mean_weight, "unsupported_mass_floor_0": old.unsupported_mass,
        "unsupported_mass_default_floor": new.unsupported_mass,
        "before": str(before.verdict), "before_reason": before.reason,
        "after": str(after.verdict), "after_reason": after.reason,
        "weight_only": str(weight_only.verdict), "weight_only_reason": weight_only.reason,
    }
