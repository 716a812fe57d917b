"""`report.html` of the sequential scenario: the gate's numbers, the simulator's truth, training curves, rollouts.

Kept apart from `report` (the pricing demo's page): the sequential story is told by different
evidence. The trajectory gate's per-estimator intervals and per-cost upper bounds against the
budget, each policy's value measured in the simulator (which the gate never saw), and the
constrained trainer's curves: the Lagrange multiplier rising until the overheat estimate meets the
budget. Charts reuse `charts` (matplotlib, inline PNG).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from rollout_lab.demo import charts

__all__ = ["curves_chart", "write_html"]

# (title, tag) of the training curves drawn, when the trainer wrote them
CURVES = (
    ("TD loss", "loss/td"),
    ("critic: reward per day", "reward"),
    ("critic: overheat per day", "cost/overheat"),
    ("Lagrange multiplier", "lambda/overheat"),
    ("held-out WPDIS: reward", "ope/held_out_reward_wpdis"),
)


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def curves_chart(candidates: list[dict[str, Any]]) -> str | None:
    """One panel per curve, a line per candidate (step on x)."""
    drawn = [(title, tag) for title, tag in CURVES if any(tag in (c.get("curves") or {}) for c in candidates)]
    if not drawn:
        return None
    fig, axes = charts._figure(3.2 * len(drawn), 2.4, ncols=len(drawn))
    for ax, (title, tag) in zip(axes, drawn, strict=True):
        for c in candidates:
            series = (c.get("curves") or {}).get(tag) or []
            if series:
                ax.plot([s for s, _ in series], [v for _, v in series], label=c["name"])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
    return charts._png(fig)


def _gate(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "<p>no trajectory gate result</p>"
    estimates = _table(["estimator", "value", "95% interval", "lower bound", "required", "verdict"], [
        [e["estimator"], e["value"], f"[{_num(e['ciLow'])}, {_num(e['ciHigh'])}]", e["lowerBound"], e["required"],
         e["verdict"]] for e in gate["estimates"]])
    costs = _table(["cost", "estimator", "value", "upper bound", "budget", "verdict"], [
        [c["criterion"], c["estimator"], c["value"], c["upperBound"], c["budget"], c["verdict"]]
        for c in gate["costs"]])
    return (f"<p>verdict <b>{html.escape(str(gate['verdict']))}</b>: {html.escape(str(gate['reason']))}<br>"
            f"Kish effective trajectories {_num(gate.get('ess'), 3)} of {_num(gate.get('n'))}</p>{estimates}{costs}")


def _image(uri: str | None) -> str:
    return f'<img src="{uri}">' if uri else ""


def write_html(result: dict[str, Any], path: Path) -> None:
    truth = result.get("simulated") or {}
    training = result["training"]
    parts = [
        "<h1>Sequential scenario: cooling a server room</h1>",
        f"<p>{html.escape(result['environment'])}; gamma {result['gamma']}, training budget {result['budget']}, "
        f"gate max {result['gateMax']}; {result['wallSeconds']} s</p>",
        f"<p>logged {result['logging']['episodes']} days ({result['logging']['decisions']} steps) under the "
        f"thermostat in {result['logging']['seconds']} s; trained {len(training['candidates'])} candidates with "
        f"{training['algorithm']} ({training['steps']} steps) in {training['seconds']} s</p>",
        "<h2>Truth in the simulator (days the gate never saw)</h2>",
        _table(["policy", "discounted reward per day", "discounted overheat per day"],
               [[name, v.get("reward"), v.get("overheat")] for name, v in truth.items()]),
        "<h2>Training curves</h2>",
        _image(curves_chart(training["candidates"])),
    ]
    for s in result["scenarios"]:
        t0 = s["timeline"][0]["time"] if s.get("timeline") else 0.0
        parts += [
            f"<h2>{html.escape(s['rollout'])}: {html.escape(s['outcome'])}</h2>",
            f"<p>{html.escape(s.get('message') or '')}; stopped at {_num(s.get('stopped_at'))}; "
            f"{s['candidate_live_decisions']} steps served by the candidate</p>",
            _gate(s.get("gate")),
            _image(charts.offline_gate(s)),
            _image(charts.weights(s, t0, [])),
        ]
    style = "<style>body{font-family:sans-serif;max-width:1100px}td,th{padding:2px 8px;text-align:left}</style>"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'>{style}</head><body>"
                    + "\n".join(parts) + "</body></html>")
