"""Status conditions that GitOps tools and `kubectl wait` understand.

Mapping from phase (kstatus-compatible: each condition carries observedGeneration, and its
lastTransitionTime changes only when its status flips):

| phase                                   | Ready            | Progressing              | Degraded          |
| --------------------------------------- | ---------------- | ------------------------ | ----------------- |
| Pending, OfflineEvaluation, Shadow      | False (<phase>)  | True (<phase>)           | False (AsExpected)|
| Progressing (steps and promotion)       | False            | True                     | False             |
| Paused with a duration, or Inconclusive | False            | True (Paused)            | False             |
| Paused without duration, AwaitingApproval| False           | False (WaitingForHuman)  | False             |
| Promoted                                | True (Promoted)  | False (Promoted)         | False             |
| RollingBack                             | False            | True (RollingBack)       | True (RollingBack)|
| RolledBack, Failed                      | False            | False (<phase>)          | True (<phase>)    |
| Aborted                                 | False            | False (Aborted)          | False (Aborted)   |

and kstatus's own abnormal-true conditions, which Flux, Argo CD's gitops-engine and
`kubectl wait` tooling built on kstatus read first (docs/gitops.md):

| phase                                            | Reconciling               | Stalled            |
| ------------------------------------------------ | ------------------------- | ------------------ |
| Pending ... Progressing, Paused (timed/analysis) | True (<phase>)            | False (AsExpected) |
| waiting for a human                              | False (WaitingForHuman)   | False (AsExpected) |
| Promoted                                         | False (Promoted)          | False (AsExpected) |
| RollingBack, RolledBack, Failed, Aborted         | False (<phase>)           | True (<phase>)     |

So kstatus computes Current for Promoted, Failed for a rollback / failure / abort (the desired
policy will not be reached without a human), and InProgress otherwise (including a wait for
approval: nothing is wrong, but the desired state is not reached yet).

Why Progressing is False while waiting for a human: nothing will change without one, and a
tool waiting for `Progressing=False` should not hang on an approval gate unnoticed; the
reason `WaitingForHuman` says what to do. RolledBack is a failed rollout, so Ready stays
False (reason RolledBack) and Degraded is True: the stable policy serves, but the desired
one (`spec.policy`) does not.
"""

from __future__ import annotations

from typing import Literal

from rollout_operator import api
from rollout_operator.engine import analysis, steps, timeutil
from rollout_operator.engine.context import Context

__all__ = ["CONDITION_TYPES", "reconcile_conditions"]

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Reconciling", "Stalled")
_DEGRADED = {api.Phase.ROLLING_BACK, api.Phase.ROLLED_BACK, api.Phase.FAILED}
_STALLED = _DEGRADED | {api.Phase.ABORTED}


def _waiting_for_human(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> bool:
    if status.phase is api.Phase.AWAITING_APPROVAL:
        return True
    index = status.current_step_index
    return (
        status.phase is api.Phase.PAUSED
        and index < len(spec.steps)
        and steps.waits_for_human(spec.steps[index])
        and not analysis.inconclusive_guardrails(spec, status)
    )


def _wanted(spec: api.PolicyRolloutSpec, status: api.PolicyRolloutStatus) -> dict[str, tuple[bool, str]]:
    phase = status.phase
    if phase.terminal:
        progressing = (False, phase.value)
    elif _waiting_for_human(spec, status):
        progressing = (False, "WaitingForHuman")
    else:
        progressing = (True, phase.value)
    stalled = phase in _STALLED
    return {
        "Ready": (phase is api.Phase.PROMOTED, phase.value),
        "Progressing": progressing,
        "Degraded": (phase in _DEGRADED, phase.value if phase in _DEGRADED | {api.Phase.ABORTED} else "AsExpected"),
        "Reconciling": (progressing[0] and not stalled, phase.value if stalled else progressing[1]),
        "Stalled": (stalled, phase.value if stalled else "AsExpected"),
    }


def reconcile_conditions(ctx: Context) -> None:
    """Rewrite Ready/Progressing/Degraded, keeping transition times of unchanged ones."""
    status = ctx.status
    previous = {c.type: c for c in status.conditions}
    others = [c for c in status.conditions if c.type not in CONDITION_TYPES]
    result = []
    for kind, (value, reason) in _wanted(ctx.spec, status).items():
        text: Literal["True", "False"] = "True" if value else "False"
        before = previous.get(kind)
        if before is not None and before.status == text:
            since = before.last_transition_time  # unchanged: keep when it last flipped
        else:
            since = timeutil.to_iso(ctx.now)
        result.append(
            api.Condition(
                type=kind,
                status=text,
                reason=reason,
                message=status.message or "",
                observed_generation=ctx.observations.generation,
                last_transition_time=since,
            )
        )
    status.conditions = result + others
