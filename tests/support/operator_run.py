"""The real operator process as the Helm chart runs it (kopf peering, the chart's ServiceAccount and RBAC),
against the real control plane (tests/support/cluster.py).

Used by the chart's RBAC test, and by the peering, notification and metrics end-to-end tests. The
chart's ServiceAccount, RBAC and peering objects are installed as `helm install` would create them
(a release of its own per run, so the RBAC under test is the only RBAC the operator has), the
operator authenticates with that ServiceAccount's token, and the real RBAC authorizer holds it to
the chart's rules. `operator_calls()` reads the API server's audit log: every request the
operator's ServiceAccount made.

Usage::

    with OperatorRun(control_plane, tmp_path, prometheus.url, namespaces=["default"]) as run:
        run.client.create(rollout_manifest("r", query="vector(1)"))
        run.wait_phase("r", "RolledBack")
        run.client.delete("r")
        run.wait_gone("r")
    calls = run.operator_calls()
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from rollout_operator import api
from rollout_operator.cluster.control_plane import ControlPlane

from tests.support.cluster import ChartRBAC, ClusterAPI
from tests.support.kube import ApiCall, policy_rollout_manifest, wait_for
from tests.support.operator_process import OperatorProcess

_releases = (f"run{i}" for i in itertools.count())


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
    """Creates and deletes PolicyRollouts as the test's own user (the cluster admin, not the operator)."""

    __test__ = False  # not a pytest test class

    def __init__(self, cluster: ClusterAPI) -> None:
        self._client = cluster.client

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self._client.create(manifest)

    def delete(self, name: str, namespace: str = "default") -> None:
        self._client.delete(api.API_VERSION, api.KIND, name, namespace)


class OperatorRun:
    """The chart's RBAC + peering objects + `policy-rollouts operator --peering` as its ServiceAccount."""

    def __init__(self, plane: ControlPlane, workdir: Path, prometheus_url: str, namespaces: list[str] | None = None,
                 extra_args: tuple[str, ...] = ("--metrics-port", "0"), release: str | None = None,
                 without: tuple[str, str, str] | None = None, env: dict[str, str] | None = None) -> None:
        """`release` names the chart release (default: a fresh one); `without` drops one RBAC rule; `env` is the
        operator's policy (default: operator_process.TRUST_ENV)."""
        self.env = env
        self.plane = plane
        self.release = release or next(_releases)
        self.without = without
        self.workdir = workdir
        self.prometheus_url = prometheus_url
        self.namespaces = namespaces
        self.extra_args = extra_args
        self.kube_api = ClusterAPI(plane)
        self.client = TestClient(self.kube_api)
        self.rbac: ChartRBAC | None = None
        self.operator: OperatorProcess | None = None
        self.calls: list[ApiCall] = []

    def __enter__(self) -> OperatorRun:
        try:
            scope = "namespace" if self.namespaces else "cluster"
            self.rbac = ChartRBAC(self.plane, self.workdir, scope=scope, namespaces=self.namespaces,
                                  release=self.release, without=self.without)
            args = ["--peering", self.peering, *self.extra_args]
            for namespace in self.namespaces or []:
                args += ["--namespace", namespace]
            self.operator = OperatorProcess(self.rbac.kubeconfig, self.prometheus_url,
                                            self.workdir / "operator.log", extra_args=tuple(args),
                                            env=self.env).start()
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def user(self) -> str:
        """The operator's user name as the API server authenticates it."""
        assert self.rbac is not None
        return self.rbac.user

    @property
    def peering(self) -> str:
        """The peering the chart created for this release (its name follows the release)."""
        assert self.rbac is not None
        [peering] = [o for o in self.rbac.objects if o["kind"] in ("KopfPeering", "ClusterKopfPeering")][:1]
        return str(peering["metadata"]["name"])

    def __exit__(self, *exc: Any) -> None:
        if self.operator is not None:
            self.operator.stop()  # SIGTERM: kopf leaves the peering on the way out (a recorded call too)
        self.calls = self.kube_api.calls
        self.kube_api.clean_up()
        if self.rbac is not None:
            self.rbac.uninstall()
        self.kube_api.close()
    # ---- reads (as the admin: never counted as the operator's)

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
        """Every resource request the operator's ServiceAccount made (from the audit log)."""
        assert self.rbac is not None
        calls = self.calls or self.kube_api.calls
        return [c for c in calls if c.user == self.rbac.user]


def settle(seconds: float) -> None:
    """Let the operator run a few more ticks (e.g. to repair drift) before stopping it."""
    time.sleep(seconds)
