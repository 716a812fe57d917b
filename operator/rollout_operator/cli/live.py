"""Terminal views of a PolicyRollout with `rich`: the list, the status panel, the history.

Renderers take plain API dicts (what the server returned) and `now`, and return rich
renderables, so `status` and `status -w` (a `rich.live.Live` that re-renders every poll)
draw the same thing and tests can render to a string without a terminal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from rollout_operator import api

__all__ = ["age", "history_table", "list_table", "status_view", "step_label"]

JSON = dict[str, Any]
_PHASE_STYLE = {
    "Promoted": "bold green", "RolledBack": "bold red", "RollingBack": "red", "Aborted": "bold yellow",
    "Failed": "bold red", "Paused": "yellow", "AwaitingApproval": "bold magenta", "Shadow": "cyan",
    "Progressing": "blue", "Pending": "dim", "OfflineEvaluation": "cyan",
}
_VERDICT_STYLE = {"Pass": "green", "Fail": "bold red", "Inconclusive": "yellow"}


def parse_time(ts: str | None) -> datetime | None:
    """A timestamp from status or an Event; None when absent or unreadable (a display never fails on one)."""
    if not ts:
        return None
    try:
        parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def age(ts: str | None, now: datetime) -> str:
    """kubectl-style age: 45s, 3m12s, 2h5m, 4d."""
    then = parse_time(ts)
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 86400}d"


def _ago(ts: str | None, now: datetime) -> str:
    return "never" if not ts else f"{age(ts, now)} ago"


def step_label(step: JSON) -> str:
    """One short word per step: `shadow 1m`, `25%`, `pause 30m`, `pause ∞`, `approval`."""
    if "setWeight" in step:
        return f"{step['setWeight']}%"
    if "shadow" in step:
        return f"shadow {(step['shadow'] or {}).get('duration', '')}".strip()
    if "pause" in step:
        return f"pause {(step['pause'] or {}).get('duration') or '∞'}"
    if "approval" in step:
        return "approval"
    return "?"


def _phase(status: JSON) -> Text:
    phase = str(status.get("phase") or "Pending")
    return Text(phase, style=_PHASE_STYLE.get(phase, ""))


def _step_text(spec: JSON, status: JSON) -> str:
    steps = spec.get("steps") or []
    index = int(status.get("currentStepIndex") or 0)
    if index >= len(steps):
        return f"{len(steps)}/{len(steps)}" if steps else "-"
    return f"{index + 1}/{len(steps)}"


def list_table(items: list[JSON], now: datetime, all_namespaces: bool) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    if all_namespaces:
        table.add_column("NAMESPACE")
    for column in ("NAME", "PHASE", "STEP", "WEIGHT", "STABLE", "CANDIDATE", "AGE", "MESSAGE"):
        table.add_column(column, overflow="fold" if column == "MESSAGE" else "ellipsis")
    for obj in sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
        status, spec, meta = obj.get("status") or {}, obj.get("spec") or {}, obj["metadata"]
        row = [
            meta["name"], _phase(status), _step_text(spec, status), f"{status.get('canaryWeight', 0)}%",
            status.get("stableVersion") or "-",
            status.get("candidateVersion") or (spec.get("policy") or {}).get("version", "-"),
            age(meta.get("creationTimestamp"), now), status.get("message") or "",
        ]
        table.add_row(*([meta.get("namespace", "")] if all_namespaces else []), *row)
    return table


def _steps_bar(spec: JSON, status: JSON) -> Group:
    """A progress bar over the steps and a row of step chips with the current one highlighted."""
    steps = spec.get("steps") or []
    index = int(status.get("currentStepIndex") or 0)
    phase = status.get("phase")
    promoted = phase == "Promoted"
    chips = Text()
    for n, step in enumerate(steps):
        label = f" {n + 1}:{step_label(step)} "
        if n < index or promoted:
            chips.append("✓" + label, style="green")
        elif n == index and not api.Phase(phase or "Pending").terminal:
            chips.append("▶" + label, style="bold reverse " + _PHASE_STYLE.get(str(phase), "blue"))
        elif n == index:
            chips.append("✗" + label, style="bold red")
        else:
            chips.append(" " + label, style="dim")
        chips.append(" ")
    done = len(steps) if promoted else min(index, len(steps))
    if index >= len(steps) and not promoted and steps:
        chips.append("▶ promoting ", style="bold reverse blue")
    grid = Table.grid(padding=(0, 1))
    grid.add_row(Text("Steps ", style="bold"), ProgressBar(total=max(len(steps), 1), completed=done, width=40),
                 Text(f"{done}/{len(steps)} done, at step {_step_text(spec, status)}"))
    return Group(grid, chips)


def _weight(status: JSON) -> Table:
    weight = int(status.get("canaryWeight") or 0)
    grid = Table.grid(padding=(0, 1))
    shadow = "  (+ shadow copy)" if status.get("shadow") else ""
    grid.add_row(Text("Weight", style="bold"), ProgressBar(total=100, completed=weight, width=40),
                 Text(f"{weight}% candidate / {100 - weight}% stable{shadow}"))
    return grid


def _guardrails(spec: JSON, status: JSON, now: datetime) -> Table:
    conditions = {g["name"]: g.get("condition", "") for g in (spec.get("analysis") or {}).get("guardrails") or []}
    table = Table(title="Guardrails", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("NAME", "VALUE", "CONDITION", "VERDICT", "FAILURES", "MEASURED", "MESSAGE"):
        table.add_column(column, overflow="fold" if column == "MESSAGE" else "ellipsis")
    seen = {g["name"]: g for g in status.get("guardrails") or []}
    for name in list(conditions) + [n for n in seen if n not in conditions]:
        g = seen.get(name, {})
        verdict = g.get("verdict") or "-"
        table.add_row(
            name, _num(g.get("value")), conditions.get(name, "?"),
            Text(verdict, style=_VERDICT_STYLE.get(verdict, "")),
            f"{g.get('consecutiveFailures', 0)}/{g.get('consecutiveInconclusive', 0)}",
            _ago(g.get("measuredAt"), now), g.get("message") or "",
        )
    return table


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def offline_summary(status: JSON) -> str | None:
    """The offline-evaluation verdict in one line, if the rollout has one."""
    evaluation = status.get("offlineEvaluation")
    if not evaluation:
        return None
    parts = [str(evaluation.get("phase", "?"))]
    for estimate in evaluation.get("estimates") or []:
        text = f"{estimate.get('estimator', '?')}={_num(estimate.get('value'))}"
        if estimate.get("lowerBound") is not None:
            text += f" (lower bound {_num(estimate['lowerBound'])})"
        if estimate.get("verdict"):
            text += f" {estimate['verdict']}"
        parts.append(text)
    if evaluation.get("required") is not None:
        parts.append(f"required {_num(evaluation['required'])}")
    for cost in evaluation.get("constraints") or []:
        text = f"cost {cost.get('cost', '?')}"
        if cost.get("estimator"):
            text += (f" {cost['estimator']}={_num(cost.get('value'))} (upper bound {_num(cost.get('upperBound'))},"
                     f" budget {_num(cost.get('budget'))})")
        parts.append(f"{text} {cost.get('verdict') or ''}".rstrip())
    fair = evaluation.get("fairness")
    if fair:
        spread = ", ".join(f"{g.get('group', '?')}={_num(g.get('value'))}" for g in fair.get("groups") or [])
        parts.append(f"fairness {fair.get('metric', '?')} {fair.get('mode', '?')} by {fair.get('groupKey', '?')} "
                     f"(bound {_num(fair.get('bound'))}, max {_num(fair.get('max'))}; {spread}) "
                     f"{fair.get('verdict') or ''}".rstrip())
    if evaluation.get("message"):
        parts.append(str(evaluation["message"]))
    return "; ".join(parts)


def _events(events: list[JSON], now: datetime, note: str | None, limit: int = 6) -> RenderableType:
    if note:
        return Text(note, style="dim")
    if not events:
        return Text("Recent events: none", style="dim")
    table = Table(title="Recent events", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("AGE", "TYPE", "REASON", "MESSAGE"):
        table.add_column(column, overflow="fold" if column == "MESSAGE" else "ellipsis")
    from rollout_operator.cli.session import event_time

    for event in events[-limit:]:
        kind = event.get("type") or "Normal"
        table.add_row(age(event_time(event), now), Text(kind, style="red" if kind == "Warning" else ""),
                      event.get("reason") or "", event.get("message") or "")
    return table


def status_view(obj: JSON, events: list[JSON], now: datetime, events_note: str | None = None) -> Panel:
    """The whole status panel: phase, steps bar, weight, guardrails, OPE verdict, events."""
    spec, status, meta = obj.get("spec") or {}, obj.get("status") or {}, obj["metadata"]
    header = Text.assemble(
        (f"{meta['name']}", "bold"), f"  ({meta.get('namespace', 'default')})  ", _phase(status),
        f"   stable {status.get('stableVersion') or '-'} → candidate "
        f"{status.get('candidateVersion') or (spec.get('policy') or {}).get('version', '-')}",
    )
    timing = Text(
        f"time in step {age(status.get('stepStartedAt'), now)}   started {_ago(status.get('startedAt'), now)}   "
        f"last analysis {_ago(status.get('lastAnalysisAt'), now)}",
        style="dim",
    )
    parts: list[RenderableType] = [header, timing, Text(""), _steps_bar(spec, status), _weight(status)]
    if not status:
        parts.append(Text(f"No status yet: the operator has not reconciled this rollout (is it running and "
                          f"watching namespace {meta.get('namespace', 'default')}?)", style="yellow"))
    if status.get("message"):
        parts.append(Text(f"Message: {status['message']}"))
    offline = offline_summary(status)
    parts.append(Text(f"Offline evaluation: {offline or 'not configured'}",
                      style="" if offline else "dim"))
    if (spec.get("analysis") or {}).get("guardrails") or status.get("guardrails"):
        parts.append(_guardrails(spec, status, now))
    parts.append(_events(events, now, events_note))
    return Panel(Group(*parts), title="PolicyRollout", title_align="left", expand=True)


def history_table(obj: JSON, now: datetime) -> Group:
    status = obj.get("status") or {}
    table = Table(title="History", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("TIME", "AGE", "PHASE", "STEP", "WEIGHT", "REASON", "MESSAGE"):
        table.add_column(column, overflow="fold" if column == "MESSAGE" else "ellipsis")
    for entry in status.get("history") or []:
        step = entry.get("step")
        table.add_row(entry.get("time", ""), age(entry.get("time"), now),
                      Text(entry.get("phase", ""), style=_PHASE_STYLE.get(entry.get("phase", ""), "")),
                      "-" if step is None else str(step + 1), f"{entry.get('weight', 0)}%",
                      entry.get("reason", ""), entry.get("message", ""))
    promoted = status.get("revisions") or []
    if not promoted:
        return Group(table, Text("Promoted revisions: none yet (undo needs one)", style="dim"))
    revisions = Table(title="Promoted revisions", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("VERSION", "ARTIFACT", "PROMOTED AT"):
        revisions.add_column(column)
    for revision in promoted:
        revisions.add_row(revision.get("version", ""), (revision.get("policy") or {}).get("artifact", ""),
                          revision.get("promotedAt", ""))
    return Group(table, revisions)
