"""Which reconciles notify, with which events, and the JSON and Slack payloads built from them."""

from __future__ import annotations

from typing import Any

import pytest
from rollout_operator import api
from rollout_operator.engine import types
from rollout_operator.notifications import base, factory, observer, slack, webhook

from tests.support.kube import policy_rollout_manifest

E = api.NotificationEvent


def _rollout(phase: str, step: int = 0, conditions: list[dict[str, Any]] | None = None,
             **spec: Any) -> api.PolicyRollout:
    body = policy_rollout_manifest("pricing", "shop", **spec)
    body["status"] = {"phase": phase, "currentStepIndex": step, "conditions": conditions or []}
    body["metadata"]["generation"] = 1
    return api.PolicyRollout.model_validate(body)


def _waiting() -> list[dict[str, Any]]:
    return [{"type": "Progressing", "status": "False", "reason": "WaitingForHuman"}]


def _decision(before: api.PolicyRollout, phase: str, step: int = 0, weight: int = 0, reason: str = "Because",
              message: str = "what happened", conditions: list[dict[str, Any]] | None = None) -> types.Decision:
    status = before.status.model_copy(deep=True)
    status.phase = api.Phase(phase)
    status.current_step_index = step
    status.canary_weight = weight
    status.message = message
    status.candidate_version = "v2"
    status.conditions = [api.Condition.model_validate(c) for c in conditions or []]
    status.history.append(api.HistoryEntry(time="2026-11-23T06:00:00Z", phase=status.phase, step=step,
                                           weight=weight, reason=reason, message=message))
    return types.Decision(status=status, workloads=types.Workloads(stable=before.spec.fallback, candidate=None),
                          weights=types.Weights(candidate=weight))


@pytest.mark.parametrize(("before", "after", "before_conditions", "after_conditions", "events"), [
    ("Shadow", "Progressing", None, None, {E.PHASE}),
    ("Progressing", "RollingBack", None, None, {E.PHASE, E.ROLLBACK}),
    ("Paused", "RollingBack", None, None, {E.PHASE, E.ROLLBACK}),
    ("RollingBack", "RolledBack", None, None, {E.PHASE}),
    ("Progressing", "AwaitingApproval", None, "waiting", {E.PHASE, E.APPROVAL}),
    ("Progressing", "Paused", None, "waiting", {E.PHASE, E.APPROVAL}),
    ("Progressing", "Progressing", None, None, None),  # same phase (a step within it): nothing
    ("AwaitingApproval", "AwaitingApproval", "waiting", "waiting", None),  # still waiting: said once
])
def test_which_reconciles_notify(before: str, after: str, before_conditions: str | None,
                                 after_conditions: str | None, events: set[api.NotificationEvent] | None) -> None:
    rollout = _rollout(before, conditions=_waiting() if before_conditions else None)
    decision = _decision(rollout, after, conditions=_waiting() if after_conditions else None)
    notification = observer.notification_for(rollout, decision)
    if events is None:
        assert notification is None
    else:
        assert notification is not None and set(notification.events) == events
        assert notification.previous_phase.value == before and notification.phase.value == after


def test_a_new_wait_at_another_step_notifies_again() -> None:
    rollout = _rollout("Paused", step=1, conditions=_waiting())
    notification = observer.notification_for(rollout, _decision(rollout, "Paused", step=3, conditions=_waiting()))
    assert notification is not None and notification.events == {E.APPROVAL}


def _notification(events: set[api.NotificationEvent]) -> base.Notification:
    rollout = _rollout("Progressing", step=2)
    phase = "RollingBack" if E.ROLLBACK in events else "AwaitingApproval" if E.APPROVAL in events else "Promoted"
    decision = _decision(rollout, phase, step=2, weight=30, reason="GuardrailFailed", message="error-rate 0.5 >= 0.05",
                         conditions=_waiting() if E.APPROVAL in events else None)
    notification = observer.notification_for(rollout, decision)
    assert notification is not None
    return notification


def test_json_payload_carries_every_field() -> None:
    payload = webhook.JsonFormatter().payload(_notification({E.ROLLBACK}))
    assert payload == {
        "schema": "policy.rollouts.io/notification/v1",
        "event": "rollback",
        "events": ["phase", "rollback"],
        "rollout": {"namespace": "shop", "name": "pricing"},
        "phase": "RollingBack",
        "previousPhase": "Progressing",
        "step": 2,
        "canaryWeight": 30,
        "reason": "GuardrailFailed",
        "message": "error-rate 0.5 >= 0.05",
        "time": "2026-11-23T06:00:00Z",
        "candidateVersion": "v2",
        "stableVersion": None,
    }


@pytest.mark.parametrize(("events", "colour", "says"), [
    ({E.ROLLBACK}, "danger", "is rolling back: error-rate 0.5 >= 0.05"),
    ({E.APPROVAL}, "warning", "kubectl policyrollout promote pricing -n shop"),
    ({E.PHASE}, "good", "Progressing → Promoted"),
])
def test_slack_payload_is_an_incoming_webhook_message(events: set[api.NotificationEvent], colour: str,
                                                      says: str) -> None:
    payload = slack.SlackFormatter().payload(_notification(events))
    assert says in payload["text"] and "shop/pricing" in payload["text"]
    (attachment,) = payload["attachments"]
    assert attachment["color"] == colour
    assert {"title": "Candidate weight", "value": "30%", "short": True} in attachment["fields"]


def test_factory_builds_each_format_and_refuses_unknown_ones() -> None:
    assert isinstance(factory.make_formatter("json"), webhook.JsonFormatter)
    assert isinstance(factory.make_formatter(api.NotificationFormat.SLACK), slack.SlackFormatter)
    with pytest.raises(factory.UnknownFormat, match="use one of json, slack"):
        factory.make_formatter("teams")


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def submit(self, url: str, payload: dict[str, Any]) -> bool:
        self.sent.append((url, payload))
        return True


def test_observer_sends_to_global_and_per_rollout_targets_that_want_the_event() -> None:
    recorder = _Recorder()
    targets = [base.Target("http://global/all"), base.Target("http://global/phase-only", events=frozenset({E.PHASE})),
               base.Target("http://global/approvals", events=frozenset({E.APPROVAL}))]
    notify = observer.NotificationObserver(recorder, targets)  # type: ignore[arg-type]
    rollout = _rollout("Progressing", notifications=[
        {"url": "https://hooks.slack.example/T1", "format": "slack", "events": ["rollback"]},
        {"url": "http://global/all"},  # the same receiver and format as a global one: sent once
    ])
    notify.reconciled(rollout, types.Observations(generation=1), _decision(rollout, "RollingBack"), 0.01)
    urls = [url for url, _ in recorder.sent]
    assert urls == ["http://global/all", "http://global/phase-only", "https://hooks.slack.example/T1"]
    assert "attachments" in recorder.sent[2][1] and recorder.sent[0][1]["event"] == "rollback"
    recorder.sent.clear()
    notify.reconciled(rollout, types.Observations(generation=1), _decision(rollout, "Progressing", step=1), 0.01)
    assert recorder.sent == [], "no phase change, no notification"


def test_a_rollouts_webhook_the_operators_policy_refuses_is_never_contacted() -> None:
    recorder = _Recorder()
    notify = observer.NotificationObserver(recorder, [base.Target("http://global/all")],  # type: ignore[arg-type]
                                           allows=lambda url: url == "https://hooks.example/allowed")
    rollout = _rollout("Progressing", notifications=[{"url": "http://169.254.169.254/latest/meta-data"},
                                                     {"url": "https://hooks.example/allowed"}])
    notify.reconciled(rollout, types.Observations(generation=1), _decision(rollout, "RollingBack"), 0.01)
    assert [url for url, _ in recorder.sent] == ["http://global/all", "https://hooks.example/allowed"]


def test_spec_notifications_are_validated() -> None:
    with pytest.raises(ValueError, match="should match pattern"):
        _rollout("Pending", notifications=[{"url": "ftp://x"}])
    with pytest.raises(ValueError, match="should be 'phase', 'rollback' or 'approval'"):
        _rollout("Pending", notifications=[{"url": "http://x", "events": ["everything"]}])
    spec = _rollout("Pending", notifications=[{"url": "http://x"}]).spec.notifications[0]
    assert spec.format is api.NotificationFormat.JSON and set(spec.events) == set(E)
