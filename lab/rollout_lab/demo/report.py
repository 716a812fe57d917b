"""The demo's HTML report: one self-contained page that shows why each candidate ended where it did.

A summary table first, then one section per candidate: a paragraph explaining the outcome from
the data, the weight chart with rollback/promotion markers, each guardrail's judged series
against its threshold with the breach marked, the offline gate's estimates and budgets per
criterion, the shadow analysis and the judge's interval. Times are seconds since the rollout
started, everywhere but one "started at" line: a reader compares moments within a rollout.
Every field but `scenarios` is optional, so reports from older demos still render.
"""

from __future__ import annotations

import datetime
import html
import re
from pathlib import Path
from typing import Any

from rollout_lab.demo import charts

__all__ = ["explain", "origin", "write_html"]

_esc = html.escape
_CONFIDENCE = re.compile(r"(\d+(?:\.\d+)?)\s*% upper bound")
_LIVE_PHASES = ("Progressing", "Paused", "AwaitingApproval")
_TIMES = {1: "once", 2: "twice"}


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _epoch(iso: str | None) -> float | None:
    try:
        return datetime.datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _events(result: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in result.get("events") or [] if e.get("rollout") == s.get("rollout") and "time" in e]


def origin(s: dict[str, Any], events: list[dict[str, Any]]) -> float:
    """When the rollout started (epoch s): `started_at`, else the first sample, Event or measurement."""
    if s.get("started_at") is not None:
        return float(s["started_at"])
    candidates = [x["time"] for x in (s.get("timeline") or [])[:1]]
    candidates += [e["time"] for e in events if e.get("reason") == "RolloutStarted"]
    candidates += [min(x["t"] for x in rows) for rows in (s.get("analyses"), s.get("trafficSeries")) if rows]
    return float(candidates[0]) if candidates else 0.0


def _at(t: float | None, t0: float) -> str:
    return "" if t is None else f"t = {t - t0:.0f} s"


def _ended(s: dict[str, Any], events: list[dict[str, Any]]) -> float | None:
    """When the rollout reached its outcome: the outcome's Event, else the history entry of that phase."""
    event = next((e for e in reversed(events) if e.get("reason") in ("RolledBack", "Promoted")), None)
    if event is not None:
        return float(event["time"])
    entry = next((h for h in reversed(s.get("history") or []) if h.get("phase") == s.get("outcome")), None)
    return _epoch(entry.get("time")) if entry else None


def _breach(s: dict[str, Any]) -> dict[str, Any] | None:
    """The breaching guardrail's last run of live Fail verdicts (the run that rolled back), or None."""
    name = s.get("guardrail")
    live = [a for a in s.get("analyses") or [] if a.get("guardrail") == name and not a.get("shadow")]
    run: list[dict[str, Any]] = []
    for a in live:
        run = [*run, a] if a.get("verdict") == "Fail" else []
    if not run:
        run = [a for a in live if a.get("verdict") == "Fail"][-1:]
    if name is None or not run:
        return None
    return {"name": name, "condition": run[-1].get("condition"), "run": run, "t": run[-1]["t"]}


def _live_weights(s: dict[str, Any]) -> list[int]:
    """The candidate's live canary weights in the order it reached them."""
    rows = [(x.get("phase"), x.get("weight")) for x in s.get("timeline") or []]
    rows = rows or [(h.get("phase"), h.get("weight")) for h in s.get("history") or []]
    return list(dict.fromkeys(w for phase, w in rows if phase in _LIVE_PHASES and w))


def _served(s: dict[str, Any]) -> str:
    served = s.get("candidate_live_decisions")
    if served is None:
        served = ((s.get("trafficWhileLive") or {}).get("candidate") or {}).get("decisions")
    return "an unknown number of" if served is None else str(served)


def _gate_reason(s: dict[str, Any]) -> str:
    gate = s.get("offlineEvaluation") or {}
    costs = [c for c in gate.get("constraints") or [] if c.get("verdict") == "fail"]
    if costs:
        c = max(costs, key=lambda c: (c.get("upperBound") or 0) - (c.get("budget") or 0))
        match = _CONFIDENCE.search(gate.get("message") or "")
        level = f"{match.group(1)} % " if match else ""
        return (f"its {level}upper bound of {c['cost']}, {_num(c.get('upperBound'))}, exceeds the budget "
                f"{_num(c.get('budget'))} (estimate {_num(c.get('value'))}; fallback {_num(c.get('baselineValue'))}"
                f"; {c.get('estimator')})")
    rewards = [e for e in gate.get("estimates") or [] if e.get("verdict") == "fail"]
    if rewards:
        e = rewards[0]
        return (f"its lower bound of the reward by {e['estimator']}, {_num(e.get('lowerBound'))}, is below the "
                f"required {_num(gate.get('required'))} (estimate {_num(e.get('value'))}; fallback "
                f"{_num(gate.get('baselineValue'))})")
    verb = {"Refused": "refused to judge it", "Error": "could not run"}.get(gate.get("phase", ""), "failed it")
    return f"the gate {verb}: {gate.get('message') or s.get('message') or 'no reason recorded'}"


def _stop(s: dict[str, Any]) -> str | None:
    """Where the candidate stopped: `stopped_at`, or for older reports what the phases imply."""
    if "stopped_at" in s:
        return None if s["stopped_at"] is None else str(s["stopped_at"])
    gate = s.get("offlineEvaluation") or {}
    if s.get("outcome") == "Failed" and gate.get("phase") in ("Failed", "Refused", "Error"):
        return "offline-gate"
    return None


def explain(s: dict[str, Any], events: list[dict[str, Any]], t0: float) -> str:
    """One paragraph, from the data, on why the candidate ended where it did."""
    who, outcome, stop = s.get("candidate", "the candidate"), s.get("outcome"), _stop(s)
    ended = _at(_ended(s, events), t0)
    judge = s.get("judge") or {}
    if stop == "offline-gate":
        return f"{who} was stopped by the offline gate before serving any customer: {_gate_reason(s)}."
    if stop == "shadow":
        failed = [g for g in (s.get("shadowAnalysis") or {}).get("guardrails") or [] if g.get("verdict") == "Fail"]
        if not failed:  # no summary: the last failing measurement of each shadow guardrail
            judged = [a for a in s.get("analyses") or [] if a.get("shadow") and a.get("verdict") == "Fail"]
            failed = list({a["guardrail"]: {**a, "name": a["guardrail"]} for a in judged}.values())
        why = "; ".join(f"shadow guardrail {g['name']} measured {_num(g.get('value'))} against "
                        f"'{g.get('condition')}'" for g in failed) or (s.get("message") or "no reason recorded")
        return (f"{who} was stopped in shadow{f' at {ended}' if ended else ''} before serving any customer: "
                f"{why}.")
    if outcome == "RolledBack":
        step = (stop or "").removeprefix("step-")
        weights = _live_weights(s)
        where = f" at step {step}" if step.isdigit() else ""
        where += (f" ({weights[-1]} %)" if where else f" at {weights[-1]} %") if weights else ""
        breach = _breach(s)
        if breach is not None:
            values = [_num(a.get("value")) for a in breach["run"]]
            n = len(values)
            measured = (f"measured {values[0]} {_TIMES.get(n, f'{n} times')}" if len(set(values)) == 1
                        else f"measured {', '.join(values)} ({n} failures in a row)")
            why = f"guardrail {breach['name']} {measured} against '{breach['condition']}'"
        elif s.get("guardrail") == "judge":
            why = (f"the judge decided {judge.get('decision')} (estimate {_num(judge.get('estimate'))}, "
                   f"interval [{_num(judge.get('lower'))}, {_num(judge.get('upper'))}])")
        else:  # older reports: no judged series, only the guardrail's final status
            name = s.get("guardrail") or "unknown"
            last: dict[str, Any] = next((g for g in s.get("guardrails") or [] if g.get("name") == name), {})
            why = (f"guardrail {name} measured {_num(last['value'])} with {last.get('consecutiveFailures', '?')} "
                   "failures in a row" if last.get("value") is not None else f"guardrail {name} failed")
        return f"{who} was rolled back{where}{f' at {ended}' if ended else ''} after {why}; it had served " \
               f"{_served(s)} customers."
    if outcome == "Promoted":
        passed = ["the offline gate"] if (s.get("offlineEvaluation") or {}).get("phase") == "Passed" else []
        shadow = s.get("shadowAnalysis")
        if (shadow or {}).get("passed") or any(x.get("shadow") for x in s.get("timeline") or []):
            passed.append("the shadow")
        weights = _live_weights(s)
        passed.append(f"{len(weights)} canary steps ({', '.join(f'{w} %' for w in weights)})")
        verdict = (f"; the judge's final interval [{_num(judge.get('lower'))}, {_num(judge.get('upper'))}] "
                   f"(estimate {_num(judge.get('estimate'))}) decided {judge.get('decision')}" if judge else "")
        return (f"{who} was promoted{f' at {ended}' if ended else ''} after passing {', '.join(passed[:-1])}"
                f"{' and ' if len(passed) > 1 else ''}{passed[-1]}{verdict}; it served {_served(s)} customers.")
    return f"{who} ended {outcome}: {s.get('message') or 'no message recorded'}."


def _table(head: list[str], rows: list[list[Any]], cls: str = "") -> str:
    cells = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><tr>{cells}</tr>{body}</table>"


def _img(uri: str | None, alt: str) -> str:
    return f"<img alt='{_esc(alt)}' src='{uri}'>" if uri else f"<p class='none'>No data for the {_esc(alt)}.</p>"


def _guardrails(s: dict[str, Any], t0: float) -> list[str]:
    analyses = s.get("analyses") or []
    breach = _breach(s) if s.get("outcome") == "RolledBack" else None
    parts = [_img(charts.guardrails(s, t0, (breach["name"], breach["t"] - t0) if breach else None),
                  "guardrails chart")]
    rows = []
    for name in dict.fromkeys(a["guardrail"] for a in analyses if a.get("guardrail")):
        for shadow in (False, True):
            own = [a for a in analyses if a["guardrail"] == name and bool(a.get("shadow")) is shadow]
            if own:
                fails = [a for a in own if a.get("verdict") == "Fail"]
                note = (f"breached at {_at(breach['t'], t0)} ({_num(breach['run'][-1].get('value'))})"
                        if breach and breach["name"] == name and not shadow else
                        f"first Fail at {_at(fails[0]['t'], t0)}" if fails else "")
                rows.append([name, "shadow" if shadow else "live", own[-1].get("condition") or "", len(own),
                             len(fails), f"{_num(own[-1].get('value'))} {own[-1].get('verdict')}", note])
    if rows:
        parts.append(_table(["guardrail", "traffic", "pass when", "measurements", "Fail", "last", "breach"], rows))
    elif s.get("guardrails"):
        parts.append(_table(["guardrail", "last value", "verdict", "failures in a row"], [
            [g.get("name"), _num(g.get("value")), g.get("verdict"), g.get("consecutiveFailures", "")]
            for g in s["guardrails"]]))
    return parts


def _gate(s: dict[str, Any]) -> list[str]:
    gate = s.get("offlineEvaluation")
    if not gate:
        return ["<p class='none'>No offline evaluation recorded.</p>"]
    parts = [f"<p>Verdict <b>{_esc(str(gate.get('phase')))}</b>: {_esc(gate.get('message') or '')} "
             f"(ESS {_num(gate.get('ess'))} of n = {gate.get('n', 'n/a')}, mean weight "
             f"{_num(gate.get('meanWeight'))}).</p>"]
    if gate.get("estimates"):
        parts.append(_table(["reward estimator", "estimate", "interval", "lower bound", "required", "fallback",
                             "verdict"], [
            [e.get("estimator"), _num(e.get("value")), f"[{_num(e.get('ciLow'))}, {_num(e.get('ciHigh'))}]",
             _num(e.get("lowerBound")), _num(gate.get("required")), _num(gate.get("baselineValue")),
             e.get("verdict")] for e in gate["estimates"]]))
    if gate.get("constraints"):
        parts.append(_table(["cost", "estimator", "estimate", "upper bound", "budget", "fallback", "verdict"], [
            [c.get("cost"), c.get("estimator") or "", _num(c.get("value")), _num(c.get("upperBound")),
             _num(c.get("budget")), _num(c.get("baselineValue")), c.get("verdict")] for c in gate["constraints"]]))
    parts.append(_img(charts.offline_gate(s), "offline gate chart"))
    return parts


def _shadow_and_judge(s: dict[str, Any], t0: float) -> list[str]:
    shadow, judge = s.get("shadowAnalysis"), s.get("judge")
    parts = ["<h3>Shadow</h3>"]
    if shadow is None:
        parts.append("<p class='none'>No shadow analysis recorded.</p>")
    else:
        parts.append(f"<p>The shadow {'passed' if shadow.get('passed') else 'did not pass'}.</p>")
        parts.append(_table(["shadow guardrail", "pass when", "last value", "verdict"], [
            [g.get("name"), g.get("condition") or "", _num(g.get("value")), g.get("verdict")]
            for g in shadow.get("guardrails") or []]))
    parts.append("<h3>Judge</h3>")
    if not judge:
        parts.append("<p class='none'>No judge verdict recorded.</p>")
    else:
        parts.append(_table(["judge", "estimate", "lower", "upper", "decision", "message"], [[
            judge.get("kind"), _num(judge.get("estimate")), _num(judge.get("lower")), _num(judge.get("upper")),
            judge.get("decision"), judge.get("message") or ""]]))
        if s.get("judgeSeries"):
            parts.append(_img(charts.judge(s, t0), "judge chart"))
    return parts


def _section(result: dict[str, Any], s: dict[str, Any]) -> list[str]:
    events = _events(result, s)
    t0 = origin(s, events)
    outcome = _esc(str(s.get("outcome")))
    marks = [(e["time"] - t0, e["reason"]) for e in events if e.get("reason") in ("RolledBack", "Promoted")]
    ended = _ended(s, events)
    if not marks and s.get("outcome") in ("RolledBack", "Promoted") and ended is not None:
        marks = [(ended - t0, s["outcome"])]  # older reports without Events: the history's time
    started = datetime.datetime.fromtimestamp(t0, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [f"<section id='{_esc(str(s.get('candidate')))}'>",
             f"<h2>{_esc(str(s.get('rollout') or s.get('candidate')))}: <span class='{outcome}'>{outcome}</span></h2>",
             f"<p>{_esc(s.get('description') or '')}</p>",
             f"<p class='explanation'>{_esc(explain(s, events, t0))}</p>",
             f"<p class='started'>Started at {started}; times below are seconds since then.</p>",
             "<h3>Traffic weight</h3>", _img(charts.weights(s, t0, marks), "weight chart")]
    parts += [f"<p>{'Rolled back' if r == 'RolledBack' else 'Promoted'} at t = {x:.0f} s.</p>" for x, r in marks]
    parts += ["<h3>Guardrails</h3>", *_guardrails(s, t0), "<h3>Offline gate</h3>", *_gate(s),
              *_shadow_and_judge(s, t0), "<h3>Traffic by variant</h3>", _img(charts.by_variant(s, t0), "traffic chart")]
    traffic = s.get("trafficWhileLive") or {}
    if traffic:
        parts.append(_table(["variant (while live)", "decisions", "conversion", "violation rate"], [
            [v, t.get("decisions"), _num(t.get("conversion")), _num(t.get("violationRate"))]
            for v, t in sorted(traffic.items())]))
    parts.append("<h3>History and Events</h3>")
    timed = [(_epoch(h.get("time")), h.get("phase"), h.get("reason"), h.get("message", ""))
             for h in s.get("history") or []]
    timed += [(float(e["time"]), e.get("type", ""), e.get("reason"), e.get("message", "")) for e in events]
    timed.sort(key=lambda row: float("inf") if row[0] is None else row[0])
    rows = [[_at(t, t0), *rest] for t, *rest in timed]
    parts += [_table(["when", "phase / type", "reason", "message"], rows), "</section>"]
    return parts


def _reward_cells(s: dict[str, Any]) -> list[str]:
    """Posted, joined and lost rewards, each total followed by its split per variant (n/a in older reports)."""
    by_variant = s.get("rewards_by_variant") or {}
    cells = []
    for key, field in (("rewards_posted", "posted"), ("rewards_joined", "joined"), ("rewards_lost", "lost")):
        total = s.get(key)
        split = ", ".join(f"{v} {c.get(field, 0)}" for v, c in sorted(by_variant.items()))
        cells.append("n/a" if total is None else f"{total} ({split})" if split else str(total))
    return cells


def write_html(result: dict[str, Any], path: Path) -> None:
    """Write the report of the demo's `result` (report.json) to `path` as one self-contained page."""
    logging = result.get("logging") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>policy-rollouts demo</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
        "text-align:left}td:first-child{white-space:nowrap}.RolledBack,.Failed{color:#c00}.Promoted{color:#080}img{max-width:100%}"
        ".explanation{background:#f4f4f4;padding:.6em;border-left:4px solid #888}.none{color:#777}</style>"
        "</head><body>",
        "<h1>policy-rollouts demo</h1>",
        f"<p>{_esc(str(result.get('environment', '')))}. Wall time {result.get('wallSeconds', 'n/a')} s"
        f"{' (--fast)' if result.get('fast') else ''}. Logged {logging.get('rewards', 'n/a')} rewarded decisions "
        f"of the fallback (conversion {_num(logging.get('conversion'))}, margin violations "
        f"{_num(logging.get('violationRate'))}).</p>",
    ]
    rows = []
    for s in result["scenarios"]:
        stop = _stop(s)
        rows.append([s.get("candidate"), s.get("outcome"), "— (promoted)" if stop is None and
                     s.get("outcome") == "Promoted" else stop or "—", s.get("candidate_live_decisions", "n/a"),
                     s.get("guardrail") or "", *_reward_cells(s)])
    parts.append(_table(["candidate", "outcome", "stopped at", "live decisions", "guardrail", "rewards posted",
                         "rewards joined", "rewards lost"], rows, "summary"))
    for s in result["scenarios"]:
        parts += _section(result, s)
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
