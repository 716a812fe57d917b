"""What the engine reads and what it decides.

The engine is a pure function `decide(rollout, observations, now) -> Decision`: the kopf
handlers (and local mode) gather `Observations` by I/O, call it, then apply the `Decision`
through the workload and traffic plug-ins and write `Decision.status` back. Nothing here
performs I/O or reads a clock, so every decision can be unit-tested and replayed.
"""

from __future__ import annotations

import dataclasses
import enum

from rollout_operator import api


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One guardrail query's outcome: a number, or why there is none.

    `value is None` (no data, an error, an unreachable Prometheus) is inconclusive by rule:
    it never lets a rollout advance.
    """

    value: float | None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Weights:
    """Traffic split as the data plane sees it. `candidate` is 0..100; stable gets the rest."""

    candidate: int
    shadow: bool = False

    @property
    def stable(self) -> int:
        return 100 - self.candidate


@dataclasses.dataclass(frozen=True)
class ManualAction:
    """A human request read from the `policy.rollouts.io/action` annotation ("verb/id")."""

    verb: str  # promote | promote-full | approve | abort | retry
    id: str


@dataclasses.dataclass(frozen=True)
class Observations:
    """Everything the engine may know about the world at `now`, gathered by the caller."""

    generation: int
    candidate_ready: bool = False
    stable_ready: bool = False
    # Which version the stable workload actually runs (read back from its labels), if known.
    stable_running_version: str | None = None
    # Weights read back from the traffic provider; None when they could not be read.
    actual_weights: Weights | None = None
    # Guardrail name -> measurement; empty unless the caller measured (see engine.analysis_due).
    measurements: dict[str, Measurement] = dataclasses.field(default_factory=dict)
    action: ManualAction | None = None


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclasses.dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Workloads:
    """Which policy each variant must run; `candidate=None` means no candidate workload."""

    stable: api.PolicySpec
    candidate: api.PolicySpec | None


@dataclasses.dataclass(frozen=True)
class Decision:
    status: api.PolicyRolloutStatus
    workloads: Workloads
    weights: Weights
    events: tuple[Event, ...] = ()
    # Seconds until the engine wants to be asked again (next analysis, step end), if sooner
    # than the caller's regular tick.
    requeue_after: float | None = None
