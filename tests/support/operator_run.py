"""The real operator process against a fresh emulator, as the Helm chart runs it (with kopf peering).

Used by the chart's RBAC test (which records every API call the operator makes), and by the
notification and metrics end-to-end tests. The test's own writes go through `TestClient`,
whose requests carry the `TEST_USER_AGENT`, so `operator_calls()` can leave them out; reads go
through `KubeAPI.objects()/get()` (in-process, never recorded).

Usage::

    with OperatorRun(tmp_path, prometheus.url, namespaces=["default"]) as run:
        run.client.create(rollout_manifest("r", query="vector(1)"))
        run.wait_phase("r", "RolledBack")
        run.client.delete("r")
        run.wait_gone("r")
    calls = run.operator_calls()
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import kmock
from rollout_operator import api

from tests.support.kube import ApiCall, FakeDeploymentController, KubeAPI, policy_rollout_manifest, wait_for
from tests.support.operator_process import OperatorProcess

TEST_USER_AGENT = "policy-rollouts-test-client"
PEERING_NAME = "policy-rollouts"
KOPF_PEERINGS = "kopf.dev/v1/kopfpeerings"
CLUSTER_KOPF_PEERINGS = "kopf.dev/v1/clusterkopfpeerings"


def register_peering(kube_api: KubeAPI, namespaces: list[str] | None) -> None:
    """Serve kopf's peering resources and create the peering objects the chart would create."""
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    kube_api.emulator.resources[KOPF_PEERINGS] = kmock.ResourceInfo(
        kind="KopfPeering", singular="kopfpeering", namespaced=True, verbs=verbs)
    kube_api.emulator.resources[CLUSTER_KOPF_PEERINGS] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False, verbs=verbs)
    if namespaces:
        for namespace in namespaces:
            kube_api.put(KOPF_PEERINGS, {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                                         "metadata": {"name": PEERING_NAME, "namespace": namespace}})
    else:
        kube_api.put(CLUSTER_KOPF_PEERINGS, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                             "metadata": {"name": PEERING_NAME}})


def rollout_manifest(name: str, query: str, steps: list[dict[str, Any]], prometheus_url: str,
                     namespace: str = "default", **spec: Any) -> dict[str, Any]:
    """A Gateway API rollout whose one guardrail is `query < 0.5` every second."""
    return policy_rollout_manifest(
        name=name, namespace=namespace, steps=steps,
        analysis={"interval": "1s", "prometheusUrl": prometheus_url,
                  "guardrails": [{"name": "error-rate", "query": query, "condition": "< 0.5"}]},
        **spec,
    )


class TestClient:
    """Creates and deletes PolicyRollouts over HTTP with a user agent the recording can tell apart."""

    __test__ = False  # not a pytest test class

    def __init__(self, url: str) -> None:
        self._http = httpx.Client(base_url=url, headers={"User-Agent": TEST_USER_AGENT}, timeout=60.0)

    def _path(self, namespace: str, name: str | None = None) -> str:
        path = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}"
        return f"{path}/{name}" if name else path

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        namespace = manifest["metadata"].get("namespace", "default")
        response = self._http.post(self._path(namespace), json=manifest)
        response.raise_for_status()
        return dict(response.json())

    def delete(self, name: str, namespace: str = "default") -> None:
        self._http.delete(self._path(namespace, name)).raise_for_status()

    def close(self) -> None:
        self._http.close()


class OperatorRun:
    """Emulator + peering objects + fake Deployment controller + `policy-rollouts operator --peering`."""

    def __init__(self, workdir: Path, prometheus_url: str, namespaces: list[str] | None = None,
                 extra_args: tuple[str, ...] = ("--metrics-port", "0")) -> None:
        self.workdir = workdir
        self.prometheus_url = prometheus_url
        self.namespaces = namespaces
        self.extra_args = extra_args
        self.kube_api = KubeAPI(workdir)
        self.controller: FakeDeploymentController | None = None
        self.operator: OperatorProcess | None = None
        self.client: TestClient
        self.calls: list[ApiCall] = []

    def __enter__(self) -> OperatorRun:
        self.kube_api.start()
        try:
            register_peering(self.kube_api, self.namespaces)
            self.controller = FakeDeploymentController(self.kube_api).start()
            args = ["--peering", PEERING_NAME, *self.extra_args]
            for namespace in self.namespaces or []:
                args += ["--namespace", namespace]
            self.operator = OperatorProcess(self.kube_api.kubeconfig_path, self.prometheus_url,
                                            self.workdir / "operator.log", extra_args=tuple(args)).start()
            self.client = TestClient(self.kube_api.url)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.operator is not None:
            self.operator.stop()  # SIGTERM: kopf leaves the peering on the way out (a recorded call too)
        if self.controller is not None:
            self.controller.stop()
        self.calls = self.kube_api.calls
        if hasattr(self, "client"):
            self.client.close()
        self.kube_api.stop()

    # ---- reads (in-process: not recorded)

    def status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        obj = self.kube_api.get(api.PLURAL, namespace, name)
        return (obj or {}).get("status") or {}

    def explain(self) -> str:
        return self.operator.log_tail() if self.operator else ""

    def wait_phase(self, name: str, phase: str, timeout: float = 60.0, namespace: str = "default") -> dict[str, Any]:
        try:
            return wait_for(lambda: (s := self.status(name, namespace)).get("phase") == phase and s, timeout,
                            what=f"{name} in {phase}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status {self.status(name, namespace)}\n{self.explain()}") from None

    def wait_gone(self, name: str, timeout: float = 30.0, namespace: str = "default") -> None:
        wait_for(lambda: self.kube_api.get(api.PLURAL, namespace, name) is None, timeout, what=f"{name} deleted")

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        wait_for(lambda: self.operator is not None and text in self.operator.log_path.read_text(errors="replace"),
                 timeout, what=f"{text!r} in the operator log")

    def operator_calls(self) -> list[ApiCall]:
        """Every recorded resource request except the test client's own."""
        calls = self.calls or self.kube_api.calls
        return [c for c in calls if c.user_agent != TEST_USER_AGENT]


def settle(seconds: float) -> None:
    """Let the operator run a few more ticks (e.g. to repair drift) before stopping it."""
    time.sleep(seconds)
