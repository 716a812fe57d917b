"""`policy-rollouts bench-judges`: false rollbacks and time to detect a regression, per judge.

Synthetic canary traffic: each analysis interval the candidate serves `n_candidate` decisions and
stable `n_stable`; per-decision rewards have mean 1 (times an optional common drift) and standard
deviation `sd`; a regression of `g` scales the candidate's mean by (1 - g). Every judge sees what
Prometheus would give it each interval (cumulative reward sums and counts; the reward-ratio
template's value; the variants' interval means) and is driven through the engine's `Judge`
interface exactly as `progress.reconcile_analysis` drives it, state carried in `status.judge`.

Protocol (bench/README.md): every rollout step lasts at most `horizon` intervals. Each fixed
method's free parameters (threshold and failureLimit; threshold and failed-checks count; test
horizon) are calibrated on separate A/A runs to the false-rollback budget alpha and chosen to
maximise detection of the smallest regression (2%) within the horizon; they are then evaluated
on fresh seeds. The sequential judge is not calibrated: it runs at its nominal alpha.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rollout_operator import api
from rollout_operator.engine import judges
from rollout_operator.engine.judges import base
from rollout_operator.engine.types import Measurement

from rollout_lab.judge_bench import baselines

__all__ = ["Setup", "command", "run"]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GAPS = (0.02, 0.05)


@dataclasses.dataclass(frozen=True)
class Setup:
    alpha: float = 0.05
    horizon: int = 150
    n_candidate: int = 200
    n_stable: int = 1800
    sd: float = 1.0
    drift: float = 0.0  # amplitude of a common multiplicative cycle (time of day), period 60 intervals
    aa_runs: int = 2000
    detect_runs: int = 500
    calibration_runs: int = 2000
    seed: int = 20261123  # bench.cli.DEFAULT_SEED


def simulate(setup: Setup, runs: int, gap: float, seed: int) -> dict[str, np.ndarray]:
    """Per-interval reward sums of both variants, shape (runs, horizon)."""
    rng = np.random.default_rng(seed)
    t = np.arange(setup.horizon)
    level = 1.0 + setup.drift * np.sin(2 * np.pi * (t[None, :] + rng.uniform(0, 60, (runs, 1))) / 60.0)
    nc, ns = setup.n_candidate, setup.n_stable
    cand = rng.normal(level * (1 - gap) * nc, setup.sd * math.sqrt(nc))
    stab = rng.normal(level * ns, setup.sd * math.sqrt(ns))
    return {"candidate_sum": cand, "stable_sum": stab}


def ratio(data: dict[str, np.ndarray], setup: Setup) -> np.ndarray:
    """The reward-ratio template's value per interval (window = interval)."""
    return (data["candidate_sum"] / setup.n_candidate) / (data["stable_sum"] / setup.n_stable)


# ------------------------------------------------------------------- vectorised calibration


def _first_consecutive(fails: np.ndarray, limit: int) -> np.ndarray:
    """Index (0-based) of the interval where `limit` consecutive failures are first reached, or -1."""
    run = np.zeros(fails.shape[0], dtype=int)
    first = np.full(fails.shape[0], -1)
    for i in range(fails.shape[1]):
        run = np.where(fails[:, i], run + 1, 0)
        hit = (run >= limit) & (first < 0)
        first[hit] = i
    return first


def _first_cumulative(fails: np.ndarray, limit: int) -> np.ndarray:
    total = np.cumsum(fails, axis=1)
    reached = total >= limit
    return np.where(reached.any(axis=1), reached.argmax(axis=1), -1)


def _calibrate_threshold(
    aa: np.ndarray, alpha: float, first: Callable[[np.ndarray, int], np.ndarray], limit: int
) -> float:
    """Largest ratio threshold c (fail when value <= c) whose A/A false-rollback rate is <= alpha."""
    lo, hi = 0.0, 1.5
    for _ in range(40):
        mid = (lo + hi) / 2
        rate = (first(aa <= mid, limit) >= 0).mean()
        lo, hi = (mid, hi) if rate <= alpha else (lo, mid)
    return lo


def calibrate(setup: Setup) -> dict[str, dict[str, Any]]:
    """Tune each fixed method on calibration seeds: FRR <= alpha, best detection of 2% within the horizon."""
    aa = ratio(simulate(setup, setup.calibration_runs, 0.0, setup.seed + 1), setup)
    small = simulate(setup, setup.calibration_runs // 2, GAPS[0], setup.seed + 2)
    small_ratio = ratio(small, setup)
    out: dict[str, dict[str, Any]] = {}
    for name, first, limits in (
        ("argo-threshold", _first_consecutive, (1, 2, 3, 4, 6, 8, 12, 16)),
        ("flagger-failed-checks", _first_cumulative, (1, 2, 3, 5, 8, 12, 20, 30, 45, 60, 80)),
    ):
        best: dict[str, Any] | None = None
        for limit in limits:
            c = _calibrate_threshold(aa, setup.alpha, first, limit)
            power = float((first(small_ratio <= c, limit) >= 0).mean())
            if best is None or power > best["power_at_0.02"]:
                best = {"limit": limit, "threshold": c, "power_at_0.02": power}
        assert best is not None
        out[name] = best
    aa_data = simulate(setup, setup.calibration_runs, 0.0, setup.seed + 1)
    best_mw: dict[str, Any] | None = None
    for horizon in sorted({10, 20, 40, 60, 90, 120, setup.horizon} & set(range(2, setup.horizon + 1))):
        z_aa = baselines.mann_whitney_z(
            aa_data["candidate_sum"][:, :horizon] / setup.n_candidate,
            aa_data["stable_sum"][:, :horizon] / setup.n_stable,
        )
        critical = float(np.quantile(z_aa, setup.alpha))
        z_small = baselines.mann_whitney_z(
            small["candidate_sum"][:, :horizon] / setup.n_candidate, small["stable_sum"][:, :horizon] / setup.n_stable
        )
        power = float((z_small < critical).mean())
        if best_mw is None or power > best_mw["power_at_0.02"]:
            best_mw = {"horizon": horizon, "critical_z": critical, "power_at_0.02": power}
    assert best_mw is not None
    out["kayenta-mann-whitney"] = best_mw
    return out


# ------------------------------------------------------------------- through the Judge interface


def _spec(setup: Setup) -> api.PolicyRolloutSpec:
    return api.PolicyRolloutSpec.model_validate(
        {
            "policy": {"image": "i", "artifact": "a", "version": "v2"},
            "fallback": {"image": "i", "artifact": "a", "version": "v1"},
            "steps": [{"setWeight": 10}],
            "analysis": {
                "interval": "1m",
                "judge": {"kind": "sequential", "alpha": setup.alpha, "minDetectableEffect": GAPS[0]},
            },
        }
    )


@dataclasses.dataclass
class Method:
    name: str
    judge: base.Judge
    spec: api.PolicyRolloutSpec
    measure: Callable[[dict[str, np.ndarray], int, int], dict[str, Measurement]]
    config: dict[str, Any]


def methods(setup: Setup, calibration: dict[str, dict[str, Any]]) -> list[Method]:
    spec = _spec(setup)
    nc, ns = setup.n_candidate, setup.n_stable

    def counters(data: dict[str, np.ndarray], run: int, i: int) -> dict[str, Measurement]:
        # Cumulative counters as Prometheus holds them; the first reading is the baseline (all zero).
        c = float(data["candidate_sum"][run, :i].sum())
        s = float(data["stable_sum"][run, :i].sum())
        values = {"candidate_sum": c, "candidate_count": nc * i, "stable_sum": s, "stable_count": ns * i}
        return {judges.SERIES_PREFIX + k: Measurement(v) for k, v in values.items()}

    def reward_ratio(data: dict[str, np.ndarray], run: int, i: int) -> dict[str, Measurement]:
        if i == 0:
            return {}
        value = (data["candidate_sum"][run, i - 1] / nc) / (data["stable_sum"][run, i - 1] / ns)
        return {"reward-ratio": Measurement(float(value))}

    def means(data: dict[str, np.ndarray], run: int, i: int) -> dict[str, Measurement]:
        if i == 0:
            return {}
        return {
            judges.SERIES_PREFIX + "candidate_mean": Measurement(float(data["candidate_sum"][run, i - 1] / nc)),
            judges.SERIES_PREFIX + "stable_mean": Measurement(float(data["stable_sum"][run, i - 1] / ns)),
        }

    argo, flagger, mw = (
        calibration["argo-threshold"],
        calibration["flagger-failed-checks"],
        calibration["kayenta-mann-whitney"],
    )
    # A condition passes when it holds: fail when value <= c, i.e. pass on "> c".
    argo_spec = baselines.argo_spec(spec, f"> {argo['threshold']:.10f}", argo["limit"])
    flagger_spec = baselines.argo_spec(spec, f"> {flagger['threshold']:.10f}", 1)
    return [
        Method("sequential", judges.make_judge("sequential"), spec, counters, spec.analysis.judge.wire()),
        Method("argo-threshold", judges.make_judge("threshold"), argo_spec, reward_ratio, argo),
        Method(
            "flagger-failed-checks", baselines.FailedChecksJudge(flagger["limit"]), flagger_spec, reward_ratio, flagger
        ),
        Method("kayenta-mann-whitney", baselines.MannWhitneyJudge(mw["horizon"], mw["critical_z"]), spec, means, mw),
    ]


def rollout_decisions(method: Method, data: dict[str, np.ndarray], run: int, horizon: int) -> int | None:
    """Analyses until the judge rolls back (1-based), or None if it never does within the horizon.

    Analysis 0 happens when the candidate goes live (counters at their baseline); analysis i sees
    the i intervals since.
    """
    status = api.PolicyRolloutStatus(stable_version="v1")
    for i in range(horizon + 1):
        measurements = method.measure(data, run, i)
        judgement = method.judge.judge(method.spec, status, measurements, T0)
        if judgement.rollback is not None:
            return max(i, 1)
        status.judge, status.guardrails = judgement.state, judgement.guardrails
    return None


def evaluate(setup: Setup, method: Method, gap: float, runs: int, seed: int) -> list[int | None]:
    data = simulate(setup, runs, gap, seed)
    return [rollout_decisions(method, data, r, setup.horizon) for r in range(runs)]


def _median(decisions: list[int | None]) -> float | None:
    """Median analyses to roll back, counting 'never within the horizon' as infinitely many."""
    values = sorted(math.inf if d is None else d for d in decisions)
    m = float(np.median(values))
    return None if math.isinf(m) else m


def run(setup: Setup, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    started = time.monotonic()
    calibration = calibrate(setup)
    log(f"calibrated fixed methods in {time.monotonic() - started:.1f}s: {json.dumps(calibration)}")
    result: dict[str, Any] = {
        "alpha": setup.alpha,
        "sequential_method": "sequential",
        "best_fixed_method": None,
        "setup": dataclasses.asdict(setup),
        "methods": {},
    }
    curves: dict[str, dict[str, list[int | None]]] = {}
    for method in methods(setup, calibration):
        t = time.monotonic()
        aa = evaluate(setup, method, 0.0, setup.aa_runs, setup.seed + 10)
        entry: dict[str, Any] = {
            "false_rollback_rate": sum(d is not None for d in aa) / len(aa),
            "aa_runs": len(aa),
            "detect_decisions_median": {},
            "detect_rate": {},
            "config": method.config,
        }
        curves[method.name] = {}
        for k, gap in enumerate(GAPS):
            decisions = evaluate(setup, method, gap, setup.detect_runs, setup.seed + 20 + k)
            entry["detect_decisions_median"][f"{gap:g}"] = _median(decisions)
            entry["detect_rate"][f"{gap:g}"] = sum(d is not None for d in decisions) / len(decisions)
            curves[method.name][f"{gap:g}"] = decisions
        entry["seconds"] = round(time.monotonic() - t, 1)
        result["methods"][method.name] = entry
        log(f"{method.name}: {json.dumps(entry)}")
    fixed = {k: v for k, v in result["methods"].items() if k != "sequential"}

    def at(name: str, gap: str) -> float:
        value = fixed[name]["detect_decisions_median"][gap]
        return math.inf if value is None else value

    result["best_fixed_method"] = min(fixed, key=lambda n: (at(n, "0.05"), at(n, "0.02")))
    seq = result["methods"]["sequential"]
    best = result["methods"][result["best_fixed_method"]]
    result["targets"] = _targets(setup, seq, best)
    result["curves"] = curves
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _targets(setup: Setup, seq: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    def val(entry: dict[str, Any], gap: str) -> float:
        v = entry["detect_decisions_median"][gap]
        return math.inf if v is None else float(v)

    speedup = val(best, "0.05") / val(seq, "0.05") if val(seq, "0.05") else math.inf
    return {
        "sequential_false_rollback_rate_le_alpha": seq["false_rollback_rate"] <= setup.alpha,
        "sequential_aa_runs": seq["aa_runs"],
        "speedup_at_0.05": None if math.isinf(speedup) else round(speedup, 2),
        "speedup_at_0.05_ge_2": speedup >= 2,
        "no_slower_at_0.02": val(seq, "0.02") <= val(best, "0.02"),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Cumulative share of regressed rollouts rolled back vs analyses, per method and gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = result["setup"]["horizon"]
    fig, axes = plt.subplots(1, len(GAPS), figsize=(11, 4), sharey=True)
    for ax, gap in zip(axes, GAPS, strict=True):
        for name, per_gap in result["curves"].items():
            decisions = per_gap[f"{gap:g}"]
            xs = np.arange(1, horizon + 1)
            share = [(np.array([d for d in decisions if d is not None]) <= x).sum() / len(decisions) for x in xs]
            frr = result["methods"][name]["false_rollback_rate"]
            ax.step(xs, share, where="post", label=f"{name} (A/A false rollbacks {frr:.3f})")
        ax.set_title(f"{gap:.0%} reward regression")
        ax.set_xlabel("analyses (intervals) since the candidate went live")
        ax.axhline(0.5, color="grey", lw=0.5, ls=":")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of rollouts rolled back")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Judges at false-rollback budget alpha = {result['alpha']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------- CLI


def command(args: argparse.Namespace) -> int:
    """`policy-rollouts bench-judges` (arguments declared in bench/cli.py)."""
    if not 0 < args.alpha < 0.5:
        sys.stderr.write(f"error: --alpha must be in (0, 0.5), got {args.alpha}\n")
        return 2
    setup = Setup(alpha=args.alpha, drift=args.drift, seed=args.seed)
    if args.quick:
        setup = dataclasses.replace(setup, aa_runs=1000, detect_runs=200, calibration_runs=1000)
    result = run(setup, log=lambda line: sys.stderr.write(line + "\n"))
    if args.plot is not None:
        plot(result, args.plot)
    summary = {k: v for k, v in result.items() if k != "curves"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(result) + "\n")
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    return 0


def dumps(result: dict[str, Any]) -> str:
    """Indented JSON with the per-rollout curves on one line each (thousands of numbers)."""
    text = json.dumps({**result, "curves": "__CURVES__"}, indent=1)
    curves = ",\n".join(f" {json.dumps(name)}: {json.dumps(c)}" for name, c in result.get("curves", {}).items())
    return text.replace('"__CURVES__"', "{\n" + curves + "\n }")


def main(argv: Sequence[str] | None = None) -> int:
    from rollout_lab.judge_bench import cli

    parser = argparse.ArgumentParser(prog="bench-judges")
    cli.add_bench_judges(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench-judges", *(argv if argv is not None else sys.argv[1:])])
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
