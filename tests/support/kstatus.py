"""kstatus's status computation (sigs.k8s.io/cli-utils/pkg/kstatus), for custom resources.

Written from the kstatus specification, for tests: Flux (and the tooling built on kstatus)
decides whether a PolicyRollout is ready with exactly these rules, so our conditions are
checked against them rather than against our own reading of them.

Rules for a resource kstatus has no built-in knowledge of, in order:

1. `metadata.deletionTimestamp` set -> Terminating.
2. `status.observedGeneration` present and different from `metadata.generation` -> InProgress
   (the controller has not seen the latest spec).
3. The first of the abnormal-true conditions that is True decides: `Reconciling` -> InProgress,
   `Stalled` -> Failed.
4. A `Ready` condition: True -> Current; False or Unknown -> InProgress.
5. Otherwise -> Current (no known conditions: assumed current).

Also: `sample(phase, ...)` builds a PolicyRollout whose status (conditions included) is what the
engine writes for that phase, for tests of the GitOps integrations.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from rollout_operator import api
from rollout_operator.engine import context, kstatus
from rollout_operator.engine.types import Observations

CURRENT, IN_PROGRESS, FAILED, TERMINATING = "Current", "InProgress", "Failed", "Terminating"


@dataclasses.dataclass(frozen=True)
class Result:
    status: str
    message: str


def compute(obj: dict[str, Any]) -> Result:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return Result(TERMINATING, "Resource scheduled for deletion")
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if observed is not None and generation is not None and observed != generation:
        return Result(IN_PROGRESS, f"{obj.get('kind')} generation is {generation}, but latest observed generation "
                                   f"is {observed}")
    conditions = status.get("conditions") or []
    for condition in conditions:
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return Result(IN_PROGRESS, condition.get("message") or condition.get("reason", ""))
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return Result(FAILED, condition.get("message") or condition.get("reason", ""))
    for condition in conditions:
        if condition.get("type") != "Ready":
            continue
        if condition.get("status") == "True":
            return Result(CURRENT, "Resource is Ready")
        return Result(IN_PROGRESS, condition.get("message") or condition.get("reason", ""))
    return Result(CURRENT, "Resource is current")


STEPS = [{"setWeight": 10}, {"pause": {}}, {"pause": {"duration": "5m"}}, {"approval": {}}, {"setWeight": 100}]
_INDEX = {api.Phase.PAUSED: 2, api.Phase.AWAITING_APPROVAL: 3, api.Phase.PROMOTED: 5}


def sample(phase: api.Phase, step: int | None = None, generation: int = 3, observed: int | None = None,
           message: str = "because") -> dict[str, Any]:
    """A PolicyRollout (wire form) in `phase`, with the conditions the engine computes for it."""
    body = {
        "apiVersion": api.API_VERSION, "kind": api.KIND,
        "metadata": {"name": "pricing", "namespace": "shop", "generation": generation},
        "spec": {
            "policy": {"image": "server:1", "artifact": "s3://p/v2", "version": "v2"},
            "fallback": {"image": "server:1", "artifact": "s3://p/v1", "version": "v1"},
            "steps": STEPS,
            "allowPromotionWithoutAnalysis": True,  # conditions only: no analysis needed
        },
    }
    rollout = api.PolicyRollout.model_validate(body)
    seen = generation if observed is None else observed
    status = api.PolicyRolloutStatus(phase=phase, current_step_index=_INDEX.get(phase, 0) if step is None else step,
                                      message=message, observed_generation=seen)
    ctx = context.Context(spec=rollout.spec, observations=Observations(generation=seen),
                          now=datetime(2026, 11, 23, tzinfo=UTC), status=status)
    kstatus.reconcile_conditions(ctx)
    body["status"] = ctx.status.wire()
    return body
