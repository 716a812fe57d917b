"""A spec that cannot work fails at once, with the reason in status and an Event, before anything is created."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rollout_operator import api, kube
from rollout_operator.cluster.control_plane import ControlPlane

from tests.support.kube import KubeAPI, policy_rollout_manifest, wait_for
from tests.support.operator_process import OperatorProcess, poll
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


def test_a_rollout_stored_before_the_promotion_rules_and_moving_traffic_is_finished_not_stranded(
    kube_api: KubeAPI, client: kube.Client, fake_deployment_controller: Any, tmp_path: Path
) -> None:
    """Emulator on purpose: the real server keeps such objects (stored under an older CRD) but cannot be made
    to store one now. Failing it in place would leave 30 % of traffic on the candidate."""
    older = policy_rollout_manifest(name="older", steps=[{"setWeight": 30}, {"pause": {}}])
    del older["spec"]["allowPromotionWithoutAnalysis"]  # no guardrails, written before the rule existed
    waiting = policy_rollout_manifest(name="waiting", steps=[{"setWeight": 30}, {"pause": {}}])
    del waiting["spec"]["allowPromotionWithoutAnalysis"]
    client.create(older)
    client.create(waiting)
    kube_api.set_status("policyrollouts", "default", "older",
                        {"phase": "Paused", "currentStepIndex": 1, "canaryWeight": 30, "stableVersion": "v1",
                         "candidateVersion": "v2", "startedAt": "2026-12-06T00:00:00Z",
                         "stepStartedAt": "2026-12-06T00:00:00Z", "liveSince": "2026-12-06T00:00:00Z"})
    process = OperatorProcess(kube_api.kubeconfig_path, "http://127.0.0.1:9", tmp_path / "operator.log").start()
    try:
        warned = poll(lambda: [e for e in kube_api.objects("events", "default")
                               if e["involvedObject"]["name"] == "older" and e["reason"] == "SpecProblem"],
                      30, what="a SpecProblem Event", on_timeout=process.log_tail)
        assert api.NO_ANALYSED_LIVE_STEP in warned[0]["message"]
        not_started = poll(lambda: (kube_api.get("policyrollouts", "default", "waiting") or {}).get("status"), 30,
                           what="the not-started rollout's status", on_timeout=process.log_tail)
        assert not_started["phase"] == "Failed" and api.NO_ANALYSED_LIVE_STEP in not_started["message"]
        client.patch(api.API_VERSION, api.KIND, "older", "default",
                     {"metadata": {"annotations": {api.ANNOTATION_ACTION: "abort/stop"}}})
        aborted = poll(lambda: (s := (kube_api.get("policyrollouts", "default", "older") or {}).get("status") or {})
                       and any(h["phase"] == "Aborted" for h in s.get("history", [])) and s, 30, what="the abort",
                       on_timeout=process.log_tail)
    finally:
        process.stop()
    assert aborted["canaryWeight"] == 0, "its traffic went back to stable"
