"""The chart's RBAC is exactly what the operator uses: no wildcards, nothing missing, nothing extra.

The real operator process (`policy-rollouts operator --peering ...`, as the chart runs it) is
driven against the emulator through a rollout that is created, progresses and is promoted, one
that is rolled back by a failing guardrail, drift of a Service it owns (which it repairs) and
the deletion of both (kopf's finalizer and our cleanup). The emulator records every resource
request; the test's own requests carry their own user agent and are left out. What remains,
as (apiGroup, resource[/subresource], verb), must equal the rules the chart grants the
operator's ServiceAccount, in both RBAC scopes:

- cluster: the ClusterRole bound cluster-wide equals all calls;
- namespace: the ClusterRole equals the cluster-scoped calls (kopf lists namespaces and CRDs
  even then), and the Role in the watched namespace equals the calls made in it.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from rollout_operator import api
from rollout_operator.cluster.control_plane import ControlPlane
from rollout_operator.resources import routing

from tests.support import helm_chart as hc
from tests.support.jobs import finish_job, jobs_of
from tests.support.kube import ApiCall, wait_for
from tests.support.operator_run import OperatorRun, rollout_manifest
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WATCHED = "default"
SCOPES = {"cluster": None, "namespace": [WATCHED]}


# Every traffic provider is exercised: (name, provider, guardrail query, final phase).
PROVIDER_ROLLOUTS = [("routed", "router", "vector(1)", "RolledBack"), ("meshed", "istio", "vector(0)", "Promoted")]


def _exercise(run: OperatorRun, prometheus_url: str) -> None:
    run.client.create(rollout_manifest("healthy", "vector(0)", [{"setWeight": 50}, {"setWeight": 100}], prometheus_url))
    run.client.create(rollout_manifest("breaching", "vector(1)", [{"setWeight": 20}, {"pause": {}}], prometheus_url))
    for name, provider, query, final in PROVIDER_ROLLOUTS:
        steps = [{"setWeight": 50}, {"setWeight": 100}] if final == "Promoted" else [{"setWeight": 20}, {"pause": {}}]
        manifest = rollout_manifest(name, query, steps, prometheus_url)
        manifest["spec"]["traffic"]["provider"] = provider
        if provider == "istio":
            manifest["spec"]["traffic"]["hosts"] = [f"{name}.{WATCHED}.svc.cluster.local"]
        run.client.create(manifest)
    # An offline gate: its Job is created (batch jobs) and its result read back from its Pod (pods).
    run.client.create(rollout_manifest("gated", "vector(0)", [{"setWeight": 100}], prometheus_url,
                                       offlineEvaluation={"dataset": "s3://logs/gated", "estimators": ["dr"]}))
    [job] = wait_for(lambda: jobs_of(run.kube_api, "gated", "ope"), 60, what="the offline evaluation Job")
    finish_job(run.kube_api, job, 0, json.dumps({"verdict": "pass", "reason": "rbac run", "estimates": [
        {"estimator": "dr", "value": 1.0, "lowerBound": 0.9, "verdict": "pass"}]}))
    # A reward key of the user's (spec.rewardKeySecret): checked (get), never created.
    run.kube_api.put("secrets", {"metadata": {"name": "own-reward-key", "namespace": WATCHED,
                                              "labels": {api.LABEL_REWARD_KEY: "true"}},
                                 "stringData": {"key": "k" * 43}})
    run.client.create(rollout_manifest("keyed", "vector(0)", [{"setWeight": 50}, {"setWeight": 100}], prometheus_url,
                                       rewardKeySecret={"name": "own-reward-key"}))
    run.wait_phase("keyed", "Promoted", timeout=120)
    run.wait_phase("healthy", "Promoted", timeout=120)
    run.wait_phase("breaching", "RolledBack", timeout=120)
    run.wait_phase("gated", "Promoted")
    for name, _, _, final in PROVIDER_ROLLOUTS:
        run.wait_phase(name, final, timeout=120)
    # Someone widens the router's Role: the operator must narrow it again (a patch).
    router_role = copy.deepcopy(run.kube_api.get("roles", WATCHED, routing.router_name(_named("routed"))))
    granted_rules = router_role["rules"]
    router_role["rules"] = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]
    run.kube_api.put("roles", router_role)
    # ... and binds it to another subject: the binding is restored too.
    binding = copy.deepcopy(run.kube_api.get("rolebindings", WATCHED, router_role["metadata"]["name"]))
    subjects = binding["subjects"]
    binding["subjects"] = [{"kind": "ServiceAccount", "name": "intruder", "namespace": WATCHED}]
    run.kube_api.put("rolebindings", binding)
    wait_for(lambda: run.kube_api.get("roles", WATCHED, router_role["metadata"]["name"])["rules"] == granted_rules
             and run.kube_api.get("rolebindings", WATCHED, binding["metadata"]["name"])["subjects"] == subjects,
             60, what="the operator to restore the router's Role and RoleBinding")
    # Someone edits a Service the operator owns: it must put it back (a patch).
    service = copy.deepcopy(run.kube_api.get("services", WATCHED, "healthy-stable"))
    wanted = service["spec"]["selector"]
    service["spec"]["selector"] = {key: "hijacked" for key in wanted}
    run.kube_api.put("services", service)
    wait_for(lambda: run.kube_api.get("services", WATCHED, "healthy-stable")["spec"]["selector"] == wanted, 30,
             what="the operator to repair the Service")
    everything = ["healthy", "breaching", "gated", "keyed", *(name for name, *_ in PROVIDER_ROLLOUTS)]
    for name in everything:
        run.client.delete(name, WATCHED)
    for name in everything:
        run.wait_gone(name)
    assert run.kube_api.get("httproutes", WATCHED, "healthy") is None, "the finalizer removes the HTTPRoute"


@pytest.fixture(scope="module", params=sorted(SCOPES))
def recorded(request: pytest.FixtureRequest, control_plane: ControlPlane, prometheus: PrometheusServer,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[ApiCall]]:
    scope = request.param
    workdir: Path = tmp_path_factory.mktemp(f"rbac-{scope}")
    with OperatorRun(control_plane, workdir, prometheus.url, namespaces=SCOPES[scope]) as run:
        _exercise(run, prometheus.url)
        run.wait_log("Handler 'finalize' succeeded")
    calls = run.operator_calls()
    assert calls, "no API call was recorded"
    return scope, calls


def _named(name: str) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(rollout_manifest(name, "vector(0)", [{"setWeight": 100}], "http://p"))


def _delegated() -> set[hc.Triple]:
    """What the operator grants to Roles it creates (the router's): it must hold those rules itself,
    or the API server refuses the Role. Computed from the builder, so a wider router Role shows up here."""
    return hc.rules_of(routing.role(_named("any")))


def _triple(call: ApiCall) -> hc.Triple:
    resource = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
    return (call.group, resource, call.verb)


def _rendered_rbac(scope: str) -> list[tuple[dict[str, Any], str | None]]:
    values: dict[str, Any] = {"rbac": {"scope": scope}}
    if scope == "namespace":
        values["rbac"]["namespaces"] = [WATCHED]
    objects = hc.render(values)
    (sa,) = [o for o in hc.of_kind(objects, "ServiceAccount")
             if o["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]
    return hc.bound_roles(objects, sa["metadata"]["name"], sa["metadata"]["namespace"])


def test_no_wildcards_anywhere() -> None:
    for scope in SCOPES:
        for role, _ in _rendered_rbac(scope):
            for rule in role["rules"]:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[key], f"{scope}: wildcard in {role['kind']} {rule}"
                assert not rule.get("resourceNames") or "*" not in rule["resourceNames"]
                assert "nonResourceURLs" not in rule


def test_rbac_equals_the_calls_the_operator_made(recorded: tuple[str, list[ApiCall]]) -> None:
    scope, calls = recorded
    bound = _rendered_rbac(scope)
    if scope == "cluster":
        ((role, where),) = bound
        assert role["kind"] == "ClusterRole" and where is None
        granted = hc.rules_of(role)
        used = {_triple(c) for c in calls} | _delegated()
        assert granted - used == set(), f"granted but never used: {sorted(granted - used)}"
        assert used - granted == set(), f"used but not granted (403 in a cluster): {sorted(used - granted)}"
    else:
        cluster = [r for r, where in bound if where is None]
        namespaced = [r for r, where in bound if where == WATCHED]
        assert len(cluster) == 1 and cluster[0]["kind"] == "ClusterRole"
        assert len(namespaced) == 1 and namespaced[0]["kind"] == "Role"
        assert {where for _, where in bound} == {None, WATCHED}, "nothing bound in namespaces not watched"
        used_cluster = {_triple(c) for c in calls if c.namespace is None}
        used_namespaced = {_triple(c) for c in calls if c.namespace == WATCHED} | _delegated()
        assert {c.namespace for c in calls} <= {None, WATCHED}, "the operator stepped outside its namespace"
        assert hc.rules_of(cluster[0]) == used_cluster
        assert hc.rules_of(namespaced[0]) == used_namespaced


def test_the_recorded_run_exercised_every_kind_of_call(recorded: tuple[str, list[ApiCall]]) -> None:
    """Guard the guard: a run that silently did less would let missing rules pass."""
    _, calls = recorded
    used = {_triple(c) for c in calls}
    for needed in [(api.GROUP, f"{api.PLURAL}/status", "patch"),  # status writes
                   (api.GROUP, api.PLURAL, "patch"),  # kopf's finalizer
                   ("", "events", "create"),
                   ("", "services", "patch"),  # drift repaired
                   ("apps", "deployments", "patch"),  # promotion re-points stable
                   ("gateway.networking.k8s.io", "httproutes", "delete"),  # finalizer cleanup
                   ("networking.istio.io", "virtualservices", "patch"),  # istio weights
                   ("", "configmaps", "patch"),  # router weights
                   ("rbac.authorization.k8s.io", "roles", "patch"),  # router Role restored
                   ("rbac.authorization.k8s.io", "rolebindings", "patch"),  # and its binding
                   ("rbac.authorization.k8s.io", "rolebindings", "delete"),  # router cleanup
                   ("batch", "jobs", "create"), ("", "pods", "list"),  # offline evaluation Job and its result
                   ("", "secrets", "create"), ("", "secrets", "get"),  # our reward keys; a user's checked
                   ("kopf.dev", "clusterkopfpeerings" if any(c.resource == "clusterkopfpeerings" for c in calls)
                    else "kopfpeerings", "patch")]:  # peering keep-alive
        assert needed in used, f"the run never made {needed}"


# Take one rule out of the chart's ClusterRole and the real RBAC authorizer refuses the call it
# covered: what a user would see then. (The equality test above shows every rule is used; these
# show, end to end, what breaks without one.)
WITHOUT_ONE_RULE = [
    # No status writes: the rollout never shows a phase at all.
    ((api.GROUP, f"{api.PLURAL}/status", "patch"), [{"setWeight": 50}, {"setWeight": 100}], None,
     lambda status: not status.get("phase")),
    # No HTTPRoutes: the candidate never gets traffic; the rollout is stuck before its first weight.
    (("gateway.networking.k8s.io", "httproutes", "create"), [{"setWeight": 50}, {"setWeight": 100}], None,
     lambda status: status.get("phase") != "Promoted" and not status.get("canaryWeight")),
    # No Jobs: the offline gate cannot run and the candidate gets no traffic.
    (("batch", "jobs", "create"), [{"setWeight": 100}], {"dataset": "s3://logs/gated", "estimators": ["dr"]},
     lambda status: status.get("phase") in (None, "Pending", "OfflineEvaluation", "Failed")
     and not status.get("canaryWeight")),
]


@pytest.mark.parametrize(("rule", "steps", "gate", "stuck"), WITHOUT_ONE_RULE,
                         ids=["/".join(r[0][1:]) for r in WITHOUT_ONE_RULE])
def test_without_one_rule_the_scenario_fails_with_forbidden(
    rule: hc.Triple, steps: list[dict[str, Any]], gate: dict[str, Any] | None, stuck: Any,
    control_plane: ControlPlane, prometheus: PrometheusServer, tmp_path: Path,
) -> None:
    release = "minus-" + rule[1].replace("/", "-")
    with OperatorRun(control_plane, tmp_path, prometheus.url, release=release, without=rule) as run:
        spec = {"offlineEvaluation": gate} if gate else {}
        run.client.create(rollout_manifest("starved", "vector(0)", steps, prometheus.url, **spec))
        assert run.operator is not None
        _, resource, verb = rule
        plural = resource.split("/")[0]
        # The API server refuses the call the rule covered (its audit log has the 403)...
        denied = wait_for(lambda: [c for c in run.kube_api.calls if c.user == run.user and c.resource == plural
                                   and c.verb == verb and c.status == 403], 60,
                          what=f"the API server to refuse {rule}")
        assert denied
        # ... and the operator says so in its log.
        wait_for(lambda: "403" in run.operator.log_path.read_text(errors="replace"), 30,  # type: ignore[union-attr]
                 what="the 403 in the operator log")
        time.sleep(3)  # the rollout had time to go on, and did not
        status = run.status("starved")
        assert stuck(status), f"without {rule} the rollout still got to {status}"
