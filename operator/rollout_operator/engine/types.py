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

__all__ = [
    "Decision",
    "Event",
    "EventType",
    "JobKind",
    "JobObservation",
    "JobRequest",
    "JobState",
    "ManualAction",
    "Measurement",
    "Observations",
    "Weights",
    "Workloads",
]


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
        """The stable variant's percent of the traffic."""
        return 100 - self.candidate


@dataclasses.dataclass(frozen=True)
class ManualAction:
    """A human request read from the `policy.rollouts.io/action` annotation ("verb/id")."""

    verb: str  # promote | promote-full | approve | abort | retry
    id: str


class JobState(enum.StrEnum):
    """Where a Job the operator created stands."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclasses.dataclass(frozen=True)
class JobObservation:
    """A Job the operator created, as read back: its state and the JSON result it reported.

    `result` is the container's termination message parsed as JSON (None if absent or not
    JSON); `message` says why a Job failed (its Failed condition) or what is odd about it.
    """

    state: JobState
    result: dict[str, object] | None = None
    message: str | None = None


class JobKind(enum.StrEnum):
    """What a Job does: evaluate the candidate offline, or train a new policy."""

    OFFLINE_EVALUATION = "ope"
    TRAINING = "train"


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """A Job that must exist. `id` is derived from status alone (never from a clock or a counter),
    so the same request after a restart names the same Job and creating it again is a no-op."""

    kind: JobKind
    id: str
    version: str | None = None  # the artifact version a training Job produces


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
    # Jobs of this rollout by JobRequest.id (absent: not found); gathered only when the spec
    # asks for offline evaluation or training.
    jobs: dict[str, JobObservation] = dataclasses.field(default_factory=dict)
    # The `policy.rollouts.io/train` annotation's value (an on-demand training id), if set.
    train_request: str | None = None


class EventType(enum.StrEnum):
    """The type of a Kubernetes Event."""

    NORMAL = "Normal"
    WARNING = "Warning"


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes Event to record on the rollout (reason in CamelCase, message for humans)."""

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
    """What `decide` wants: the status to write, what each variant runs, the split and the Jobs."""

    status: api.PolicyRolloutStatus
    workloads: Workloads
    weights: Weights
    events: tuple[Event, ...] = ()
    # Seconds until the engine wants to be asked again (next analysis, step end), if sooner
    # than the caller's regular tick.
    requeue_after: float | None = None
    # Jobs that must exist (created if missing; never two for one id).
    jobs: tuple[JobRequest, ...] = ()
    # autoRollout: the candidate the spec must name next (a trained version), or None.
    next_policy: api.PolicySpec | None = None
