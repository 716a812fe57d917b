"""A real Kubernetes control plane for the end-to-end tests, started once per test session.

`rollout_operator.cluster.ControlPlane` runs etcd, kube-apiserver (RBAC, admission, service-account
tokens, an audit log), kube-controller-manager, kube-scheduler and a kwok fake node, all built from
their Go modules (scripts/kube-binaries.sh). The session installs the CRDs a rollout may touch: our
PolicyRollout CRD (server-side apply of the generated YAML), Gateway API HTTPRoutes, Istio
VirtualServices (the schemas in ../shared/schemas) and kopf's peering CRDs.

Fixtures (registered in tests/conftest.py):

- `control_plane` (session) -> the running `ControlPlane`.
- `operator_rbac` (session) -> `ChartRBAC`: the chart's cluster-scope ServiceAccount and RBAC,
  installed once; `.kubeconfig` authenticates as that ServiceAccount (a TokenRequest token).
- `cluster` -> `ClusterAPI` (`.operator_kubeconfig`: the chart ServiceAccount's): the same
  accessors as the emulator's `KubeAPI` (`.url`, `.kubeconfig_path`, `objects()`, `get()`, `put()`,
  `set_status()`, `calls`, `calls_to()`),
  backed by the real server. `calls` are read from the API server's audit log, from the start of
  the test. After the test, everything it left in its namespace is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rollout_operator import api, kube
from rollout_operator.cluster.control_plane import ControlPlane

from tests.support.kube import ApiCall
from tests.support.requirements import SCHEMAS

REPO = Path(__file__).resolve().parents[2]
CRDS = (
    REPO / "crds" / "policyrollout.yaml",
    REPO / "charts" / "policy-rollouts" / "crds" / "kopf-peerings.yaml",
    SCHEMAS / "gateway-api-v1.6.1-httproutes.yaml",
    SCHEMAS / "istio-1.30.3-virtualservices.yaml",
)
# What a test may leave behind in its namespace, deleted after it (PolicyRollouts first, with their
# finalizers removed: no operator runs any more to remove them).
CLEANED_UP = (
    (api.API_VERSION, api.KIND), ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("networking.istio.io/v1", "VirtualService"), ("batch/v1", "Job"), ("apps/v1", "Deployment"),
    ("v1", "Service"), ("v1", "ConfigMap"), ("v1", "Pod"), ("v1", "Event"), ("kopf.dev/v1", "KopfPeering"),
    ("v1", "Secret"), ("v1", "ServiceAccount"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
)
KEPT = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default"), ("Service", "kubernetes")}
# Kinds the tests name by plural or kind, as the emulator's KubeAPI accepted them.
KINDS = {
    "policyrollouts": (api.API_VERSION, api.KIND), "httproutes": ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    "virtualservices": ("networking.istio.io/v1", "VirtualService"), "jobs": ("batch/v1", "Job"),
    "deployments": ("apps/v1", "Deployment"), "replicasets": ("apps/v1", "ReplicaSet"),
    "services": ("v1", "Service"), "configmaps": ("v1", "ConfigMap"), "pods": ("v1", "Pod"),
    "events": ("v1", "Event"), "secrets": ("v1", "Secret"), "namespaces": ("v1", "Namespace"),
    "kopfpeerings": ("kopf.dev/v1", "KopfPeering"), "clusterkopfpeerings": ("kopf.dev/v1", "ClusterKopfPeering"),
    "serviceaccounts": ("v1", "ServiceAccount"), "roles": ("rbac.authorization.k8s.io/v1", "Role"),
    "rolebindings": ("rbac.authorization.k8s.io/v1", "RoleBinding"),
}


def _progress(message: str) -> None:
    print(f"[control plane] {message}", file=sys.stderr, flush=True)


def install_crds(client: kube.Client, timeout: float = 60.0) -> None:
    """Create every CRD in `CRDS` and wait until the server serves each (Established)."""
    names = []
    for path in CRDS:
        for crd in yaml.safe_load_all(path.read_text()):
            if crd:
                client.apply(crd)
                names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = client.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established within {timeout}s"
            time.sleep(0.1)


@contextlib.contextmanager
def running_control_plane(directory: Path) -> Iterator[ControlPlane]:
    """A control plane with the CRDs installed, stopped (every process by PID) on the way out."""
    plane = ControlPlane(directory).start(_progress)
    try:
        client = kube.Client.from_kubeconfig(plane.kubeconfig)
        try:
            install_crds(client)
        finally:
            client.close()
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path_factory.mktemp("control-plane")) as plane:
        yield plane


@pytest.fixture(scope="session")
def operator_rbac(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> ChartRBAC:
    """The chart's cluster-scope RBAC, installed once: end-to-end operators run as its ServiceAccount."""
    return ChartRBAC(control_plane, tmp_path_factory.mktemp("operator-rbac"))


def audit_events(path: Path, start: int = 0, end: int | None = None) -> Iterator[dict[str, Any]]:
    """The API server's audit events between two byte offsets of its log, streamed (the log may be large).

    A line cut by an offset or still being written is skipped.
    """
    with path.open("rb") as log:
        log.seek(start)
        position = start
        for line in log:
            position += len(line)
            if end is not None and position > end:
                return
            with contextlib.suppress(ValueError):
                yield json.loads(line)


class ClusterAPI:
    """The real API server, with the accessors the emulator-era tests use.

    `kubeconfig_path` is the admin's (what the test itself uses); `operator_kubeconfig` is the
    chart's ServiceAccount's, when given: the identity an operator under test runs as.
    """

    def __init__(self, plane: ControlPlane, namespace: str = "default",
                 operator_kubeconfig: Path | None = None) -> None:
        self.plane = plane
        self.namespace = namespace
        self.url = plane.server
        self.kubeconfig_path = plane.kubeconfig
        self.operator_kubeconfig = operator_kubeconfig or plane.kubeconfig
        self.client = kube.Client.from_kubeconfig(plane.kubeconfig)
        self._audit_offset = plane.audit_log.stat().st_size if plane.audit_log.exists() else 0

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def kind(what: str) -> tuple[str, str]:
        """(apiVersion, kind) of `what`: a plural the tests use, or a kind."""
        if what in KINDS:
            return KINDS[what]
        for api_version, kind in KINDS.values():
            if what.lower() == kind.lower():
                return api_version, kind
        raise KeyError(f"unknown resource {what!r}: add it to tests/support/cluster.py KINDS")

    def objects(self, what: str, namespace: str | None = None) -> list[dict[str, Any]]:
        api_version, kind = self.kind(what)
        items = self.client.list(api_version, kind, namespace)
        for item in items:  # list items carry no apiVersion/kind on the wire; objects from a get do
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def get(self, what: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        api_version, kind = self.kind(what)
        return self.client.find(api_version, kind, name, namespace)

    def put(self, what: str, obj: dict[str, Any]) -> None:
        """Create (or replace) an object as some other client would, status included."""
        api_version, kind = self.kind(what)
        obj = {**obj, "apiVersion": api_version, "kind": kind}
        meta = obj["metadata"]
        status = obj.get("status")
        if self.client.find(api_version, kind, meta["name"], meta.get("namespace")) is None:
            self.client.create(obj)
        else:
            self.client.patch(api_version, kind, meta["name"], meta.get("namespace"),
                              {k: v for k, v in obj.items() if k != "status"})
        if status:
            self.set_status(what, meta.get("namespace"), meta["name"], status)

    def set_status(self, what: str, namespace: str | None, name: str, status: dict[str, Any]) -> bool:
        api_version, kind = self.kind(what)
        try:
            self.client.patch_status(api_version, kind, name, namespace, status)
        except kube.NotFound:
            return False
        return True

    @property
    def calls(self) -> list[ApiCall]:
        """Every resource request since this test began, from the API server's audit log."""
        if not self.plane.audit_log.exists():
            return []
        calls = []
        for event in audit_events(self.plane.audit_log, self._audit_offset):
            ref = event.get("objectRef")
            if not ref or event.get("stage") != "ResponseComplete":
                continue
            calls.append(ApiCall(event["verb"], ref.get("apiGroup", ""), ref.get("apiVersion", ""),
                                 ref["resource"], ref.get("subresource"), ref.get("namespace"),
                                 user_agent=event.get("userAgent", ""),
                                 user=event.get("user", {}).get("username", ""),
                                 status=int(event.get("responseStatus", {}).get("code", 0)),
                                 name=ref.get("name")))
        return calls

    def calls_to(self, resource: str) -> list[ApiCall]:
        return [c for c in self.calls if c.resource == resource]

    def clean_up(self, timeout: float = 30.0) -> None:
        """Delete what the test left in its namespace, so the next test starts from an empty one.

        Waits until the deleted objects are gone (pods and events may linger), so that a next test
        reusing a name never meets the previous object on its way out.
        """
        for api_version, kind in CLEANED_UP:
            for item in self._leftovers(api_version, kind):
                name = item["metadata"]["name"]
                with contextlib.suppress(kube.NotFound):
                    if item["metadata"].get("finalizers"):
                        self.client.patch(api_version, kind, name, self.namespace, {"metadata": {"finalizers": None}})
                    self.client.delete(api_version, kind, name, self.namespace)
        deadline = time.monotonic() + timeout
        awaited = [(v, k) for v, k in CLEANED_UP if k not in ("Pod", "Event")]
        while left := [f"{k}/{o['metadata']['name']}" for v, k in awaited for o in self._leftovers(v, k)]:
            assert time.monotonic() < deadline, f"still there {timeout}s after the test: {left}"
            time.sleep(0.1)

    def _leftovers(self, api_version: str, kind: str) -> list[dict[str, Any]]:
        try:
            items = self.client.list(api_version, kind, self.namespace)
        except kube.KubeError:
            return []
        return [i for i in items if (kind, i["metadata"]["name"]) not in KEPT
                and not i["metadata"]["name"].startswith("kube-")]


@pytest.fixture()
def cluster(control_plane: ControlPlane, operator_rbac: ChartRBAC) -> Iterator[ClusterAPI]:
    api_ = ClusterAPI(control_plane, operator_kubeconfig=operator_rbac.kubeconfig)
    try:
        yield api_
    finally:
        api_.clean_up()
        api_.close()


@contextlib.contextmanager
def without_crd(plane: ControlPlane, crd_name: str, timeout: float = 60.0) -> Iterator[None]:
    """A cluster that does not serve one of our CRDs (Istio or Gateway API not installed), then reinstalled."""
    client = kube.Client.from_kubeconfig(plane.kubeconfig)
    try:
        client.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd_name)
        deadline = time.monotonic() + timeout
        while client.find("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd_name) is not None:
            assert time.monotonic() < deadline, f"CRD {crd_name} not deleted within {timeout}s"
            time.sleep(0.1)
        yield
    finally:
        install_crds(client)
        client.close()


@pytest.fixture(name="kube_api")
def cluster_as_kube_api(cluster: ClusterAPI) -> ClusterAPI:
    """Import into a test module to run its `kube_api` tests against the real control plane."""
    return cluster


@pytest.fixture(name="client")
def cluster_client(cluster: ClusterAPI) -> kube.Client:
    """Import with `cluster_as_kube_api`: the operator's own client, pointed at the real server."""
    return cluster.client


RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ClusterKopfPeering",
              "KopfPeering")


class ChartRBAC:
    """The chart's ServiceAccount, RBAC and peering objects, installed as `helm install` would create them.

    `kubeconfig` authenticates as that ServiceAccount: an operator started with it is held to exactly
    what the chart grants, by the real RBAC authorizer. `uninstall()` deletes what was installed.
    """

    def __init__(self, plane: ControlPlane, workdir: Path, scope: str = "cluster",
                 namespaces: list[str] | None = None, release: str = "rollouts",
                 without: tuple[str, str, str] | None = None) -> None:
        """`without`: one (apiGroup, resource, verb) the chart grants, taken out of every role."""
        from tests.support import helm_chart

        values: dict[str, Any] = {"rbac": {"scope": scope}}
        if namespaces:
            values["rbac"]["namespaces"] = namespaces
        self.plane = plane
        self.objects = [o for o in helm_chart.render(values, release=release) if o["kind"] in RBAC_KINDS
                        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "training"]
        if without is not None:
            roles = [o for o in self.objects if o["kind"] in ("ClusterRole", "Role")]
            assert any(without in helm_chart.rules_of(r) for r in roles), f"the chart never grants {without}"
            for role in roles:
                role["rules"] = [{"apiGroups": [g], "resources": [r], "verbs": [v]}
                                 for g, r, v in sorted(helm_chart.rules_of(role) - {without})]
        (account,) = [o for o in self.objects if o["kind"] == "ServiceAccount"]
        self.namespace, self.account = account["metadata"]["namespace"], account["metadata"]["name"]
        self.user = f"system:serviceaccount:{self.namespace}:{self.account}"
        client = kube.Client.from_kubeconfig(plane.kubeconfig)
        try:
            client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
            for obj in self.objects:
                client.apply(obj)
        finally:
            client.close()
        self.kubeconfig = service_account_kubeconfig(plane, self.namespace, self.account,
                                                     workdir / f"{release}-{scope}.kubeconfig")

    def uninstall(self) -> None:
        client = kube.Client.from_kubeconfig(self.plane.kubeconfig)
        try:
            for obj in reversed(self.objects):
                meta = obj["metadata"]
                client.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        finally:
            client.close()


def service_account_kubeconfig(plane: ControlPlane, namespace: str, name: str, path: Path,
                               expiration_s: int = 3600) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `namespace/name` (a TokenRequest token)."""
    client = kube.Client.from_kubeconfig(plane.kubeconfig)
    try:
        import kubernetes

        core = kubernetes.client.CoreV1Api(client.api_client)
        request = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_s))
        token = core.create_namespaced_service_account_token(name, namespace, request).status.token
    finally:
        client.close()
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"] = [{"name": "service-account", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "service-account"
    path.write_text(yaml.safe_dump(config))
    os.chmod(path, 0o600)
    return path
