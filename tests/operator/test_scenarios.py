"""End to end: the real operator process, a real control plane (kube-apiserver, etcd, controllers,
kwok nodes; tests/support/cluster.py), a real Prometheus.

Each scenario applies a PolicyRollout with the Gateway API provider, drives the guardrail's
metric through an exporter that Prometheus scrapes every second, and checks what a user
would: status (phase, step, message, history), Events, and the HTTPRoute's weights. The real
Deployment and ReplicaSet controllers, the scheduler and kwok make the Deployments Available.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from rollout_operator import api, kube
from rollout_operator.resources import httproute

from tests.support import crd_validation, requirements
from tests.support.cluster import ClusterAPI
from tests.support.kube import KubeAPI, policy_rollout_manifest
from tests.support.operator_process import OperatorProcess, poll
from tests.support.prometheus import Exporter, PrometheusServer

pytestmark = pytest.mark.integration

NAMESPACE = "default"
METRIC = "candidate_error_ratio"
GUARDRAIL_QUERY = f'max({METRIC}{{rollout="{{{{ rollout }}}}",namespace="{{{{ namespace }}}}"}})'
_names = (f"scenario-{i}" for i in itertools.count())


@pytest.fixture()
def operator(cluster: ClusterAPI, prometheus: PrometheusServer, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(cluster.operator_kubeconfig, prometheus.url, tmp_path / "operator.log").start()
    try:
        yield process
    finally:
        process.stop()


class Scenario:
    """One rollout under test, with the accessors the assertions need."""

    def __init__(
        self,
        kube_api: ClusterAPI,
        client: kube.Client,
        exporter: Exporter,
        prometheus: PrometheusServer,
        operator: OperatorProcess,
        steps: list[dict[str, Any]],
        **guardrail: Any,
    ) -> None:
        self.kube_api, self.client, self.exporter, self.operator = kube_api, client, exporter, operator
        self.name = next(_names)
        self.set_metric(0.01)
        prometheus.wait_for(f'{METRIC}{{rollout="{self.name}"}}', lambda v: v == 0.01, timeout=30)
        manifest = policy_rollout_manifest(
            name=self.name,
            namespace=NAMESPACE,
            steps=steps,
            analysis={
                "interval": "1s",
                "guardrails": [
                    {
                        "name": "error-rate",
                        "query": GUARDRAIL_QUERY,
                        "condition": "< 0.05",
                        "failureLimit": 1,
                        "inconclusiveLimit": 3,
                        **guardrail,
                    }
                ],
            },
        )
        assert crd_validation.validate(manifest) == [], "the scenario's manifest must be valid"
        self.client.create(manifest)
        self.steps = len(steps)
        self.weights_seen: list[tuple[str, int]] = []

    def set_metric(self, value: float) -> None:
        self.exporter.set(METRIC, value, rollout=self.name, namespace=NAMESPACE)

    def body(self) -> dict[str, Any]:
        return self.client.get(api.API_VERSION, api.KIND, self.name, NAMESPACE)

    def status(self) -> dict[str, Any]:
        return self.body().get("status") or {}

    def route(self) -> dict[str, Any] | None:
        return self.kube_api.get("httproutes", NAMESPACE, self.name)

    def candidate_weight(self) -> int | None:
        route = self.route()
        if route is None:
            return None
        weights = httproute.weights_of(route, api.PolicyRollout.model_validate(self.body()))
        return None if weights is None else weights.candidate

    def events(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.kube_api.objects("events", NAMESPACE)
            if e.get("involvedObject", {}).get("name") == self.name
        ]

    def annotate(self, verb: str, action_id: str) -> None:
        self.client.patch(
            api.API_VERSION,
            api.KIND,
            self.name,
            NAMESPACE,
            {"metadata": {"annotations": {api.ANNOTATION_ACTION: f"{verb}/{action_id}"}}},
        )

    def explain(self) -> str:
        return (
            f"status: {self.status()}\nroute weight: {self.candidate_weight()}\noperator log:\n"
            f"{self.operator.log_tail()}"
        )

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        """Poll, recording every (phase, HTTPRoute weight) pair seen on the way."""

        def check() -> Any:
            weight = self.candidate_weight()  # before status: a weight is never newer than the phase beside it
            status = self.status()
            if weight is not None:
                promoting = status.get("currentStepIndex", 0) >= self.steps
                self.weights_seen.append(("Promoting" if promoting else status.get("phase", ""), weight))
            return predicate(status)

        return poll(check, timeout, what=what, on_timeout=self.explain)

    def wait_phase(self, phase: str, timeout: float = 40.0) -> dict[str, Any]:
        return self.wait(lambda s: s if s.get("phase") == phase else None, timeout, f"{self.name} in {phase}")


@pytest.fixture()
def scenario(cluster: ClusterAPI, exporter: Exporter, prometheus: PrometheusServer, operator: OperatorProcess) -> Any:
    def make(steps: list[dict[str, Any]], **guardrail: Any) -> Scenario:
        return Scenario(cluster, cluster.client, exporter, prometheus, operator, steps, **guardrail)

    return make


def _phases(status: dict[str, Any]) -> list[str]:
    return [entry["phase"] for entry in status.get("history", [])]


def _assert_never_backwards(weights: list[tuple[str, int]]) -> None:
    """Until promotion or rollback, the candidate's weight only grows.

    Weights are read before status and a lowering is applied before status is written, so a
    sample taken during promotion or rollback may pair the new weight with the old phase:
    those phases (and the promotion past the last step) are left out.
    """
    ending = ("Promoting", "Promoted", "RollingBack", "RolledBack", "Aborted")
    live = [w for phase, w in weights if phase not in ending]
    assert live == sorted(live), f"weight went backwards: {live}"


def test_healthy_candidate_is_promoted_through_every_step(scenario: Any, cluster: ClusterAPI) -> None:
    s = scenario(
        [
            {"shadow": {"duration": "1s"}},
            {"setWeight": 25},
            {"pause": {"duration": "1s"}},
            {"setWeight": 50},
            {"setWeight": 100},
        ]
    )
    s.wait(lambda st: st.get("phase") == "Shadow", 30, "shadow")

    def mirrored() -> bool:  # status is written before traffic moves forward, so the route follows it
        route = s.route()
        return route is not None and httproute.weights_of(route, api.PolicyRollout.model_validate(s.body())).shadow

    poll(mirrored, 10, what="the HTTPRoute mirroring to the candidate", on_timeout=s.explain)
    status = s.wait_phase("Promoted", timeout=60)

    assert status["stableVersion"] == "v2" and status["canaryWeight"] == 0
    assert {"Shadow", "Progressing", "Paused", "Promoted"} <= set(_phases(status))
    assert [e["step"] for e in status["history"] if e.get("step") is not None] == sorted(
        e["step"] for e in status["history"] if e.get("step") is not None
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == s.body()["metadata"]["generation"]
    assert s.candidate_weight() == 0, "after promotion the stable variant (now v2) serves everything"
    assert {25, 50, 100} <= {e.get("weight") for e in status["history"]}, "every weight step was taken"
    _assert_never_backwards(s.weights_seen)
    stable = cluster.get("deployments", NAMESPACE, f"{s.name}-stable")
    assert stable["spec"]["template"]["metadata"]["annotations"]["policy.rollouts.io/version"] == "v2"
    reasons = {e["reason"] for e in s.events()}
    assert "Promoted" in reasons or any("Promot" in r for r in reasons), reasons


def test_guardrail_breach_at_a_middle_step_rolls_back_and_names_the_guardrail(scenario: Any) -> None:
    s = scenario([{"setWeight": 20}, {"setWeight": 40}, {"pause": {}}, {"setWeight": 100}])
    s.wait(lambda st: st.get("currentStepIndex") == 2 and st.get("phase") == "Paused", 40, "the pause at 40%")
    assert s.candidate_weight() == 40

    s.set_metric(0.5)
    status = s.wait_phase("RolledBack", timeout=40)

    assert "error-rate" in status["message"]
    assert s.candidate_weight() == 0
    assert "Promoted" not in _phases(status)
    guardrail = next(g for g in status["guardrails"] if g["name"] == "error-rate")
    assert guardrail["verdict"] == "Fail" and guardrail["value"] == pytest.approx(0.5)
    warnings = [e for e in s.events() if e["type"] == "Warning"]
    assert any("error-rate" in e["message"] for e in warnings), [e["message"] for e in s.events()]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"


def test_prometheus_outage_pauses_then_rolls_back_never_promotes(scenario: Any, prometheus: PrometheusServer) -> None:
    s = scenario([{"setWeight": 20}, {"pause": {"duration": "2s"}}, {"setWeight": 100}], inconclusiveLimit=6)
    s.wait(lambda st: st.get("canaryWeight") == 20, 40, "live traffic at 20%")
    prometheus.stop()
    try:
        paused = s.wait(
            lambda st: (
                st
                if st.get("phase") == "Paused"
                and any(g.get("verdict") == "Inconclusive" for g in st.get("guardrails", []))
                else None
            ),
            30,
            "an inconclusive pause",
        )
        assert paused["canaryWeight"] == 20, "inconclusive holds the weight; it does not advance"
        status = s.wait_phase("RolledBack", timeout=40)
    finally:
        prometheus.start()
    assert "error-rate" in status["message"]
    assert "Promoted" not in _phases(status)
    assert s.candidate_weight() == 0
    assert any("unreachable" in (g.get("message") or "") for g in status["guardrails"]), status["guardrails"]


def test_operator_killed_mid_step_resumes_from_the_same_step(
    scenario: Any, operator: OperatorProcess, cluster: ClusterAPI
) -> None:
    s = scenario([{"setWeight": 10}, {"pause": {"duration": "3s"}}, {"setWeight": 30}, {"pause": {}}])
    before = s.wait(lambda st: st if st.get("currentStepIndex") == 1 else None, 40, "the timed pause")
    operator.kill()
    after_kill = s.status()
    assert after_kill["currentStepIndex"] == 1
    operator.start()

    status = s.wait(lambda st: st if st.get("currentStepIndex") == 3 else None, 40, "the final pause")
    assert status["canaryWeight"] == 30
    assert status["startedAt"] == before["startedAt"], "a restart must not start the rollout over"
    steps_seen = [e["step"] for e in status["history"] if e.get("step") is not None]
    assert steps_seen == sorted(steps_seen), f"step went backwards across the restart: {steps_seen}"
    _assert_never_backwards(s.weights_seen)
    mine = {"policy.rollouts.io/rollout": s.name}
    deployments = [
        d for d in cluster.objects("deployments", NAMESPACE) if mine.items() <= d["metadata"].get("labels", {}).items()
    ]
    assert sorted(d["metadata"]["name"] for d in deployments) == [f"{s.name}-candidate", f"{s.name}-stable"]
    routes = [r for r in cluster.objects("httproutes", NAMESPACE) if r["metadata"]["name"] == s.name]
    assert len(routes) == 1


def test_manual_promote_and_approve_finish_the_rollout(scenario: Any) -> None:
    s = scenario([{"setWeight": 10}, {"pause": {}}, {"approval": {}}, {"setWeight": 100}])
    s.wait_phase("Paused")
    s.annotate("promote", "1")
    s.wait_phase("AwaitingApproval")
    assert s.candidate_weight() == 10
    s.annotate("approve", "2")
    status = s.wait_phase("Promoted")
    assert status["lastActionId"] == "2"
    assert any(e["reason"] for e in s.events() if "approv" in e["message"].lower())


def test_manual_abort_returns_all_traffic_to_stable(scenario: Any) -> None:
    s = scenario([{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}])
    s.wait_phase("Paused")
    assert s.candidate_weight() == 30
    s.annotate("abort", "stop-now")
    status = s.wait_phase("Aborted")
    assert s.candidate_weight() == 0
    assert status["canaryWeight"] == 0
    assert "Promoted" not in _phases(status)


def test_the_api_server_refuses_a_manifest_that_breaks_a_cel_rule(cluster: ClusterAPI) -> None:
    manifest = policy_rollout_manifest(name="broken", steps=[{"setWeight": 10, "pause": {}}])
    with pytest.raises(kube.Invalid) as refused:
        cluster.client.create(manifest)
    assert "spec.steps[0]" in str(refused.value) and "exactly one" in str(refused.value)
    assert cluster.get("policyrollouts", NAMESPACE, "broken") is None


def test_a_manifest_past_the_schema_is_refused_in_status(
    kube_api: KubeAPI, client: kube.Client, fake_deployment_controller: Any, tmp_path: Path
) -> None:
    """Emulator on purpose: a real server never stores a manifest its CRD's CEL rules refuse (an older
    CRD could). The operator itself must still refuse bad specs, naming the field."""
    process = OperatorProcess(kube_api.kubeconfig_path, "http://127.0.0.1:9", tmp_path / "operator.log").start()
    try:
        client.create(policy_rollout_manifest(name="broken", steps=[{"setWeight": 10, "pause": {}}]))
        status = poll(
            lambda: (client.get(api.API_VERSION, api.KIND, "broken", NAMESPACE).get("status") or {}).get("message"),
            30,
            what="a status message",
            on_timeout=process.log_tail,
        )
    finally:
        process.stop()
    assert "steps" in status and "exactly one" in status
    assert kube_api.get("deployments", NAMESPACE, "broken-stable") is None, "a bad spec changes nothing"


def test_every_object_the_operator_creates_is_schema_valid(scenario: Any, cluster: ClusterAPI) -> None:
    httproute_schema = requirements.schema("gateway-api-v1.6.1-httproutes.yaml")
    s = scenario([{"setWeight": 30}, {"pause": {}}])
    s.wait_phase("Paused")
    server_fields = {"uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"}
    checked = 0
    for kind in ("deployments", "services"):
        for obj in cluster.objects(kind, NAMESPACE):
            if kind == "services" and obj["metadata"]["name"] == "kubernetes":
                continue
            obj["metadata"] = {k: v for k, v in obj["metadata"].items() if k not in server_fields}
            obj.pop("status", None)
            kubernetes_validate.validate(obj, "1.30", strict=True)
            checked += 1
    assert checked >= 4
    schema = crd_validation.version_schema(crd_validation.load_crd(httproute_schema), "v1")
    route = s.route()
    assert route is not None
    jsonschema.validate(route["spec"], schema["properties"]["spec"])


def test_kubectl_wait_for_ready_returns_once_promoted(scenario: Any, cluster: ClusterAPI) -> None:
    """kstatus as GitOps pipelines use it: `kubectl wait --for=condition=Ready policyrollout/NAME`."""
    s = scenario([{"shadow": {"duration": "2s"}}, {"setWeight": 50}, {"pause": {"duration": "2s"}}, {"setWeight": 100}])
    early = cluster.plane.kubectl("wait", "--for=condition=Ready", f"policyrollout/{s.name}", "--timeout=1s")
    assert early.returncode != 0, "Ready before the rollout even started"
    waited = cluster.plane.kubectl("wait", "--for=condition=Ready", f"policyrollout/{s.name}", "--timeout=90s",
                                   timeout=100)
    assert waited.returncode == 0, f"{waited.stderr}\n{s.explain()}"
    assert "condition met" in waited.stdout
    assert s.status()["phase"] == "Promoted"


def test_deletion_runs_the_finalizer_and_the_garbage_collector_removes_what_the_rollout_owned(
    scenario: Any, cluster: ClusterAPI
) -> None:
    s = scenario([{"setWeight": 30}, {"pause": {}}])
    s.wait_phase("Paused")
    uid = s.body()["metadata"]["uid"]
    mine = {"policy.rollouts.io/rollout": s.name}

    def owned(kind: str) -> list[dict[str, Any]]:
        return [o for o in cluster.objects(kind, NAMESPACE) if mine.items() <= o["metadata"].get("labels", {}).items()]

    deployments, services = owned("deployments"), owned("services")
    assert len(deployments) == 2 and len(services) == 2
    for obj in deployments + services:
        assert [r["uid"] for r in obj["metadata"]["ownerReferences"]] == [uid], obj["metadata"]["name"]
    pods = poll(lambda: [p for p in cluster.objects("pods", NAMESPACE)
                         if p["metadata"]["labels"].get("policy.rollouts.io/rollout") == s.name], 30,
                what="the rollout's pods (Deployment -> ReplicaSet -> Pod on the kwok node)")
    assert all(p["status"]["phase"] == "Running" and p["spec"]["nodeName"].startswith("kwok-") for p in pods)

    cluster.client.delete(api.API_VERSION, api.KIND, s.name, NAMESPACE)
    poll(lambda: s.route() is None, 30, what="the finalizer to remove the HTTPRoute", on_timeout=s.explain)
    poll(lambda: cluster.get("policyrollouts", NAMESPACE, s.name) is None, 30, what="the rollout to be deleted",
         on_timeout=s.explain)
    # The real garbage collector follows the owner references: Deployments, Services, their
    # ReplicaSets and pods go without the operator deleting them.
    poll(lambda: not owned("deployments") and not owned("services"), 60, what="garbage collection",
         on_timeout=lambda: f"{owned('deployments')} {owned('services')}")
    poll(lambda: not [p for p in cluster.objects("pods", NAMESPACE)
                      if p["metadata"]["labels"].get("policy.rollouts.io/rollout") == s.name], 60,
         what="the pods to go")
