"""The judge interface: how one analysis turns measurements into roll back, hold or go on.

A judge is pure decision logic (no I/O, no clock): it receives the spec, the status as it stood
before this analysis, the measurements the caller took and `now`, and returns new guardrail
statuses, its own persisted state (`status.judge`) and what the evidence calls for. The engine
applies that; it never looks inside a judge. Adding a judge is one new module plus one line in
`factory.JUDGES`: no engine code changes.

A judge that compares the variants needs raw series besides the guardrails (sums and counts per
variant). It names them in `series(spec)`; the caller renders and queries them and passes the
results in the same measurements mapping under `SERIES_PREFIX + key`, a prefix no guardrail
name can take (guardrail names are DNS labels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

from rollout_operator import api
from rollout_operator.engine.types import Measurement

__all__ = ["SERIES_PREFIX", "Finding", "Judge", "Judgement", "SeriesQuery"]

SERIES_PREFIX = "series:"


@dataclasses.dataclass(frozen=True)
class SeriesQuery:
    """A raw series a judge needs: a named series template of the guardrail library, on one variant."""

    template: str
    variant: str
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Finding:
    """A reason and a message, for an Event and (on a rollback) the status message."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Judgement:
    """What one analysis found.

    * `guardrails`: the new `status.guardrails`.
    * `state`: the new `status.judge` (None for judges that keep no state).
    * `warnings`: Warning events (failed or inconclusive guardrails, a judge without data).
    * `rollback`: set when the evidence calls for a rollback; the first one wins.
    * `inconclusive`: names of guardrails whose measurement was unusable (the step holds).
    * `sufficient`: set when the evidence suffices to end the current timed step early.
    """

    guardrails: list[api.GuardrailStatus]
    state: api.JudgeStatus | None = None
    warnings: list[Finding] = dataclasses.field(default_factory=list)
    rollback: Finding | None = None
    inconclusive: list[str] = dataclasses.field(default_factory=list)
    sufficient: Finding | None = None


@runtime_checkable
class Judge(Protocol):
    """One way of judging an analysis; see the module docstring for the contract."""

    @property
    def kind(self) -> str:
        """The name used in `analysis.judge.kind`."""
        ...

    def series(self, spec: api.PolicyRolloutSpec) -> dict[str, SeriesQuery]:
        """Raw series to measure at each analysis besides the guardrails, by key."""
        ...

    def judge(
        self,
        spec: api.PolicyRolloutSpec,
        status: api.PolicyRolloutStatus,
        measurements: Mapping[str, Measurement],
        now: datetime,
    ) -> Judgement:
        """Judge one analysis; `status` is the state before it and is not modified."""
        ...
