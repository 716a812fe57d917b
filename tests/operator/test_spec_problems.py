"""A spec that cannot work fails at once, with the reason in status and an Event, before anything is created."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import pytest
from rollout_operator import api
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
        events = wait_for(lambda: [e for e in run.kube_api.objects("events", "default")
                                   if e["involvedObject"]["name"] == "misspelt" and e["reason"] == "InvalidSpec"],
                          10, what="the InvalidSpec Event (written right after the status)")
        assert events[0]["type"] == "Warning"
        time.sleep(2)
        owned = [o["metadata"]["name"] for kind in ("deployments", "services", "httproutes")
                 for o in run.kube_api.objects(kind, "default") if o["metadata"]["name"].startswith("misspelt")]
        assert owned == [], "nothing was created for a rollout that cannot work"


class _Listener(http.server.BaseHTTPRequestHandler):
    """A loopback listener a rollout author would like the operator to query (the SSRF of issue 17)."""

    requests: list[str] = []

    def do_GET(self) -> None:
        _Listener.requests.append(f"{self.command} {self.path}")
        self.send_response(200)
        self.end_headers()

    do_POST = do_GET  # Prometheus queries are POSTs

    def log_message(self, *args: object) -> None:
        pass


def test_what_the_operators_policy_refuses_fails_at_once_and_nothing_is_contacted_or_run(
    control_plane: ControlPlane, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    elsewhere = f"http://127.0.0.1:{listener.server_address[1]}"
    try:
        with OperatorRun(control_plane, tmp_path, prometheus.url) as run:
            ssrf = rollout_manifest("ssrf", "vector(0)", [{"setWeight": 20}, {"setWeight": 100}], elsewhere)
            training = {"dataset": "s3://logs", "output": "s3://models", "schedule": "* * * * *",
                        "image": "evil/miner:latest", "serviceAccountName": "deployer"}
            deputy = rollout_manifest("deputy", "vector(0)", [{"setWeight": 20}, {"setWeight": 100}], prometheus.url,
                                      training=training)
            run.client.create(ssrf)
            run.client.create(deputy)
            ssrf_status = run.wait_phase("ssrf", "Failed", timeout=30)
            deputy_status = run.wait_phase("deputy", "Failed", timeout=30)
            assert f"spec.analysis.prometheusUrl '{elsewhere}' is not allowed by the operator's policy" in \
                ssrf_status["message"]
            assert "spec.training.image 'evil/miner:latest' is not an image" in deputy_status["message"]
            assert "spec.training.serviceAccountName 'deployer' is not a ServiceAccount" in deputy_status["message"]
            expected = {("ssrf", "InvalidSpec", "Warning"), ("deputy", "InvalidSpec", "Warning")}
            wait_for(lambda: expected <= {(e["involvedObject"]["name"], e["reason"], e["type"])
                                          for e in run.kube_api.objects("events", "default")},
                     10, what="both InvalidSpec Events")
            time.sleep(2)
            owned = [o["metadata"]["name"] for kind in ("deployments", "services", "httproutes", "jobs")
                     for o in run.kube_api.objects(kind, "default")
                     if o["metadata"]["name"].startswith(("ssrf", "deputy"))]
            assert owned == [], "nothing was created"
    finally:
        listener.shutdown()
    assert _Listener.requests == [], "the operator never contacted a URL its policy refuses"


def test_a_url_edited_in_mid_rollout_is_never_queried_and_the_rollout_rolls_back(
    control_plane: ControlPlane, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    """Traffic is moving, so the rollout is not failed in place: it measures nothing, which rolls it back."""
    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    elsewhere = f"http://127.0.0.1:{listener.server_address[1]}"
    _Listener.requests.clear()
    try:
        with OperatorRun(control_plane, tmp_path, prometheus.url) as run:
            run.client.create(rollout_manifest("edited", "vector(0)", [{"setWeight": 20}, {"pause": {}}],
                                               prometheus.url))
            run.wait_phase("edited", "Paused", timeout=60)
            run.kube_api.client.patch(api.API_VERSION, api.KIND, "edited", "default",
                                      {"spec": {"analysis": {"prometheusUrl": elsewhere}}})
            status = wait_for(lambda: (s := run.status("edited")) and any(
                h["phase"] == "RolledBack" for h in s.get("history", [])) and s, 60, what="the rollback")
            assert status["canaryWeight"] == 0
            [rollback] = [h for h in status["history"] if h["phase"] == "RollingBack"]
            assert rollback["reason"] == "InconclusiveLimitExceeded"
            assert "is not allowed by the operator's policy" in rollback["message"]
            # Ended, it is then failed as it stands (the spec must change before a retry).
            assert run.wait_phase("edited", "Failed", timeout=30)["canaryWeight"] == 0
            wait_for(lambda: any(e["involvedObject"]["name"] == "edited" and e["reason"] == "SpecProblem"
                                 for e in run.kube_api.objects("events", "default")), 10, what="a SpecProblem Event")
    finally:
        listener.shutdown()
    assert _Listener.requests == [], "the operator never contacted a URL its policy refuses"
