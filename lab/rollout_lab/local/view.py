"""The demo's live terminal view (rich): stage, rollout phase and weight, guardrails, traffic, events.

On a terminal it redraws in place; elsewhere (CI logs, pipes) it prints one line per stage,
phase change and event, so a log still tells the story.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rollout_operator import api

from rollout_lab.local import store

__all__ = ["LiveView"]

_PHASE_STYLE = {"Promoted": "bold green", "RolledBack": "bold red", "RollingBack": "red", "Failed": "bold red",
                "Shadow": "cyan", "OfflineEvaluation": "magenta"}


class LiveView:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.interactive = self.console.is_terminal
        self.stage = "starting"
        self.detail = ""
        self.started = time.monotonic()
        self.rollouts: dict[str, tuple[api.PolicyRollout, dict[str, Any]]] = {}
        self.events: list[store.RecordedEvent] = []
        self._phases: dict[str, str] = {}
        self._printed = 0.0
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.interactive:
            self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def print(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text)
        else:
            self.console.print(f"[{self._clock()}]    {text}")

    def set_stage(self, stage: str, detail: str = "") -> None:
        changed = stage != self.stage
        self.stage, self.detail = stage, detail
        if not self.interactive and (changed or time.monotonic() - self._printed > 10):
            self._printed = time.monotonic()
            self.console.print(f"[{self._clock()}] == {stage}: {detail}")

    def event(self, recorded: store.RecordedEvent) -> None:
        self.events.append(recorded)
        if not self.interactive:
            self.console.print(f"[{self._clock()}]    {recorded.rollout} {recorded.type} {recorded.reason}: "
                               f"{recorded.message}", highlight=False)

    def tick(self, rollout: api.PolicyRollout, traffic: dict[str, Any]) -> None:
        name = rollout.metadata.name
        self.rollouts[name] = (rollout, traffic)
        phase = rollout.status.phase.value
        if phase != self._phases.get(name) and not self.interactive:
            self.console.print(f"[{self._clock()}]    {name}: {phase}, candidate weight "
                               f"{rollout.status.canary_weight}%")
        self._phases[name] = phase

    def _clock(self) -> str:
        return f"{time.monotonic() - self.started:6.1f}s"

    def _render(self) -> Group:
        head = Table.grid(padding=(0, 2))
        head.add_row("[bold]stage", f"{self.stage} [dim]{self.detail}", "[dim]" + self._clock())
        parts: list[Any] = [head]
        for rollout, traffic_totals in list(self.rollouts.values()):
            s = rollout.status
            style = _PHASE_STYLE.get(s.phase.value, "yellow")
            summary = Table.grid(padding=(0, 2))
            summary.add_row("[bold]rollout", rollout.metadata.name, f"[{style}]{s.phase.value}",
                            f"step {s.current_step_index + 1}/{len(rollout.spec.steps)}",
                            f"candidate {s.canary_weight}%" + (" (shadow)" if s.shadow else ""))
            parts.append(summary)
            guards = Table(title="guardrails", expand=False)
            for column in ("name", "value", "verdict", "failures"):
                guards.add_column(column)
            for g in s.guardrails:
                colour = {"Pass": "green", "Fail": "red"}.get(g.verdict.value if g.verdict else "", "yellow")
                value = "n/a" if g.value is None else f"{g.value:.4f}"
                guards.add_row(g.name, value, f"[{colour}]{g.verdict.value if g.verdict else '-'}",
                               str(g.consecutive_failures))
            if s.judge is not None:
                guards.add_row("judge", "n/a" if s.judge.estimate is None else f"{s.judge.estimate:+.4f}",
                               s.judge.decision or "-", "")
            traffic = Table(title="traffic (this rollout)")
            for column in ("variant", "decisions", "conversion", "margin violations"):
                traffic.add_column(column)
            for variant, b in sorted(traffic_totals.items()):
                if variant == "error":
                    traffic.add_row("errors", str(b.errors), "", "")
                    continue
                rate = f"{b.reward_sum / b.rewards:.3f}" if b.rewards else "-"
                viol = f"{b.violations / b.rewards:.3f}" if b.rewards else "-"
                traffic.add_row(variant, str(b.decisions), rate, viol)
            grid = Table.grid(padding=(0, 2))
            grid.add_row(guards, traffic)
            parts.append(grid)
        lines = [f"[dim]{time.strftime('%H:%M:%S', time.localtime(e.time))}[/] {e.rollout} "
                 f"[{'red' if e.type == 'Warning' else 'green'}]{e.reason}[/]: {e.message[:140]}"
                 for e in self.events[-6:]]
        parts.append(Panel("\n".join(lines) or "-", title="events"))
        return Group(*parts)
