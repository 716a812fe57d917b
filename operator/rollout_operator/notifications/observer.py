"""From a reconcile's before and after to notifications for each interested target.

A `reconciler.Observer`: `reconciled` runs after the decision was applied, computes what
changed (phase, a rollback starting, a new wait for a human) and only enqueues payloads on
the `Dispatcher`, so it costs microseconds on the reconcile path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from rollout_operator import api
from rollout_operator.engine import types
from rollout_operator.notifications import base, dispatcher, factory

__all__ = ["NotificationObserver", "notification_for"]

log = logging.getLogger(__name__)
_ROLLBACK = {api.Phase.ROLLING_BACK, api.Phase.ROLLED_BACK}


def _waiting_for_human(status: api.PolicyRolloutStatus) -> bool:
    """Read from the kstatus Progressing condition the engine wrote (reason WaitingForHuman)."""
    return any(c.type == "Progressing" and c.reason == "WaitingForHuman" for c in status.conditions)


def notification_for(rollout: api.PolicyRollout, decision: types.Decision) -> base.Notification | None:
    """The notification this reconcile deserves, or None when nothing a human cares about changed."""
    old, new = rollout.status, decision.status
    events: set[api.NotificationEvent] = set()
    if new.phase is not old.phase:
        events.add(api.NotificationEvent.PHASE)
        if new.phase in _ROLLBACK and old.phase not in _ROLLBACK:
            events.add(api.NotificationEvent.ROLLBACK)
    if _waiting_for_human(new) and not (_waiting_for_human(old) and new.phase is old.phase
                                        and new.current_step_index == old.current_step_index):
        events.add(api.NotificationEvent.APPROVAL)
    if not events:
        return None
    last = new.history[-1] if new.history else None
    return base.Notification(
        events=frozenset(events),
        namespace=rollout.metadata.namespace,
        name=rollout.metadata.name,
        phase=new.phase,
        previous_phase=old.phase,
        step=new.current_step_index,
        weight=new.canary_weight,
        reason=last.reason if last else new.phase.value,
        message=new.message or (last.message if last else ""),
        time=last.time if last else "",
        candidate_version=new.candidate_version,
        stable_version=new.stable_version,
    )


class NotificationObserver:
    """Sends each notification to the global targets and the rollout's `spec.notifications`."""

    def __init__(self, sender: dispatcher.Dispatcher, targets: Sequence[base.Target] = (),
                 allows: Callable[[str], bool] = lambda url: True) -> None:
        """`allows`: whether a rollout's own webhook URL may be contacted (the operator's policy); a refused
        one is never sent to (the rollout is told why by its spec check)."""
        self.sender = sender
        self.targets = tuple(targets)
        self.allows = allows
        self._formatters = {f: factory.make_formatter(f) for f in api.NotificationFormat}

    def reconciled(
        self, rollout: api.PolicyRollout, observations: types.Observations, decision: types.Decision, seconds: float
    ) -> None:
        notification = notification_for(rollout, decision)
        if notification is None:
            return
        own = [base.Target.from_spec(s) for s in rollout.spec.notifications if self.allows(s.url)]
        targets = [*self.targets, *own]
        sent: set[tuple[str, api.NotificationFormat]] = set()
        for target in targets:
            key = (target.url, target.format)
            if key in sent or not target.wants(notification):
                continue
            sent.add(key)
            self.sender.submit(target.url, self._formatters[target.format].payload(notification))
