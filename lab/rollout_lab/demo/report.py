"""The demo's HTML report: one self-contained page with the plots embedded as PNG data URIs.

Per scenario: the candidate's weight over time (with the phases), conversion and margin
violations by variant over time, and the offline gate's estimates with their confidence
intervals against the fallback's value.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["write_html"]

_COLOURS = {"stable": "#1f77b4", "candidate": "#d62728"}


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _weights(entry: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    timeline = entry["timeline"]
    t0 = timeline[0]["time"] if timeline else 0.0
    fig, ax = plt.subplots(figsize=(7, 2.6))
    xs = [s["time"] - t0 for s in timeline]
    ax.step(xs, [s["weight"] for s in timeline], where="post", label="desired (status)", color="#444")
    ax.step(xs, [s["actual_weight"] if s["actual_weight"] is not None else float("nan") for s in timeline],
            where="post", label="applied by the router", color="#d62728", linestyle="--")
    shadow = [x for x, s in zip(xs, timeline, strict=True) if s["shadow"]]
    if shadow:
        ax.axvspan(min(shadow), max(shadow), color="#9edae5", alpha=0.4, label="shadow")
    last_phase = None
    for x, s in zip(xs, timeline, strict=True):
        if s["phase"] != last_phase:
            ax.annotate(s["phase"], (x, 102), fontsize=7, rotation=30)
            last_phase = s["phase"]
    ax.set_ylim(-5, 125)
    ax.set_xlabel("seconds since the rollout started")
    ax.set_ylabel("candidate weight %")
    ax.legend(fontsize=7, loc="center right")
    ax.set_title(f"{entry['rollout']}: traffic weight over time", fontsize=9)
    return _png(fig)


def _by_variant(entry: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    rows = entry["trafficSeries"]
    t0 = entry["timeline"][0]["time"] if entry["timeline"] else (rows[0]["t"] if rows else 0.0)
    per: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0.0]))
    window = 3  # seconds per point: fewer, steadier points
    for r in rows:
        if r["variant"] not in _COLOURS:
            continue
        acc = per[r["variant"]][int((r["t"] - t0) // window)]
        acc[0] += r["rewards"]
        acc[1] += r["reward_sum"]
        acc[2] += r["violations"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 2.6))
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


def _ope(entry: dict[str, Any]) -> str | None:
    import matplotlib.pyplot as plt

    gate = entry.get("offlineEvaluation") or {}
    estimates = [e for e in gate.get("estimates") or [] if e.get("value") is not None]
    if not estimates:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    names = [e["estimator"] for e in estimates]
    values = [e["value"] for e in estimates]
    lows = [e["value"] - (e.get("ciLow") if e.get("ciLow") is not None else e["value"]) for e in estimates]
    highs = [(e.get("ciHigh") if e.get("ciHigh") is not None else e["value"]) - e["value"] for e in estimates]
    ax.errorbar(range(len(names)), values, yerr=[lows, highs], fmt="o", capsize=5, color="#d62728",
                label="candidate (95% CI)")
    if gate.get("baselineValue") is not None:
        ax.axhline(gate["baselineValue"], color="#1f77b4", label="fallback")
    if gate.get("required") is not None:
        ax.axhline(gate["required"], color="#888", linestyle=":", label="required lower bound")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("estimated conversion")
    ax.set_title(f"offline gate: {gate.get('phase')}", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def write_html(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>policy-rollouts demo</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}.RolledBack{color:#c00}"
        ".Promoted{color:#080}img{max-width:100%}</style></head><body>",
        "<h1>policy-rollouts demo</h1>",
        f"<p>{esc(result['environment'])}. Wall time {result['wallSeconds']} s"
        f"{' (--fast)' if result['fast'] else ''}. Logged {result['logging']['rewards']} rewarded decisions of the "
        f"fallback (conversion {result['logging']['conversion']:.3f}, margin violations "
        f"{result['logging']['violationRate']:.3f}); trained two candidates in {result['training']['seconds']} s. "
        f"Offline gate: {esc(result['offlineGate'])}.</p>",
        "<table><tr><th>candidate</th><th>outcome</th><th>guardrail</th><th>message</th></tr>",
    ]
    for s in result["scenarios"]:
        parts.append(f"<tr><td>{esc(s['candidate'])}</td><td class='{esc(s['outcome'])}'>{esc(s['outcome'])}</td>"
                     f"<td>{esc(s.get('guardrail') or '')}</td><td>{esc(s.get('message') or '')}</td></tr>")
    parts.append("</table>")
    for s in result["scenarios"]:
        parts.append(f"<h2>{esc(s['rollout'])}: <span class='{esc(s['outcome'])}'>{esc(s['outcome'])}</span></h2>")
        parts.append(f"<p>{esc(s['description'])}</p>")
        for image in (_weights(s), _by_variant(s), _ope(s)):
            if image:
                parts.append(f"<img alt='plot' src='{image}'>")
        parts.append("<table><tr><th>variant (while live)</th><th>decisions</th><th>conversion</th>"
                     "<th>violation rate</th></tr>")
        for variant, t in sorted(s["trafficWhileLive"].items()):
            conv = "-" if t["conversion"] is None else f"{t['conversion']:.3f}"
            viol = "-" if t["violationRate"] is None else f"{t['violationRate']:.3f}"
            parts.append(f"<tr><td>{esc(variant)}</td><td>{t['decisions']}</td><td>{conv}</td><td>{viol}</td></tr>")
        parts.append("</table><h3>history</h3><table>")
        for h in s["history"]:
            parts.append(f"<tr><td>{esc(h['time'])}</td><td>{esc(h['phase'])}</td><td>{esc(h['reason'])}</td>"
                         f"<td>{esc(h.get('message', ''))}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
