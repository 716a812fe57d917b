"""Chaos, bounded: the faults a production cluster sees, injected at seeded random points of real rollouts.

A private control plane (this module restarts its etcd and kube-apiserver, so it cannot share the
session's), a real Prometheus scraping an exporter, and the operator as a process with the chart's
RBAC. Each run rolls one PolicyRollout through three analysed canary steps while faults strike:

- the operator SIGKILLed ten times at seeded random moments (and restarted, as its Deployment would);
- kube-apiserver SIGKILLed and restarted mid-rollout; etcd SIGKILLed and restarted mid-rollout;
- Prometheus restarted mid-rollout.

After each run the invariants a user relies on are checked: no duplicate objects, the candidate's
weight never goes backwards except on rollback, the same end phase as an undisturbed run of the same
manifest, and never Promoted without a passed analysis at every live step. (A policy pod SIGKILLed
under load is the data plane's fault: tests/policy_server/test_durability.py kills a server under
load and checks every acknowledged decision against the write-ahead log's contract.)
"""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rollout_operator import api, kube
from rollout_operator.cluster.control_plane import ControlPlane
from rollout_operator.resources import httproute

from tests.support.cluster import ChartRBAC, ClusterAPI, running_control_plane
from tests.support.kube import policy_rollout_manifest
from tests.support.operator_process import OperatorProcess, poll
from tests.support.prometheus import Exporter, PrometheusServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20261206
NAMESPACE = "default"
METRIC = "chaos_error_ratio"
QUERY = f'max({METRIC}{{rollout="{{{{ rollout }}}}",namespace="{{{{ namespace }}}}"}})'
HEALTHY, BROKEN = 0.01, 0.5
LIVE_WEIGHTS = (20, 50, 80)
STEPS = [step for weight in LIVE_WEIGHTS for step in ({"setWeight": weight}, {"pause": {"duration": "3s"}})]
RUN_TIMEOUT_S = 150.0
_names = (f"chaos-{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path_factory.mktemp("chaos-plane")) as control_plane:
        yield control_plane


@pytest.fixture(scope="module")
def rbac(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> ChartRBAC:
    """The chart's ServiceAccount and RBAC: every operator here runs as it, held to it by the real authorizer."""
    return ChartRBAC(plane, tmp_path_factory.mktemp("chaos-rbac"))


@pytest.fixture(scope="module")
def metrics(exporter: Exporter, prometheus: PrometheusServer) -> tuple[Exporter, PrometheusServer]:
    return exporter, prometheus


class Trace:
    """What an observer saw, sampled every 0.2 s from outside the operator: (phase, route weight)."""

    def __init__(self) -> None:
        self.samples: list[tuple[str, int]] = []
        self.read_errors = 0


class ChaosRun:
    """One rollout under faults; `faults` are (seconds after creation, action) pairs, run in order."""

    def __init__(self, kube_api: ClusterAPI, operator: OperatorProcess, exporter: Exporter,
                 prometheus: PrometheusServer, *, breaks_at: int | None) -> None:
        self.kube_api, self.operator, self.exporter, self.prometheus = kube_api, operator, exporter, prometheus
        self.name = next(_names)
        self.breaks_at = breaks_at  # the candidate's metric turns bad at this weight (a rollback scenario)
        self.trace = Trace()
        self.client = kube_api.client
        self._done = threading.Event()

    def _weight(self) -> int | None:
        route = self.client.find("gateway.networking.k8s.io/v1", "HTTPRoute", self.name, NAMESPACE)
        body = self.client.find(api.API_VERSION, api.KIND, self.name, NAMESPACE)
        if route is None or body is None:
            return None
        weights = httproute.weights_of(route, api.PolicyRollout.model_validate(body))
        return None if weights is None else weights.candidate

    def status(self) -> dict[str, Any]:
        body = self.client.find(api.API_VERSION, api.KIND, self.name, NAMESPACE)
        return (body or {}).get("status") or {}

    def _observe(self) -> None:
        while not self._done.wait(0.2):
            try:
                weight = self._weight()  # before status: a weight is never newer than the phase beside it
                status = self.status()
            except (kube.KubeError, OSError):
                self.trace.read_errors += 1  # the API server is down right now: that is the point
                continue
            if weight is None:
                continue
            promoting = status.get("currentStepIndex", 0) >= len(STEPS)
            self.trace.samples.append(("Promoting" if promoting else status.get("phase", ""), weight))
            if self.breaks_at is not None and weight >= self.breaks_at:
                self.exporter.set(METRIC, BROKEN, rollout=self.name, namespace=NAMESPACE)

    def execute(self, faults: list[tuple[float, Callable[[], None]]]) -> dict[str, Any]:
        """Create the rollout, strike each fault at its time, and return the final status."""
        self.exporter.set(METRIC, HEALTHY, rollout=self.name, namespace=NAMESPACE)
        self.prometheus.wait_for(f'{METRIC}{{rollout="{self.name}"}}', lambda v: v == HEALTHY, timeout=30)
        manifest = policy_rollout_manifest(
            name=self.name, namespace=NAMESPACE, steps=STEPS,
            analysis={"interval": "1s", "guardrails": [{
                "name": "error-rate", "query": QUERY, "condition": "< 0.05",
                "failureLimit": 2, "inconclusiveLimit": 8}]},
        )
        self.client.create(manifest)
        observer = threading.Thread(target=self._observe, daemon=True)
        observer.start()
        started = time.monotonic()
        try:
            for at, strike in sorted(faults, key=lambda fault: fault[0]):
                time.sleep(max(0.0, started + at - time.monotonic()))
                strike()
            return poll(self._finished, RUN_TIMEOUT_S, interval=0.5, what=f"{self.name} to finish",
                        on_timeout=lambda: f"{self.status()}\n{self.operator.log_tail()}")
        finally:
            self._done.set()
            observer.join(5)

    def _finished(self) -> dict[str, Any] | None:
        with contextlib.suppress(kube.KubeError, OSError):
            status = self.status()
            if status.get("phase") in ("Promoted", "RolledBack", "Failed", "Aborted"):
                return status
        return None

    # ---- the invariants

    def check_invariants(self, status: dict[str, Any], expected_phase: str) -> int:
        """Assert every invariant; return how many were checked."""
        assert status["phase"] == expected_phase, f"{status.get('phase')}: {status.get('message')}"
        self._no_duplicate_objects()
        self._never_backwards()
        if expected_phase == "Promoted":
            self._analysed_every_live_step()
        return 4

    def _no_duplicate_objects(self) -> None:
        mine = {"policy.rollouts.io/rollout": self.name}
        for plural, expected in (("deployments", {f"{self.name}-candidate", f"{self.name}-stable"}),
                                 ("httproutes", {self.name})):
            names = [o["metadata"]["name"] for o in self.kube_api.objects(plural, NAMESPACE)
                     if o["metadata"]["name"].startswith(self.name)
                     and (plural == "httproutes" or mine.items() <= o["metadata"].get("labels", {}).items())]
            assert sorted(names) == sorted(expected), f"{plural}: {names}"
        services = [s["metadata"]["name"] for s in self.kube_api.objects("services", NAMESPACE)
                    if s["metadata"]["name"].startswith(f"{self.name}-")]
        assert len(services) == len(set(services)) and len(services) >= 2, services

    def _never_backwards(self) -> None:
        ending = ("Promoting", "Promoted", "RollingBack", "RolledBack", "Aborted")
        live = [weight for phase, weight in self.trace.samples if phase not in ending]
        # Both endings move traffic before the status says so: promotion hands it all to the stable variant
        # (now running the candidate's version), and a rollback lowers the weight first of all
        # (reconciler.apply), so a sample taken in between, or an operator killed there, shows the old phase
        # beside weight 0. Only that final drop to 0 is allowed; any earlier step back is still caught.
        while live and live[-1] == 0 and any(w > 0 for w in live):
            live.pop()
        assert live, "the observer saw no live weight: the run proves nothing"
        assert live == sorted(live), f"weight went backwards outside a rollback: {live}"

    def _analysed_every_live_step(self) -> None:
        events = [e for e in self.kube_api.objects("events", NAMESPACE)
                  if e.get("involvedObject", {}).get("name") == self.name and e.get("reason") == "AnalysisPassed"]
        analysed = {weight for weight in LIVE_WEIGHTS
                    if any(f"at weight {weight}" in e.get("message", "") for e in events)}
        assert analysed == set(LIVE_WEIGHTS), f"promoted with analyses passed only at {sorted(analysed)}"


@contextlib.contextmanager
def _operator(plane: ControlPlane, rbac: ChartRBAC, prometheus: PrometheusServer,
              workdir: Path) -> Iterator[tuple[ClusterAPI, OperatorProcess]]:
    """A standalone operator as the chart's ServiceAccount; the namespace is emptied afterwards."""
    kube_api = ClusterAPI(plane, NAMESPACE, rbac.kubeconfig)
    operator = OperatorProcess(rbac.kubeconfig, prometheus.url, workdir / "operator.log").start()
    try:
        yield kube_api, operator
    finally:
        operator.stop()
        kube_api.clean_up()
        kube_api.close()


@pytest.fixture()
def chaos(plane: ControlPlane, rbac: ChartRBAC, metrics: tuple[Exporter, PrometheusServer],
          tmp_path: Path) -> Iterator[Callable[..., ChaosRun]]:
    exporter, prometheus = metrics
    with _operator(plane, rbac, prometheus, tmp_path) as (kube_api, operator):
        yield lambda **kwargs: ChaosRun(kube_api, operator, exporter, prometheus, **kwargs)


@pytest.fixture(scope="module")
def undisturbed(plane: ControlPlane, rbac: ChartRBAC, metrics: tuple[Exporter, PrometheusServer],
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """End phase of each scenario with no fault: what every disturbed run must reach too."""
    exporter, prometheus = metrics
    phases = {}
    for scenario, breaks_at in (("healthy", None), ("breaks", 50)):
        workdir = tmp_path_factory.mktemp(f"undisturbed-{scenario}")
        with _operator(plane, rbac, prometheus, workdir) as (kube_api, operator):
            chaos_run = ChaosRun(kube_api, operator, exporter, prometheus, breaks_at=breaks_at)
            status = chaos_run.execute([])
            chaos_run.check_invariants(status, status["phase"])
            phases[scenario] = status["phase"]
    assert phases == {"healthy": "Promoted", "breaks": "RolledBack"}
    return phases


def _operator_kills(run: ChaosRun, rng: random.Random, count: int, within: float) -> list[tuple[float, Any]]:
    """`count` SIGKILLs at seeded random moments, each followed by a restart after 0.2-1.5 s."""

    def kill_and_restart(down: float) -> Callable[[], None]:
        def strike() -> None:
            run.operator.kill()
            time.sleep(down)
            run.operator.start()

        return strike

    moments = sorted(rng.uniform(0.5, within) for _ in range(count))
    return [(at, kill_and_restart(rng.uniform(0.2, 1.5))) for at in moments]


@pytest.mark.parametrize("scenario", ["healthy", "breaks"])
def test_ten_operator_sigkills_change_nothing_a_user_sees(
    chaos: Callable[..., ChaosRun], undisturbed: dict[str, str], scenario: str
) -> None:
    rng = random.Random(f"{SEED}-{scenario}")
    run = chaos(breaks_at=None if scenario == "healthy" else 50)
    faults = _operator_kills(run, rng, count=10, within=25.0)
    status = run.execute(faults)
    assert run.operator.starts == 11
    run.check_invariants(status, undisturbed[scenario])


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_control_plane_component_crashing_mid_rollout(
    chaos: Callable[..., ChaosRun], undisturbed: dict[str, str], plane: ControlPlane, component: str
) -> None:
    rng = random.Random(f"{SEED}-{component}")
    run = chaos(breaks_at=None)
    writes_refused = []

    def try_a_write() -> None:  # reads may be served from the API server's cache; a write needs etcd
        created = plane.kubectl("--request-timeout=1s", "create", "configmap", f"probe-{run.name}", "-n", NAMESPACE)
        writes_refused.append(created.returncode != 0)

    at = rng.uniform(4.0, 10.0)
    status = run.execute([(at, lambda: plane.restart(component, down_seconds=2.0, while_down=try_a_write))])
    run.check_invariants(status, undisturbed["healthy"])
    assert writes_refused == [True], f"a write succeeded while {component} was down: the fault did not land"


def test_prometheus_restarting_mid_rollout(
    chaos: Callable[..., ChaosRun], undisturbed: dict[str, str], metrics: tuple[Exporter, PrometheusServer]
) -> None:
    _, prometheus = metrics
    rng = random.Random(f"{SEED}-prometheus")

    def restart() -> None:
        prometheus.stop()
        time.sleep(2.0)
        prometheus.start()

    run = chaos(breaks_at=None)
    status = run.execute([(rng.uniform(4.0, 10.0), restart)])
    run.check_invariants(status, undisturbed["healthy"])
