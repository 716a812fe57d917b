"""A spec that cannot work fails at once, with the reason in status and an Event, before anything is created."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rollout_operator.cluster.control_plane import ControlPlane

from tests.support.kube import wait_for
from tests.support.operator_run import OperatorRun, rollout_manifest
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_an_unknown_template_fails_the_rollout_at_once_and_creates_nothing(
    control_plane: ControlPlane, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    with OperatorRun(control_plane, tmp_path, prometheus.url) as run:
        manifest = rollout_manifest("misspelt", "vector(0)", [{"setWeight": 20}, {"setWeight": 100}], prometheus.url)
        manifest["spec"]["analysis"]["guardrails"] = [
            {"name": "reward", "template": "reward-ratoi", "condition": "> 0.9"}]
        created = time.monotonic()
        run.client.create(manifest)
        status = run.wait_phase("misspelt", "Failed", timeout=30)
        assert time.monotonic() - created < 15, "at once, not after retries"
        assert "unknown template 'reward-ratoi' (did you mean 'reward-ratio'?)" in status["message"]
        assert "kubectl policyrollout retry" in status["message"]
        # The Event is written just after the status: wait for it rather than race it.
        events = wait_for(lambda: [e for e in run.kube_api.objects("events", "default")
                                   if e["involvedObject"]["name"] == "misspelt" and e["reason"] == "InvalidSpec"],
                          timeout=10, what="the InvalidSpec event")
        assert events[0]["type"] == "Warning"
        time.sleep(2)
        owned = [o["metadata"]["name"] for kind in ("deployments", "services", "httproutes")
                 for o in run.kube_api.objects(kind, "default") if o["metadata"]["name"].startswith("misspelt")]
        assert owned == [], "nothing was created for a rollout that cannot work"
