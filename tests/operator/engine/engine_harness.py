"""Helpers for the engine tests: rollouts built from a few arguments, and a driver that
plays the operator's part (applies each decision, feeds observations, moves the clock)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from rollout_operator import api, engine
from rollout_operator.engine.types import Decision, Event, ManualAction, Measurement, Observations, Weights

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PASS = 0.1  # satisfies "< 0.5"
FAIL = 0.9  # does not


def guardrail(name: str = "error-rate", condition: str = "< 0.5", **extra: Any) -> dict[str, Any]:
    return {"name": name, "query": f"sum(rate({name}[1m]))", "condition": condition, **extra}


def make_rollout(
    steps: list[dict[str, Any]],
    *,
    guardrails: list[dict[str, Any]] | None = None,
    shadow_guardrails: list[dict[str, Any]] | None = None,
    interval: str = "1m",
    deadline: str = "30m",
    version: str = "v2",
    generation: int = 1,
    **spec: Any,
) -> api.PolicyRollout:
    """A rollout of `steps`; one without guardrails says so explicitly, as the API requires."""
    return api.PolicyRollout.model_validate(
        {
            "metadata": {"name": "pricing", "generation": generation},
            "spec": {
                "policy": {"image": "server:1", "artifact": f"s3://p/{version}", "version": version},
                "fallback": {"image": "server:1", "artifact": "s3://p/v1", "version": "v1"},
                "steps": steps,
                "analysis": {"interval": interval, "guardrails": guardrails or [],
                             "shadowGuardrails": shadow_guardrails or []},
                "progressDeadline": deadline,
                "allowPromotionWithoutAnalysis": not guardrails,
                **spec,
            },
        }
    )


def with_status(rollout: api.PolicyRollout, status: api.PolicyRolloutStatus) -> api.PolicyRollout:
    return rollout.model_copy(update={"status": status})


def measurements(rollout: api.PolicyRollout, value: float | None) -> dict[str, Measurement]:
    """`value` for every guardrail the spec has, live and shadow (the engine reads those it judges now)."""
    analysis = rollout.spec.analysis
    return {g.name: Measurement(value) for g in [*analysis.guardrails, *analysis.shadow_guardrails]}


@dataclasses.dataclass
class Driver:
    """Plays the operator and a well-behaved cluster around `engine.decide`.

    By default the world follows the decisions: the candidate is ready, the data plane has
    the weights of the previous decision, the stable variant runs what it was told to run.
    `value` is what every guardrail measures when an analysis is due (None: no data).
    """

    rollout: api.PolicyRollout
    now: datetime = T0
    value: float | None = PASS
    candidate_ready: bool = True
    stable_ready: bool = True
    last: Decision | None = None
    events: list[Event] = dataclasses.field(default_factory=list)
    measured: int = 0

    @property
    def status(self) -> api.PolicyRolloutStatus:
        return self.rollout.status

    def observations(self, action: ManualAction | None = None, **overrides: Any) -> Observations:
        due = engine.analysis_due(self.rollout, self.now)
        stable = self.status.stable_policy.version if self.status.stable_policy else None
        fields: dict[str, Any] = {
            "generation": self.rollout.metadata.generation or 1,
            "candidate_ready": self.candidate_ready,
            "stable_ready": self.stable_ready,
            "stable_running_version": stable,
            "actual_weights": self.last.weights if self.last else Weights(0),
            "measurements": measurements(self.rollout, self.value) if due else {},
            "action": action,
        }
        fields.update(overrides)
        return Observations(**fields)

    def tick(self, seconds: float = 0, action: str | None = None, **overrides: Any) -> Decision:
        self.now += timedelta(seconds=seconds)
        obs = self.observations(engine.parse_action(action), **overrides)
        if obs.measurements:
            self.measured += 1
        decision = engine.decide(self.rollout, obs, self.now)
        self.rollout = with_status(self.rollout, decision.status)
        self.events.extend(decision.events)
        self.last = decision
        return decision

    def run_until(self, done: Callable[[Decision], bool], seconds: float = 30, limit: int = 1000) -> Decision:
        decision = self.tick()
        for _ in range(limit):
            if done(decision):
                return decision
            decision = self.tick(seconds)
        raise AssertionError(f"not reached after {limit} ticks; phase {self.status.phase}: {self.status.message}")

    def phase_is(self, *phases: api.Phase) -> Callable[[Decision], bool]:
        return lambda d: d.status.phase in phases

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]
