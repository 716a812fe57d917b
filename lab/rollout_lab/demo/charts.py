"""The report's charts: matplotlib figures rendered to PNG data URIs, so the page stays one file.

Every x axis is seconds since the rollout started (`t0`, chosen by `report.origin`), because a
reader compares moments within one rollout ("breached 40 s in"), never wall-clock instants.
Each function returns None when its data is missing, so an older or shorter report still renders.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from typing import Any

from rollout_operator.engine import conditions

__all__ = ["by_variant", "condition", "guardrails", "judge", "offline_gate", "weights"]

_COLOURS = {"stable": "#1f77b4", "candidate": "#d62728"}
_MARKERS = {"RolledBack": ("rolled back", "#c00000", "v"), "Promoted": ("promoted", "#008000", "^")}


def condition(text: str | None) -> tuple[str, float] | None:
    """A guardrail condition such as '< 0.05' as (operator, threshold); None when it is not one."""
    try:
        return conditions.parse_condition(text or "")
    except ValueError:
        return None


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Any, list[Any]]:
    """A figure and its axes, row by row."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a Job, a CI runner or a test
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    return fig, list(axes.flat)


def weights(entry: dict[str, Any], t0: float, marks: list[tuple[float, str]]) -> str | None:
    """The candidate's weight over time with its phases, the shadow span and rollback/promotion markers.

    `marks` are (seconds since start, Event reason) of the rollout's RolledBack and Promoted Events.
    """
    timeline = entry.get("timeline") or []
    if not timeline:
        return None
    fig, axes = _figure(7, 2.6)
    ax = axes[0]
    xs = [s["time"] - t0 for s in timeline]
    ax.step(xs, [s.get("weight") or 0 for s in timeline], where="post", label="desired (status)", color="#444")
    ax.step(xs, [s["actual_weight"] if s.get("actual_weight") is not None else float("nan") for s in timeline],
            where="post", label="applied by the router", color="#d62728", linestyle="--")
    shadow = [x for x, s in zip(xs, timeline, strict=True) if s.get("shadow")]
    if shadow:
        ax.axvspan(min(shadow), max(shadow), color="#9edae5", alpha=0.4, label="shadow")
    last_phase = None
    for x, s in zip(xs, timeline, strict=True):
        if s.get("phase") != last_phase:
            ax.annotate(str(s.get("phase")), (x, 102), fontsize=7, rotation=30)
            last_phase = s.get("phase")
    for x, reason in marks:
        label, colour, marker = _MARKERS[reason]
        ax.axvline(x, color=colour, linewidth=1.5)
        ax.plot([x], [-2], marker=marker, markersize=10, color=colour, linestyle="none",
                label=f"{label} (t = {x:.0f} s)")
    ax.set_ylim(-5, 125)
    ax.set_xlabel("seconds since the rollout started")
    ax.set_ylabel("candidate weight %")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 0.72))
    ax.set_title(f"{entry.get('rollout')}: traffic weight over time", fontsize=9)
    return _png(fig)


def by_variant(entry: dict[str, Any], t0: float) -> str | None:
    """Conversion and margin-violation rates per variant, in 3-second windows with at least 5 rewards."""
    rows = [r for r in entry.get("trafficSeries") or [] if r.get("variant") in _COLOURS]
    if not rows:
        return None
    per: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0.0]))
    window = 3  # seconds per point: fewer, steadier points
    for r in rows:
        acc = per[r["variant"]][int((r["t"] - t0) // window)]
        acc[0] += r.get("rewards") or 0
        acc[1] += r.get("reward_sum") or 0
        acc[2] += r.get("violations") or 0
    fig, axes = _figure(9, 2.6, ncols=2)
    ax1, ax2 = axes
    for variant, points in per.items():
        keys = sorted(k for k, v in points.items() if v[0] >= 5)
        xs = [k * window for k in keys]
        ax1.plot(xs, [points[k][1] / points[k][0] for k in keys], marker=".", label=variant, color=_COLOURS[variant])
        ax2.plot(xs, [points[k][2] / points[k][0] for k in keys], marker=".", label=variant, color=_COLOURS[variant])
    ax1.set_title("reward (conversion rate) by variant", fontsize=9)
    ax2.set_title("cost: margin-violation rate by variant", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xlabel("seconds since the rollout started")
        ax.legend(fontsize=7)
    return _png(fig)


def guardrails(entry: dict[str, Any], t0: float, breach: tuple[str, float] | None) -> str | None:
    """One panel per guardrail: its judged values (live and shadow), the threshold, Fail points marked.

    `breach` is (guardrail, seconds since start) of the measurement that rolled the candidate back,
    drawn larger and labelled so the eye finds it first.
    """
    analyses = [a for a in entry.get("analyses") or [] if a.get("guardrail")]
    if not analyses:
        return None
    names = list(dict.fromkeys(a["guardrail"] for a in analyses))
    cols, rows = min(len(names), 3), (len(names) + 2) // 3
    fig, axes = _figure(3.4 * cols, 2.6 * rows, ncols=cols, nrows=rows)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes, names, strict=False):
        own = [a for a in analyses if a["guardrail"] == name]
        for shadow, style, colour in ((True, ":", "#17becf"), (False, "-", "#444")):
            points = [a for a in own if bool(a.get("shadow")) is shadow]
            if not points:
                continue
            xs = [a["t"] - t0 for a in points]
            ys = [a["value"] if a.get("value") is not None else float("nan") for a in points]
            ax.plot(xs, ys, linestyle=style, marker=".", color=colour, label="shadow" if shadow else "live")
            failed = [(x, y) for x, y, a in zip(xs, ys, points, strict=True) if a.get("verdict") == "Fail"]
            if failed:
                ax.plot([x for x, _ in failed], [y for _, y in failed], "x", color="#c00000", markersize=8,
                        label="Fail")
        parsed = condition(next((a.get("condition") for a in own if a.get("condition")), None))
        if parsed is not None:
            ax.axhline(parsed[1], color="#c00000", linestyle="--", linewidth=1,
                       label=f"pass: {parsed[0]} {parsed[1]:g}")
        if breach is not None and breach[0] == name:
            hit = min(own, key=lambda a: abs(a["t"] - t0 - breach[1]))
            if hit.get("value") is not None:
                ax.plot([breach[1]], [hit["value"]], "o", markersize=14, markerfacecolor="none",
                        markeredgecolor="#c00000", markeredgewidth=2, label=f"breach (t = {breach[1]:.0f} s)")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("seconds since the rollout started", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncols=2, frameon=False)
    return _png(fig)


def offline_gate(entry: dict[str, Any]) -> str | None:
    """The gate's reward estimates (interval, lower bound vs required) and each cost's upper bound vs budget."""
    gate = entry.get("offlineEvaluation") or {}
    estimates = [e for e in gate.get("estimates") or [] if e.get("value") is not None]
    costs = [c for c in gate.get("constraints") or [] if c.get("value") is not None]
    if not estimates and not costs:
        return None
    fig, axes = _figure(4.5 * (bool(estimates) + bool(costs)), 2.6, ncols=bool(estimates) + bool(costs))
    panels = iter(axes)
    if estimates:
        ax = next(panels)
        values = [e["value"] for e in estimates]
        lows = [e["value"] - (e["ciLow"] if e.get("ciLow") is not None else e["value"]) for e in estimates]
        highs = [(e["ciHigh"] if e.get("ciHigh") is not None else e["value"]) - e["value"] for e in estimates]
        ax.errorbar(range(len(values)), values, yerr=[lows, highs], fmt="o", capsize=5, color="#d62728",
                    label="candidate (CI)")
        bounds = [(i, e["lowerBound"]) for i, e in enumerate(estimates) if e.get("lowerBound") is not None]
        if bounds:
            ax.plot([i for i, _ in bounds], [b for _, b in bounds], "_", markersize=18, color="#7f0000",
                    label="lower bound")
        if gate.get("baselineValue") is not None:
            ax.axhline(gate["baselineValue"], color="#1f77b4", label="fallback")
        if gate.get("required") is not None:
            ax.axhline(gate["required"], color="#888", linestyle=":", label="required lower bound")
        ax.set_xticks(range(len(values)), [e["estimator"] for e in estimates])
        ax.set_title(f"offline gate, reward: {gate.get('phase')}", fontsize=9)
        ax.legend(fontsize=7)
    if costs:
        ax = next(panels)
        labels = [f"{c['cost']}\n{c.get('estimator') or ''}" for c in costs]
        ax.plot(range(len(costs)), [c["value"] for c in costs], "o", color="#d62728", label="estimate")
        uppers = [(i, c["upperBound"]) for i, c in enumerate(costs) if c.get("upperBound") is not None]
        ax.plot([i for i, _ in uppers], [u for _, u in uppers], "v", color="#7f0000", label="upper bound")
        budgets = [(i, c["budget"]) for i, c in enumerate(costs) if c.get("budget") is not None]
        ax.plot([i for i, _ in budgets], [b for _, b in budgets], "_", markersize=24, markeredgewidth=2,
                color="#c00000", label="budget")
        ax.set_xticks(range(len(costs)), labels, fontsize=7)
        ax.set_xlim(-0.6, len(costs) - 0.4)
        ax.set_title("offline gate, cost budgets", fontsize=9)
        ax.legend(fontsize=7)
    return _png(fig)


def judge(entry: dict[str, Any], t0: float) -> str | None:
    """The judge's estimate (candidate minus stable) and its confidence interval over time."""
    series = [p for p in entry.get("judgeSeries") or [] if p.get("estimate") is not None]
    if not series:
        return None
    fig, axes = _figure(7, 2.4)
    ax = axes[0]
    xs = [p["t"] - t0 for p in series]
    nan = float("nan")
    lower = [p["lower"] if p.get("lower") is not None else nan for p in series]
    upper = [p["upper"] if p.get("upper") is not None else nan for p in series]
    ax.fill_between(xs, lower, upper, color="#ff9896", alpha=0.5, label="interval")
    ax.plot(xs, [p["estimate"] for p in series], marker=".", color="#d62728", label="estimate")
    ax.axhline(0, color="#444", linewidth=0.8)
    ax.set_xlabel("seconds since the rollout started")
    ax.set_ylabel("candidate - stable")
    ax.set_title(f"judge: final decision {series[-1].get('decision')}", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)
