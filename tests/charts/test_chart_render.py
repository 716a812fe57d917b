"""The Helm chart: lints and renders with Helm's own engine, every object passes its schema, pods are hardened.

Schemas: built-in kinds with `kubernetes-validate --strict` (the CLI, on the rendered files);
ServiceMonitor/PrometheusRule with the prometheus-operator models (cloudcoil), strictly: an
object must survive a round trip unchanged, so an unknown or misspelt field fails; kopf's
peering objects with the chart's own CRDs. Alerts are checked by `promtool check rules`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring
from rollout_operator import api, metrics

from tests.support import crd_validation, requirements
from tests.support import helm_chart as hc

KUBE_VERSIONS = ("1.30.0", "1.37.0")
ALL_ON = {
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "notifications": {"urls": ["https://hooks.example.com/a", "https://hooks.example.com/b"], "format": "slack"},
}
VALUE_SETS = {
    "defaults": {},
    "everything-on": ALL_ON,
    "namespace-scope": {"rbac": {"scope": "namespace", "namespaces": ["team-a", "team-b"]}, **ALL_ON},
    "namespace-scope-default": {"rbac": {"scope": "namespace"}},
    "single-replica-no-peering": {"replicaCount": 1, "peering": {"enabled": False}, "podDisruptionBudget":
                                  {"enabled": True}, "grafanaDashboard": {"enabled": False},
                                  "metrics": {"service": {"enabled": False}}},
    "existing-secret": {"notifications": {"existingSecret": "my-webhooks", "secretKey": "hooks"}},
}
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "KopfPeering", "ClusterKopfPeering"}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, hc.render(VALUE_SETS[request.param])


def test_chart_lints_clean_with_helm() -> None:
    for name, values in VALUE_SETS.items():
        report = helm_python.lint(hc.CHART, values, strict=True, namespace=hc.NAMESPACE, kube_version="v1.30.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], f"{name}: {report}"


def test_every_builtin_object_passes_kubernetes_validate_strict(rendered: tuple[str, list[dict[str, Any]]],
                                                                  tmp_path: Path) -> None:
    name, objects = rendered
    builtin = [o for o in objects if o["kind"] not in CUSTOM_KINDS]
    files = []
    for i, obj in enumerate(builtin):
        path = tmp_path / f"{i:02d}-{obj['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(obj))
        files.append(str(path))
    cli = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert cli, "kubernetes-validate is not installed: pip install -e '.[dev]'"
    for version in KUBE_VERSIONS:
        result = subprocess.run([cli, "--strict", "--quiet", "-k", version, *files], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, f"{name} on {version}:\n{result.stdout}\n{result.stderr}"
    kinds = {o["kind"] for o in builtin}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount"} <= kinds


def test_a_misspelt_field_is_caught_by_the_strict_validation(tmp_path: Path) -> None:
    """Guard the guard: strict validation must reject what a template typo would produce."""
    deployment = hc.of_kind(hc.render(), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    cli = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert cli
    result = subprocess.run([cli, "--strict", "--quiet", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "securityContxt" in result.stdout + result.stderr


def _strict_model(model: Any, obj: dict[str, Any]) -> None:
    parsed = model.model_validate(obj)
    assert parsed.model_dump(by_alias=True, exclude_none=True, mode="json") == obj, (
        f"{obj['kind']} has fields the prometheus-operator API does not know"
    )


def test_custom_objects_match_their_schemas(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    crds = {o["spec"]["names"]["kind"]: o for o in hc.of_kind(objects, "CustomResourceDefinition")}
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            _strict_model(monitoring.ServiceMonitor, obj)
        elif obj["kind"] == "PrometheusRule":
            _strict_model(monitoring.PrometheusRule, obj)
        elif obj["kind"] in ("KopfPeering", "ClusterKopfPeering"):
            crd = crds[obj["kind"]]
            assert obj["apiVersion"] == f"{crd['spec']['group']}/v1"
            assert ("namespace" in obj["metadata"]) == (crd["spec"]["scope"] == "Namespaced")
            schema = crd_validation.version_schema(crd, "v1")
            jsonschema.validate({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, schema)


def test_chart_crd_is_the_generated_one() -> None:
    crd_files = {c["name"]: c["data"] for c in hc.chart().crds}
    generated = (hc.REPO_ROOT / "crds" / "policyrollout.yaml").read_text()
    assert crd_files["crds/policyrollout.yaml"] == generated, "charts/policy-rollouts/crds/ is out of date"
    crd = yaml.safe_load(generated)
    assert crd["spec"]["names"]["plural"] == api.PLURAL and crd["spec"]["group"] == api.GROUP


def _pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = hc.of_kind(objects, "Deployment")
    return deployment["spec"]["template"]["spec"]


def test_pods_are_hardened(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    pod = _pod_spec(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert sc.get("privileged") is False
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["path"] == "/healthz"
        # A read-only root needs a writable /tmp (discovery cache, tempfiles).
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


def test_probes_point_at_ports_the_operator_serves() -> None:
    pod = _pod_spec(hc.render())
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    assert f"--metrics-port={ports['metrics']}" in args
    assert f"--liveness=http://0.0.0.0:{ports['liveness']}/healthz" in args
    assert container["livenessProbe"]["httpGet"]["port"] == "liveness"  # kopf's own health endpoint
    assert container["readinessProbe"]["httpGet"]["port"] == "metrics"
    # The args are the operator's real CLI: parse them with it.
    from rollout_operator.cli import main as cli

    parsed = cli.build_parser().parse_args(args)
    assert parsed.metrics_port == ports["metrics"] and parsed.peering
    assert parsed.metrics_host == "0.0.0.0", "the kubelet probes the pod IP; the operator's default is loopback"


def test_high_availability_two_replicas_with_peering_and_a_pdb() -> None:
    objects = hc.render()
    (deployment,) = hc.of_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    peering = next(a.split("=", 1)[1] for a in args if a.startswith("--peering="))
    (cluster_peering,) = hc.of_kind(objects, "ClusterKopfPeering")
    assert cluster_peering["metadata"]["name"] == peering
    (pdb,) = hc.of_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_namespace_scope_watches_only_its_namespaces() -> None:
    objects = hc.render(VALUE_SETS["namespace-scope"])
    args = _pod_spec(objects)["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace=")] == ["--namespace=team-a", "--namespace=team-b"]
    assert sorted(p["metadata"]["namespace"] for p in hc.of_kind(objects, "KopfPeering")) == ["team-a", "team-b"]
    assert sorted(r["metadata"]["namespace"] for r in hc.of_kind(objects, "Role")) == ["team-a", "team-b"]
    assert not hc.of_kind(objects, "ClusterKopfPeering")
    default_ns = hc.render(VALUE_SETS["namespace-scope-default"])
    assert [r["metadata"]["namespace"] for r in hc.of_kind(default_ns, "Role")] == [hc.NAMESPACE]


def test_bad_values_are_refused_with_the_field_named() -> None:
    cases = {
        "/rbac/scope": {"rbac": {"scope": "everywhere"}},
        "/securityContext/readOnlyRootFilesystem": {"securityContext": {"readOnlyRootFilesystem": False}},
        "/notifications/format": {"notifications": {"format": "teams"}},
        "/operator/prometheusUrl": {"operator": {"prometheusUrl": "prometheus:9090"}},
        "/operator/allowedPrometheusUrls/0": {"operator": {"allowedPrometheusUrls": ["file:///etc/passwd"]}},
        "/jobs/allowedImages/0": {"jobs": {"allowedImages": [""]}},
        "/jobs/serviceAccount/name": {"jobs": {"serviceAccount": {"name": "Not An Account"}}},
    }
    for field, values in cases.items():
        with pytest.raises(helm_python.HelmValuesError, match=re.escape(field)):
            hc.render(values)
    with pytest.raises(helm_python.HelmRenderError, match=r"peering\.enabled"):
        hc.render({"replicaCount": 2, "peering": {"enabled": False}})


def test_global_notifications_reach_the_operator_from_a_secret() -> None:
    objects = hc.render(ALL_ON)
    (secret,) = hc.of_kind(objects, "Secret")
    container = _pod_spec(objects)["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    ref = env["POLICY_ROLLOUTS_NOTIFY_URLS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert secret["stringData"][ref["key"]] == "https://hooks.example.com/a,https://hooks.example.com/b"
    assert "--notify-format=slack" in container["args"]
    existing = hc.render(VALUE_SETS["existing-secret"])
    assert not hc.of_kind(existing, "Secret")
    ref = {e["name"]: e for e in _pod_spec(existing)["containers"][0]["env"]}["POLICY_ROLLOUTS_NOTIFY_URLS"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "my-webhooks", "key": "hooks"}
    assert "POLICY_ROLLOUTS_NOTIFY_URLS" not in {e["name"] for e in _pod_spec(hc.render())["containers"][0]["env"]}


def test_optional_monitoring_objects_are_off_by_default() -> None:
    kinds = {o["kind"] for o in hc.render()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    (monitor,) = hc.of_kind(hc.render(ALL_ON), "ServiceMonitor")
    (service,) = [s for s in hc.of_kind(hc.render(ALL_ON), "Service") if s["metadata"]["name"].endswith("-metrics")]
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


# ------------------------------------------------------------------ dashboard and alerts

def _operator_metric_names() -> set[str]:
    """Sample names the operator exposes (counters as _total, histograms as _bucket/_sum/_count)."""
    registry = metrics.OperatorMetrics().registry
    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def _metric_names_in(promql: str) -> set[str]:
    return set(re.findall(r"\b(policyrollouts_[a-z_]+)", promql))


def test_grafana_dashboard_is_real_and_uses_only_exposed_metrics() -> None:
    (configmap,) = [c for c in hc.of_kind(hc.render(), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = configmap["data"].values()
    dashboard = json.loads(text)
    assert dashboard["uid"] and dashboard["panels"]
    exposed = _operator_metric_names()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = _metric_names_in(target["expr"])
            assert names, f"panel {panel['title']!r} queries no operator metric"
            assert names <= exposed, f"panel {panel['title']!r} uses unknown metrics {names - exposed}"
            used |= names
    wanted = {"policyrollouts_phase", "policyrollouts_canary_weight_percent", "policyrollouts_rollbacks_total",
              "policyrollouts_guardrail_evaluations_total", "policyrollouts_reconcile_duration_seconds_bucket",
              "policyrollouts_workqueue_wait_seconds_bucket", "policyrollouts_workqueue_depth",
              "policyrollouts_reconciles_total", "policyrollouts_api_requests_total"}
    assert wanted <= used, f"the dashboard misses {wanted - used}"


def _rule_groups() -> dict[str, Any]:
    (rule,) = hc.of_kind(hc.render(ALL_ON), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def test_alerts_cover_rollback_stuck_and_inconclusive_and_use_exposed_metrics() -> None:
    rules = [r for g in _rule_groups()["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules}
    assert {"PolicyRolloutRolledBack", "PolicyRolloutStuck", "PolicyRolloutInconclusiveTooLong"} <= alerts.keys()
    exposed = _operator_metric_names()
    for alert in alerts.values():
        assert _metric_names_in(alert["expr"]) <= exposed, alert["alert"]


def test_alert_rules_parse_and_fire_in_promtool(tmp_path: Path) -> None:
    """`promtool check rules` and `promtool test rules`: each alert fires on the series that should fire it."""
    promtool = requirements.binary("promtool", "apt-get install prometheus (scripts/bootstrap.sh does, as root)")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(_rule_groups()))
    check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    common = {"namespace": "shop", "name": "pricing"}
    tests = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'policyrollouts_rollbacks_total{namespace="shop",name="pricing",reason="GuardrailFailed"}',
                 "values": "0 0 1 1 1"},
                {"series": 'policyrollouts_phase{namespace="shop",name="stuck",phase="Progressing"}',
                 "values": "1x60"},
                {"series": 'policyrollouts_canary_weight_percent{namespace="shop",name="stuck"}', "values": "20x60"},
                {"series": 'policyrollouts_phase{namespace="shop",name="pricing",phase="Progressing"}',
                 "values": "1x60"},
                {"series": 'policyrollouts_canary_weight_percent{namespace="shop",name="pricing"}',
                 "values": "0+1x60"},
                {"series": 'policyrollouts_guardrails_inconclusive{namespace="shop",name="pricing"}',
                 "values": "1x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "PolicyRolloutRolledBack",
                 "exp_alerts": [{"exp_labels": {**common, "reason": "GuardrailFailed", "severity": "warning"},
                                 "exp_annotations": {
                                     "summary": "PolicyRollout shop/pricing rolled back (GuardrailFailed)",
                                     "description": "The operator rolled the candidate policy back to the "
                                     "fallback. See `kubectl describe policyrollout pricing -n shop` for the "
                                     "guardrail at fault."}}]},
                {"eval_time": "59m", "alertname": "PolicyRolloutStuck",
                 "exp_alerts": [{"exp_labels": {"namespace": "shop", "name": "stuck", "severity": "warning"},
                                 "exp_annotations": {
                                     "summary": "PolicyRollout shop/stuck has not moved for 30m",
                                     "description": "The rollout should be progressing but its traffic weight has "
                                     "not changed. Check that its Deployments become ready and its guardrails "
                                     "return data."}}]},
                {"eval_time": "5m", "alertname": "PolicyRolloutInconclusiveTooLong", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "PolicyRolloutInconclusiveTooLong",
                 "exp_alerts": [{"exp_labels": {**common, "severity": "warning"},
                                 "exp_annotations": {
                                     "summary": "PolicyRollout shop/pricing guardrails inconclusive for 10m",
                                     "description": "Guardrail queries return no data or fail (is Prometheus "
                                     "reachable? do the metrics exist?). The rollout holds its weight and rolls back "
                                     "once a guardrail's inconclusiveLimit is reached."}}]},
            ],
        }],
    }
    tests_file = tmp_path / "tests.yaml"
    tests_file.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", str(tests_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
