"""End to end: the real operator process tells a global JSON webhook and a rollout's own Slack webhook."""

from __future__ import annotations

from pathlib import Path

import pytest
from rollout_operator import checks
from rollout_operator.cluster.control_plane import ControlPlane

from tests.support.operator_process import TRUST_ENV
from tests.support.operator_run import OperatorRun, rollout_manifest
from tests.support.prometheus import PrometheusServer
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_rollback_and_approval_reach_global_and_per_rollout_webhooks(
    control_plane: ControlPlane, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    with WebhookReceiver() as global_hook, WebhookReceiver() as team_hook:
        global_hook.respond(503)  # the first call fails: the retry must still deliver it
        args = ("--metrics-port", "0", "--notify-url", global_hook.url, "--notify-format", "json",
                "--notify-retries", "2")
        # The team's webhook is in the rollout's spec: the operator's admin must list it (docs/security.md).
        env = {**TRUST_ENV, checks.ENV_WEBHOOK_URLS: team_hook.url}
        with OperatorRun(control_plane, tmp_path, prometheus.url, extra_args=args, env=env) as run:
            run.client.create(rollout_manifest(
                "breaching", "vector(1)", [{"setWeight": 20}, {"pause": {}}], prometheus.url,
                notifications=[{"url": team_hook.url, "format": "slack", "events": ["rollback"]}],
            ))
            run.client.create(rollout_manifest("gated", "vector(0)", [{"setWeight": 10}, {"approval": {}}],
                                               prometheus.url))
            run.wait_phase("breaching", "RolledBack")
            run.wait_phase("gated", "AwaitingApproval")
            team_hook.wait_for(1)
            global_hook.wait_for(1)
            bodies = global_hook.wait_for(len(global_hook.received))

        def of(name: str) -> list[dict[str, object]]:
            return [b for b in global_hook.bodies() if b["rollout"]["name"] == name]  # type: ignore[index]

        rollback = [b for b in of("breaching") if b["event"] == "rollback"]
        assert len(rollback) == 1, bodies
        assert rollback[0]["phase"] == "RollingBack" and "error-rate" in str(rollback[0]["message"])
        assert any(b["phase"] == "RolledBack" for b in of("breaching")), "the end of the rollback is a phase change"
        approval = [b for b in of("gated") if b["event"] == "approval"]
        assert len(approval) == 1 and approval[0]["phase"] == "AwaitingApproval"
        assert global_hook.attempts > len(global_hook.received), "the 503 was retried"

        (slack,) = team_hook.bodies()  # only the rollback: the team subscribed to nothing else
        assert "default/breaching is rolling back" in slack["text"] and slack["attachments"][0]["color"] == "danger"
