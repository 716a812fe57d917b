"""The rollout engine: a pure state machine, `decide(rollout, observations, now) -> Decision`.

Handlers gather observations (workload readiness, weights read back, guardrail measurements
when `analysis_due`, the action annotation through `parse_action`), call `decide`, apply the
decision through the plug-ins and write `Decision.status`. Modules, by concern:

- `core`: the ordered reconcile pipeline and `decide`.
- `lifecycle`: start, Pending, OfflineEvaluation hook, RollingBack, terminal phases.
- `progress`: analysis, step completion, progress deadline, promotion.
- `actions`: manual actions from the annotation.
- `analysis`, `conditions`, `steps`: pure rules (when to measure, how to judge, step weights).
- `kstatus`: Ready / Progressing / Degraded conditions.
- `context`: the reconcile context and the transitions that record history and events.
"""

from rollout_operator.engine.actions import parse_action
from rollout_operator.engine.analysis import analysis_due
from rollout_operator.engine.conditions import evaluate_condition
from rollout_operator.engine.core import decide
from rollout_operator.engine.types import (
    Decision,
    Event,
    EventType,
    ManualAction,
    Measurement,
    Observations,
    Weights,
    Workloads,
)

__all__ = [
    "Decision",
    "Event",
    "EventType",
    "ManualAction",
    "Measurement",
    "Observations",
    "Weights",
    "Workloads",
    "analysis_due",
    "decide",
    "evaluate_condition",
    "parse_action",
]
