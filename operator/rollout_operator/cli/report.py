"""`kubectl policyrollout report`: a rollout's timeline as a PNG and a self-contained HTML page.

What a reviewer asks after a rollout: how traffic moved, what the guardrails measured against
their thresholds, what happened when, and what the offline evaluation said. The data comes from
the rollout's status (history, last guardrail values, offline evaluation) and its Events; when a
Prometheus is reachable (--prometheus-url, or the rollout's spec.analysis.prometheusUrl) each
guardrail's own PromQL is evaluated over the rollout's time span, so the plot shows the series
the operator judged, not only its last value. The HTML embeds the PNG (base64) and needs no
network. matplotlib is imported here only (the `plugin` extra), with the Agg backend.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from rollout_operator import api
from rollout_operator.cli import live
from rollout_operator.cli.session import event_time
from rollout_operator.engine import conditions

__all__ = ["GuardrailSeries", "Timeline", "guardrail_series", "timeline", "write"]

JSON = dict[str, Any]
PNG_NAME = "timeline.png"
HTML_NAME = "report.html"
_PHASE_COLOURS = {
    "Pending": "#d9d9d9", "OfflineEvaluation": "#c6dbef", "Shadow": "#9ecae1", "Progressing": "#a1d99b",
    "Paused": "#fdd0a2", "AwaitingApproval": "#dadaeb", "Promoted": "#74c476", "RollingBack": "#fc9272",
    "RolledBack": "#de2d26", "Aborted": "#fdae6b", "Failed": "#a50f15",
}

@dataclasses.dataclass
class GuardrailSeries:
    """One guardrail: its condition, the series measured over the rollout (if any) and its last value."""

    name: str
    condition: str
    operator: str | None
    threshold: float | None
    points: list[tuple[datetime, float]]
    last_value: float | None
    last_at: datetime | None
    verdict: str | None
    note: str | None = None


@dataclasses.dataclass
class Timeline:
    """Everything the plot and the page show, in plot-ready form."""

    name: str
    namespace: str
    phase: str
    created: datetime | None
    start: datetime
    end: datetime
    weights: list[tuple[datetime, int, str]]  # (time, weight, phase) from status.history
    events: list[tuple[datetime, str, str, str]]  # (time, type, reason, message)
    guardrails: list[GuardrailSeries]


def _query_range(base_url: str, promql: str, start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    span = max((end - start).total_seconds(), 1.0)
    step = max(0.25, round(span / 300, 2))  # ~300 points whatever the rollout's length
    response = httpx.get(
        f"{base_url.rstrip('/')}/api/v1/query_range",
        params={"query": promql, "start": start.timestamp(), "end": end.timestamp(), "step": step},
        timeout=10.0,
    )
    body = response.json()
    if body.get("status") != "success":
        raise ValueError(body.get("error") or f"HTTP {response.status_code}")
    points: list[tuple[datetime, float]] = []
    for series in body["data"]["result"][:1]:  # a guardrail query returns one number; plot the first series
        for stamp, value in series.get("values", []):
            number = float(value)
            if math.isfinite(number):
                points.append((datetime.fromtimestamp(float(stamp), tz=UTC), number))
    return points


def _promql(rollout: api.PolicyRollout, guardrail: api.Guardrail) -> str:
    from rollout_operator.guardrails import templates, templating

    if guardrail.template is not None:
        return templates.render_guardrail(rollout, guardrail.template, guardrail.params)
    assert guardrail.query is not None
    return templating.render(guardrail.query, templating.guardrail_variables(rollout, "candidate", guardrail.params))


def guardrail_series(obj: JSON, start: datetime, end: datetime, prometheus_url: str | None) -> list[GuardrailSeries]:
    """Each guardrail of the spec with its condition, last status and (if Prometheus answers) its series."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    rails = (spec.get("analysis") or {}).get("guardrails") or []
    last = {g["name"]: g for g in status.get("guardrails") or []}
    url = prometheus_url or (spec.get("analysis") or {}).get("prometheusUrl")
    rollout: api.PolicyRollout | None = None
    model_note = None
    if url and rails:
        try:
            rollout = api.PolicyRollout.model_validate(obj)
        except ValueError as e:
            model_note = f"spec does not validate, series not queried: {str(e).splitlines()[0]}"
    result = []
    for rail in rails:
        try:
            operator, threshold = conditions.parse_condition(rail.get("condition", ""))
        except ValueError:
            operator, threshold = None, None
        g = last.get(rail["name"], {})
        series = GuardrailSeries(
            name=rail["name"], condition=rail.get("condition", ""), operator=operator, threshold=threshold,
            points=[], last_value=g.get("value"), last_at=live.parse_time(g.get("measuredAt")),
            verdict=g.get("verdict"),
            note=model_note if url else "no Prometheus URL: only the last measurement is shown (--prometheus-url)",
        )
        if rollout is not None and url:
            model = next(m for m in rollout.spec.analysis.guardrails if m.name == rail["name"])
            try:
                series.points = _query_range(url, _promql(rollout, model), start, end)
                series.note = None if series.points else "Prometheus returned no samples for this span"
            except (httpx.HTTPError, ValueError, KeyError) as e:
                series.note = f"series unavailable from {url}: {e}"
        result.append(series)
    return result


def timeline(obj: JSON, events: Sequence[JSON], now: datetime, prometheus_url: str | None = None) -> Timeline:
    status = obj.get("status") or {}
    weights = [
        (t, int(h.get("weight") or 0), str(h.get("phase", "")))
        for h in status.get("history") or [] if (t := live.parse_time(h.get("time"))) is not None
    ]
    marks = [
        (t, str(e.get("type") or "Normal"), str(e.get("reason") or ""), str(e.get("message") or ""))
        for e in events if (t := live.parse_time(event_time(e))) is not None
    ]
    times = [w[0] for w in weights] + [m[0] for m in marks]
    created = live.parse_time(obj["metadata"].get("creationTimestamp"))
    start = min(times + ([created] if created else []), default=now)
    terminal = api.Phase(status.get("phase") or "Pending").terminal
    end = max(times, default=now) if terminal else now
    end = max(end, start + timedelta(seconds=1))
    pad = (end - start) * 0.03
    start, end = start - pad, end + pad
    return Timeline(
        name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace", "default"),
        phase=str(status.get("phase") or "Pending"), created=created, start=start, end=end, weights=weights,
        events=sorted(marks),
        guardrails=guardrail_series(obj, start, end, prometheus_url),
    )


def _fails(value: float, operator: str | None, threshold: float | None) -> bool:
    if operator is None or threshold is None:
        return False
    return not conditions.evaluate_condition(value, f"{operator} {threshold!r}")


def _event_marks(events: Sequence[tuple[datetime, str, str, str]]) -> list[tuple[datetime, bool, str]]:
    """One mark per distinct time (Events have second resolution), naming every reason there."""
    grouped: dict[datetime, tuple[bool, list[str]]] = {}
    for t, kind, reason, _ in events:
        warning, reasons = grouped.get(t, (False, []))
        if reason not in reasons:
            reasons.append(reason)
        grouped[t] = (warning or kind == "Warning", reasons)
    return [(t, warning, " + ".join(reasons)) for t, (warning, reasons) in sorted(grouped.items())]


def plot(data: Timeline, path: Path) -> None:
    """Weight over time with phase bands and event markers, then one panel per guardrail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = 1 + max(1, len(data.guardrails))
    fig, axes = plt.subplots(rows, 1, figsize=(11, 3.2 + 2.3 * (rows - 1)), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [1.4] + [1] * (rows - 1)})
    ax = axes[0][0]
    fig.suptitle(f"PolicyRollout {data.namespace}/{data.name}: {data.phase}", x=0.01, ha="left", fontsize=13,
                 fontweight="bold")
    phases_seen: dict[str, str] = {}
    for n, (t, _, phase) in enumerate(data.weights):
        until = data.weights[n + 1][0] if n + 1 < len(data.weights) else data.end
        colour = _PHASE_COLOURS.get(phase, "#eeeeee")
        phases_seen.setdefault(phase, colour)
        ax.axvspan(t, until, color=colour, alpha=0.35, linewidth=0)
    if data.weights:
        times = [w[0] for w in data.weights] + [data.end]
        values = [w[1] for w in data.weights] + [data.weights[-1][1]]
        ax.step(times, values, where="post", color="#08519c", linewidth=2.2, label="candidate weight (%)")
        ax.plot(times[:-1], values[:-1], "o", color="#08519c", markersize=3.5)
    else:
        ax.text(0.5, 0.5, "no history in status", transform=ax.transAxes, ha="center", color="grey")
    if data.created is not None:
        ax.axvline(data.created, color="black", linewidth=1.0)
        ax.annotate("created", (data.created, 50), rotation=90, fontsize=7, ha="right", va="center")
    ax.set_ylim(-5, 112)
    ax.set_ylabel("candidate weight %")
    for t, warning, label in _event_marks(data.events):
        colour = "#cb181d" if warning else "#636363"
        for a in (row[0] for row in axes):
            a.axvline(t, color=colour, linestyle=":", linewidth=0.9, alpha=0.8)
        ax.annotate(label, (t, 113), rotation=45, fontsize=6.5, color=colour, ha="left", va="bottom",
                    annotation_clip=False)
    handles = [Patch(color=c, alpha=0.5, label=p) for p, c in phases_seen.items()]
    handles.append(matplotlib.lines.Line2D([], [], color="#636363", linestyle=":", label="event (red: Warning)"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)

    if not data.guardrails:
        axes[1][0].text(0.5, 0.5, "no guardrails in spec.analysis", transform=axes[1][0].transAxes,
                        ha="center", color="grey")
    for row, g in zip(axes[1:], data.guardrails, strict=False):
        a = row[0]
        a.set_title(f"guardrail {g.name}: pass when value {g.condition}", loc="left", fontsize=9)
        if g.points:
            xs, ys = zip(*g.points, strict=True)
            a.step(xs, ys, where="post", color="#3f007d", linewidth=1.4, label="measured (Prometheus)")
            bad = [(x, y) for x, y in g.points if _fails(y, g.operator, g.threshold)]
            if bad:
                bx, by = zip(*bad, strict=True)
                a.plot(bx, by, "x", color="#cb181d", markersize=5, label="fails the condition")
        if g.threshold is not None:
            a.axhline(g.threshold, color="#cb181d", linestyle="--", linewidth=1.2, label=f"threshold {g.condition}")
            values = [y for _, y in g.points] + ([g.last_value] if g.last_value is not None else []) + [g.threshold]
            low, high = min(values), max(values)
            margin = (high - low) * 0.15 or abs(g.threshold) * 0.5 or 1.0
            a.set_ylim(low - margin, high + margin)
            if g.operator in ("<", "<="):
                a.axhspan(g.threshold, high + margin, color="#cb181d", alpha=0.06, linewidth=0, label="failing region")
            elif g.operator in (">", ">="):
                a.axhspan(low - margin, g.threshold, color="#cb181d", alpha=0.06, linewidth=0, label="failing region")
        if g.last_value is not None and g.last_at is not None:
            colour = {"Pass": "#238b45", "Fail": "#cb181d"}.get(g.verdict or "", "#ec7014")
            a.plot([g.last_at], [g.last_value], "D", color=colour, markersize=7,
                   label=f"last: {g.last_value:.4g} ({g.verdict or '?'})")
        if g.note:
            a.text(0.01, 0.9, g.note, transform=a.transAxes, fontsize=7, color="grey", va="top")
        a.set_ylabel("value")
        a.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    bottom = axes[-1][0]
    bottom.set_xlim(data.start, data.end)
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    bottom.set_xlabel("time (UTC)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- HTML


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    marked = f' class="{text}"' if text in ("Warning", "Fail", "Pass") else ""  # styled by _CSS
    return f"<td{marked}>{html.escape(text)}</td>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="empty">none</td></tr>'
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; width: 100%; font-size: 0.85em; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f4f4f4; } td.empty { color: #999; }
.phase { display: inline-block; padding: 2px 10px; border-radius: 4px; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; }
.Warning { color: #b00; } .Fail { color: #b00; font-weight: bold; } .Pass { color: #176; }
"""


def render_html(obj: JSON, data: Timeline, png: bytes, now: datetime) -> str:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    index = int(status.get("currentStepIndex") or 0)
    steps = spec.get("steps") or []
    step_rows = []
    for n, step in enumerate(steps):
        state = "done" if n < index or phase == "Promoted" else ("current" if n == index else "to do")
        step_rows.append((n + 1, live.step_label(step), state))
    guardrail_rows = [
        (g.name, g.condition, "-" if g.last_value is None else f"{g.last_value:.6g}", g.verdict or "-",
         g.last_at.isoformat() if g.last_at else "-", len(g.points), g.note or "")
        for g in data.guardrails
    ]
    messages = {g["name"]: g.get("message", "") for g in status.get("guardrails") or []}
    guardrail_rows = [(*row[:-1], messages.get(row[0]) or row[-1]) for row in guardrail_rows]
    history_rows = [
        (h.get("time"), h.get("phase"), "-" if h.get("step") is None else h["step"] + 1, f"{h.get('weight', 0)}%",
         h.get("reason"), h.get("message"))
        for h in status.get("history") or []
    ]
    event_rows = [(t.isoformat(), kind, reason, message) for t, kind, reason, message in data.events]
    evaluation = status.get("offlineEvaluation")
    if evaluation:
        offline = f"<p><b>Verdict:</b> {html.escape(live.offline_summary(status) or '')}</p>" + _table(
            ("ESTIMATOR", "VALUE", "LOWER BOUND", "CI LOW", "CI HIGH", "VERDICT"),
            [(e.get("estimator"), e.get("value"), e.get("lowerBound"), e.get("ciLow"), e.get("ciHigh"),
              e.get("verdict")) for e in evaluation.get("estimates") or []],
        )
        if evaluation.get("constraints"):
            offline += "<p><b>Cost budgets</b></p>" + _table(
                ("COST", "ESTIMATOR", "VALUE", "UPPER BOUND", "BUDGET", "BASELINE", "VERDICT"),
                [(c.get("cost"), c.get("estimator"), c.get("value"), c.get("upperBound"), c.get("budget"),
                  c.get("baselineValue"), c.get("verdict")) for c in evaluation["constraints"]],
            )
        if evaluation.get("fairness"):
            offline += "<p><b>Fairness by group</b></p>" + _table(
                ("GROUP", "DECISIONS", "ESS", "VALUE", "LOWER", "UPPER"),
                [(g.get("group"), g.get("n"), g.get("ess"), g.get("value"), g.get("lower"), g.get("upper"))
                 for g in evaluation["fairness"].get("groups") or []],
            )
    else:
        offline = "<p>No offline evaluation in this rollout's status (spec.offlineEvaluation not set).</p>"
    revisions = _table(("VERSION", "ARTIFACT", "PROMOTED AT"), [
        (r.get("version"), (r.get("policy") or {}).get("artifact"), r.get("promotedAt"))
        for r in status.get("revisions") or []
    ])
    summary = _table(("FIELD", "VALUE"), [
        ("phase", phase), ("stable version", status.get("stableVersion")),
        ("candidate version", status.get("candidateVersion") or (spec.get("policy") or {}).get("version")),
        ("candidate weight", f"{status.get('canaryWeight', 0)}%"), ("started at", status.get("startedAt")),
        ("message", status.get("message")), ("report generated", now.isoformat(timespec="seconds")),
    ])
    colour = _PHASE_COLOURS.get(phase, "#eee")
    title = f"PolicyRollout {data.namespace}/{data.name}"
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)} <span class="phase" style="background:{colour}">{html.escape(phase)}</span></h1>
{summary}
<h2>Timeline</h2>
<img alt="timeline of {html.escape(data.name)}" src="data:image/png;base64,{image}">
<h2>Steps</h2>
{_table(("STEP", "ACTION", "STATE"), step_rows)}
<h2>Guardrails</h2>
{_table(("NAME", "CONDITION", "LAST VALUE", "VERDICT", "MEASURED AT", "SAMPLES PLOTTED", "MESSAGE"), guardrail_rows)}
<h2>Offline evaluation</h2>
{offline}
<h2>History</h2>
{_table(("TIME", "PHASE", "STEP", "WEIGHT", "REASON", "MESSAGE"), history_rows)}
<h2>Events</h2>
{_table(("TIME", "TYPE", "REASON", "MESSAGE"), event_rows)}
<h2>Promoted revisions</h2>
{revisions}
</body></html>
"""


def write(obj: JSON, events: Sequence[JSON], out: str | Path, now: datetime,
          prometheus_url: str | None = None) -> tuple[Path, Path]:
    """Write timeline.png and report.html into `out`; return their paths."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    data = timeline(obj, events, now, prometheus_url)
    png_path = directory / PNG_NAME
    plot(data, png_path)
    html_path = directory / HTML_NAME
    html_path.write_text(render_html(obj, data, png_path.read_bytes(), now), encoding="utf-8")
    return png_path, html_path
