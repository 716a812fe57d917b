"""The generated PolicyRollout CRD: in sync with api.py, structural, and rejecting what it must.

Every bad manifest here is checked twice, against the CRD (schema + CEL, through
`tests.support.crd_validation`, since the emulator enforces neither) and against the pydantic
model, because local mode and the cluster must refuse the same objects, naming the same field.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml
from rollout_operator import api, crdgen
from rollout_operator.cli import main as cli

from tests.support import crd_validation as cv

EXAMPLES = sorted((cv.REPO_ROOT / "examples").glob("*.yaml"))
BASE = EXAMPLES[0].parent / "pricing-canary.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return cv.load_crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return cv.version_schema(crd)


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}.*")


def _rules(schema: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    return [(path, rule) for path, node in _nodes(schema) for rule in node.get("x-kubernetes-validations", [])]


# ------------------------------------------------------------------- generation


def test_committed_crd_is_what_api_generates() -> None:
    committed = cv.CRD_FILE.read_text()
    assert committed == crdgen.render(), "crds/policyrollout.yaml is stale: run `make crds`"
    assert yaml.safe_load(committed) == crdgen.build_crd()


def test_check_flags_a_stale_file_and_write_fixes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "policyrollout.yaml"
    target.write_text(crdgen.render().replace("maxItems: 64", "maxItems: 65"))
    assert crdgen.main(["--check", "--path", str(target)]) == 1
    assert "is stale: run `make crds`" in capsys.readouterr().err

    assert crdgen.main(["--write", "--path", str(target)]) == 0
    assert crdgen.main(["--check", "--path", str(target)]) == 0
    assert yaml.safe_load(target.read_text()) == crdgen.build_crd()


def test_check_reports_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--check", "--path", str(tmp_path / "absent.yaml")]) == 1
    assert "is missing: run `make crds`" in capsys.readouterr().err


def test_generation_is_deterministic() -> None:
    assert crdgen.render() == crdgen.render()


def test_cli_crds_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crds"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == crdgen.build_crd()
    assert printed["kind"] == "CustomResourceDefinition"


def test_cli_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_crd_identity(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "policyrollouts.policy.rollouts.io"
    assert spec["group"] == api.GROUP and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "PolicyRollout",
        "listKind": "PolicyRolloutList",
        "plural": "policyrollouts",
        "singular": "policyrollout",
        "shortNames": ["prl"],
        "categories": ["policy"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: (c["jsonPath"], c["type"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": (".status.phase", "string"),
        "Step": (".status.currentStepIndex", "integer"),
        "Weight": (".status.canaryWeight", "integer"),
        "Candidate": (".status.candidateVersion", "string"),
        "Stable": (".status.stableVersion", "string"),
        "Age": (".metadata.creationTimestamp", "date"),
    }


def test_printer_columns_point_at_status_fields(schema: dict[str, Any], crd: dict[str, Any]) -> None:
    status = schema["properties"]["status"]["properties"]
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        section, field = column["jsonPath"].lstrip(".").split(".")
        if section == "status":
            assert status[field]["type"] == column["type"], column


def test_crd_is_a_valid_apiextensions_object(crd: dict[str, Any]) -> None:
    # Raises (naming the offending key) if the CRD is not a valid apiextensions.k8s.io/v1 object.
    kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)


# ------------------------------------------------------------ structural schema


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in _nodes(schema):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path or '<root>'} has no type"
        for banned in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "title"):
            assert banned not in node, f"{path}: {banned} is not allowed in a structural schema"
        assert node.get("additionalProperties", {}) is not False, f"{path}: additionalProperties: false"
        assert not ("properties" in node and "additionalProperties" in node), f"{path}: properties + additional"
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), f"{path}: array without items"
    assert schema["properties"]["metadata"] == {"type": "object"}


def test_defaults_validate_against_their_own_schema(schema: dict[str, Any]) -> None:
    checked = 0
    for _path, node in _nodes(schema):
        if "default" in node:
            jsonschema.Draft4Validator(node).validate(node["default"])
            checked += 1
    assert checked >= 10


def test_fields_carry_the_model_constraints(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    step = spec["steps"]["items"]
    assert step["properties"]["setWeight"] | {} == {"type": "integer", "minimum": 0, "maximum": 100}
    # Fields are kept so that maxProperties refuses them, rather than pruned in silence (test_admission.py).
    approval = {k: v for k, v in step["properties"]["approval"].items() if k != "description"}
    assert approval == {"type": "object", "maxProperties": 0, "x-kubernetes-preserve-unknown-fields": True}
    assert step["properties"]["pause"]["properties"]["duration"]["pattern"] == api.DURATION_PATTERN
    assert spec["progressDeadline"]["pattern"] == api.DURATION_PATTERN
    assert spec["steps"]["minItems"] == 1
    assert spec["traffic"]["properties"]["provider"]["enum"] == [p.value for p in api.TrafficProvider]
    guardrail = spec["analysis"]["properties"]["guardrails"]["items"]
    assert guardrail["properties"]["condition"]["pattern"] == api.CONDITION_PATTERN
    assert guardrail["properties"]["params"]["additionalProperties"] == {"type": "string"}
    assert set(schema["properties"]["spec"]["required"]) == {"policy", "fallback", "steps"}
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
    assert schema["properties"]["status"]["properties"]["phase"]["enum"] == [p.value for p in api.Phase]


def test_rules_come_from_the_models(schema: dict[str, Any]) -> None:
    found = {path: [r["rule"] for r in node.get("x-kubernetes-validations", [])] for path, node in _nodes(schema)}
    expected = {
        ".spec.steps[]": api.Step,
        ".spec.analysis": api.AnalysisSpec,
        ".spec.analysis.guardrails[]": api.Guardrail,
    }
    for path, model in expected.items():
        model_rules = [r["rule"] for r in model.model_config["json_schema_extra"]["x-kubernetes-validations"]]
        assert found[path] == model_rules


# Functions and macros of the Kubernetes CEL environment that our rules may use.
_K8S_CEL_FUNCTIONS = {"has", "size", "all", "exists", "exists_one", "filter", "map", "matches", "startsWith",
                      *cv.KUBERNETES_FUNCTIONS}


def test_rules_are_kubernetes_cel_within_cost_bounds(schema: dict[str, Any]) -> None:
    rules = _rules(schema)
    # spec (2), steps, guardrails (names, query xor template), shadowGuardrails (the same two), judge cost,
    # offlineEvaluation margin and reward range, a cost constraint's budget, rewards (window, default xor exclude,
    # keeping unrewarded decisions needs a default), training (workers and costBudgets need constrained-cql),
    # offlineEvaluation.fairness (not with trajectory; metric cost needs cost; metric action-rate needs action;
    # distinct groups, none named other), spec.fairness (the same for its groups)
    assert len(rules) == 20
    env = celpy.Environment()
    for path, entry in rules:
        env.compile(entry["rule"])  # parses in cel-python
        called = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\(", entry["rule"]))
        assert called <= _K8S_CEL_FUNCTIONS, f"{path}: {called - _K8S_CEL_FUNCTIONS} not in Kubernetes CEL"
        assert entry["message"], f"{path}: a rule needs a message saying how to fix the object"
        node = dict(_nodes(schema))[path]
        # Kubernetes estimates a rule's worst-case cost from maxItems/maxLength: iterated lists need bounds.
        for field in re.findall(r"self\.([A-Za-z]+)\.(?:all|exists|exists_one|filter|map)\(", entry["rule"]):
            iterated = node["properties"][field]
            assert "maxItems" in iterated, f"{path}.{field} is iterated by CEL and needs maxItems"
            for item_field in re.findall(r"\b[a-z]\.([A-Za-z]+)\b", entry["rule"]):
                item = iterated["items"]["properties"][item_field]
                assert item["type"] != "string" or "maxLength" in item, f"{path}.{field}[].{item_field} needs maxLength"


# ------------------------------------------------------------------ examples


def test_there_are_realistic_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"pricing-canary.yaml", "recommender-gateway.yaml", "minimal.yaml"} <= names
    providers = {_load(p)["spec"].get("traffic", {}).get("provider", "router") for p in EXAMPLES}
    assert providers == {p.value for p in api.TrafficProvider}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted_by_crd_and_model(path: Path, crd: dict[str, Any]) -> None:
    manifest = _load(path)
    assert cv.validate(manifest, crd) == []
    api.PolicyRollout.model_validate(manifest)


_PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_guardrails_use_known_placeholders_and_metrics(path: Path) -> None:
    known_metrics = {
        "policy_decisions_total",
        "policy_errors_total",
        "policy_reward_sum",
        "policy_reward_count",
        "policy_decision_latency_seconds_bucket",
    }
    for guardrail in _load(path)["spec"].get("analysis", {}).get("guardrails", []):
        if "template" in guardrail:
            continue  # library templates are rendered and checked against Prometheus in tests/operator/guardrails
        query = guardrail["query"]
        assert set(_PLACEHOLDER.findall(query)) <= {"rollout", "namespace", "variant", "interval"}, query
        assert "{{ interval }}" in query, f"{guardrail['name']}: use the analysis interval as the rate window"
        metrics = set(re.findall(r"\b(policy_[a-z_]+)\{", query))
        assert metrics and metrics <= known_metrics, metrics - known_metrics


# ------------------------------------------------------------ invalid manifests


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets `value` at a dotted path (`spec.steps.1.setWeight`) of the manifest."""

    def mutate(manifest: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = manifest
        for part in parents:
            target = target[part]
        target[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(manifest: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = manifest
        for part in parents:
            target = target[int(part) if part.isdigit() else part]
        del target[last]

    return mutate


def _duplicate_guardrail(manifest: dict[str, Any]) -> None:
    guardrails = manifest["spec"]["analysis"]["guardrails"]
    guardrails[1]["name"] = guardrails[0]["name"]


def _shadow_guardrail_named_like_a_live_one(manifest: dict[str, Any]) -> None:
    analysis = manifest["spec"]["analysis"]
    analysis["shadowGuardrails"][0]["name"] = analysis["guardrails"][0]["name"]


def _too_many_guardrails(manifest: dict[str, Any]) -> None:
    template = manifest["spec"]["analysis"]["guardrails"][0]
    manifest["spec"]["analysis"]["guardrails"] = [{**template, "name": f"g{i}"} for i in range(33)]


# (case id, mutation of pricing-canary.yaml, field path both validators must name)
# pricing-canary steps: 0 shadow, 1 setWeight 5, 2 pause 30m, 3 setWeight 25, 4 approval, 5 setWeight 100.
INVALID = [
    ("require-lineage-unknown-part", _set("spec.requireLineage", ["datset"]), "spec.requireLineage[0]"),
    ("lineage-dataset-without-uri", _set("spec.policy.lineage", {"dataset": {"rows": 3}}),
     "spec.policy.lineage.dataset"),
    ("decision-log-url-with-spaces", _set("spec.decisionLog", {"url": "s3://logs/my rollout"}), "spec.decisionLog.url"),
    ("decision-log-without-url", _set("spec.decisionLog", {}), "spec.decisionLog.url"),
    ("two-actions-in-a-step", _set("spec.steps.1", {"setWeight": 5, "pause": {"duration": "1m"}}), "spec.steps[1]"),
    ("step-without-action", _set("spec.steps.1", {}), "spec.steps[1]"),
    ("set-weight-above-100", _set("spec.steps.1.setWeight", 101), "spec.steps[1].setWeight"),
    ("set-weight-negative", _set("spec.steps.1.setWeight", -1), "spec.steps[1].setWeight"),
    ("set-weight-percent-string", _set("spec.steps.1.setWeight", "50%"), "spec.steps[1].setWeight"),
    ("duplicate-guardrail-names", _duplicate_guardrail, "spec.analysis"),
    ("shadow-guardrail-named-like-a-live-one", _shadow_guardrail_named_like_a_live_one, "spec.analysis"),
    ("cost-constraint-with-two-budgets", _set("spec.offlineEvaluation", {
        "dataset": "s3://logs", "constraints": [{"cost": "margin", "max": 0.1, "maxIncrease": 0.0}]}),
     "spec.offlineEvaluation.constraints[0]"),
    ("query-and-template", _set("spec.analysis.guardrails.0.template", "error-rate"), "spec.analysis.guardrails[0]"),
    ("neither-query-nor-template", _delete("spec.analysis.guardrails.0.query"), "spec.analysis.guardrails[0]"),
    ("judge-cost-without-name", _set("spec.analysis.judge", {"metric": "cost"}), "spec.analysis.judge"),
    ("pause-duration-in-words", _set("spec.steps.2.pause.duration", "5 minutes"), "spec.steps[2].pause.duration"),
    ("shadow-without-duration", _set("spec.steps.0.shadow", {}), "spec.steps[0].shadow.duration"),
    ("interval-without-unit", _set("spec.analysis.interval", "60"), "spec.analysis.interval"),
    ("progress-deadline-forever", _set("spec.progressDeadline", "forever"), "spec.progressDeadline"),
    ("ope-ratio-and-delta", _set("spec.offlineEvaluation", {"dataset": "s3://logs", "minLowerBoundRatio": 0.9,
                                                            "minLowerBoundDelta": 0.1}), "spec.offlineEvaluation"),
    ("fairness-with-trajectory", _set("spec.offlineEvaluation", {
        "dataset": "s3://logs", "trajectory": {"gamma": 0.9}, "fairness": {"groupKey": "region", "max": 0.1}}),
     "spec.offlineEvaluation"),
    ("fairness-cost-without-name", _set("spec.offlineEvaluation", {
        "dataset": "s3://logs", "fairness": {"groupKey": "region", "metric": "cost", "max": 0.1}}),
     "spec.offlineEvaluation.fairness"),
    ("fairness-action-rate-without-action", _set("spec.offlineEvaluation", {
        "dataset": "s3://logs", "fairness": {"groupKey": "region", "metric": "action-rate", "max": 0.1}}),
     "spec.offlineEvaluation.fairness"),
    ("fairness-group-other", _set("spec.fairness", {"groupKey": "region", "groups": ["a", "other"]}),
     "spec.fairness.groups"),
    ("fairness-group-twice", _set("spec.offlineEvaluation", {
        "dataset": "s3://logs", "fairness": {"groupKey": "region", "groups": ["a", "a"], "max": 0.1}}),
     "spec.offlineEvaluation.fairness.groups"),
    ("ope-confidence-one", _set("spec.offlineEvaluation", {"dataset": "s3://logs", "confidence": 1}),
     "spec.offlineEvaluation.confidence"),
    ("ope-reward-range-reversed", _set("spec.offlineEvaluation", {"dataset": "s3://logs", "rewardRange": [1, 0]}),
     "spec.offlineEvaluation"),
    ("training-bad-cron", _set("spec.training", {"dataset": "s3://logs", "output": "s3://models", "schedule": "daily"}),
     "spec.training.schedule"),
    ("training-negative-gpus", _set("spec.training", {"dataset": "s3://logs", "output": "s3://models", "gpus": -1}),
     "spec.training.gpus"),
    ("training-workers-without-constrained-cql",
     _set("spec.training", {"dataset": "s3://logs", "output": "s3://models", "workers": 2}), "spec.training"),
    (
        "condition-in-words",
        _set("spec.analysis.guardrails.0.condition", "below 1%"),
        "spec.analysis.guardrails[0].condition",
    ),
    ("missing-policy", _delete("spec.policy"), "spec.policy"),
    ("missing-fallback", _delete("spec.fallback"), "spec.fallback"),
    ("missing-policy-version", _delete("spec.policy.version"), "spec.policy.version"),
    ("empty-steps", _set("spec.steps", []), "spec.steps"),
    ("unknown-policy-field", _set("spec.policy.imagePullPolicy", "Always"), "spec.policy.imagePullPolicy"),
    ("misspelt-step-action", _set("spec.steps.1", {"weight": 5}), "spec.steps[1].weight"),
    ("approval-with-fields", _set("spec.steps.4.approval", {"by": "alice"}), "spec.steps[4].approval"),
    (
        "guardrail-name-not-dns",
        _set("spec.analysis.guardrails.0.name", "Error_Rate"),
        "spec.analysis.guardrails[0].name",
    ),
    ("negative-replicas", _set("spec.policy.replicas", -1), "spec.policy.replicas"),
    ("port-out-of-range", _set("spec.fallback.port", 70000), "spec.fallback.port"),
    (
        "failure-limit-zero",
        _set("spec.analysis.guardrails.0.failureLimit", 0),
        "spec.analysis.guardrails[0].failureLimit",
    ),
    ("unknown-provider", _set("spec.traffic.provider", "nginx"), "spec.traffic.provider"),
    ("too-many-guardrails", _too_many_guardrails, "spec.analysis.guardrails"),
    ("env-without-name", _set("spec.policy.env", [{"value": "1"}]), "spec.policy.env[0].name"),
    ("version-too-long", _set("spec.policy.version", "v" * 64), "spec.policy.version"),
    # Types are strict in the model too: nothing a manifest holds is converted (issue 17).
    ("set-weight-number-string", _set("spec.steps.1.setWeight", "50"), "spec.steps[1].setWeight"),
    ("set-weight-boolean", _set("spec.steps.1.setWeight", True), "spec.steps[1].setWeight"),
    ("set-weight-fraction", _set("spec.steps.1.setWeight", 5.5), "spec.steps[1].setWeight"),
    ("replicas-number-string", _set("spec.policy.replicas", "3"), "spec.policy.replicas"),
    ("version-a-number", _set("spec.policy.version", 2), "spec.policy.version"),
    ("failure-limit-boolean", _set("spec.analysis.guardrails.0.failureLimit", True),
     "spec.analysis.guardrails[0].failureLimit"),
    ("judge-alpha-string", _set("spec.analysis.judge", {"alpha": "0.05"}), "spec.analysis.judge.alpha"),
    ("early-advance-yes", _set("spec.analysis.judge", {"allowEarlyAdvance": "yes"}),
     "spec.analysis.judge.allowEarlyAdvance"),
    ("allow-decrease-string", _set("spec.allowWeightDecrease", "true"), "spec.allowWeightDecrease"),
    # Semantics: what would run but must not (issue 17).
    ("threshold-infinite", _set("spec.analysis.guardrails.0.condition", "< 1e999"),
     "spec.analysis.guardrails[0].condition"),
    ("threshold-too-many-digits", _set("spec.analysis.guardrails.0.condition", "< " + "9" * 400),
     "spec.analysis.guardrails[0].condition"),
    ("candidate-zero-replicas", _set("spec.policy.replicas", 0), "spec.policy.replicas"),
    ("fallback-zero-replicas", _set("spec.fallback.replicas", 0), "spec.fallback.replicas"),
    ("weights-go-down", _set("spec.steps.3.setWeight", 1), "spec.steps"),
    ("only-pauses", _set("spec.steps", [{"pause": {"duration": "1m"}}, {"approval": {}}]), "spec.steps"),
    ("only-weight-zero", _set("spec.steps", [{"shadow": {"duration": "1m"}}, {"setWeight": 0}]), "spec.steps"),
    ("live-steps-without-guardrails", _set("spec.analysis.guardrails", []), "spec.steps"),
    ("prometheus-url-file", _set("spec.analysis.prometheusUrl", "file:///etc/passwd"), "spec.analysis.prometheusUrl"),
    ("prometheus-url-gopher", _set("spec.analysis.prometheusUrl", "gopher://127.0.0.1:9090/"),
     "spec.analysis.prometheusUrl"),
    ("prometheus-url-without-host", _set("spec.analysis.prometheusUrl", "http:///api"), "spec.analysis.prometheusUrl"),
    ("notification-url-file", _set("spec.notifications", [{"url": "file:///etc/passwd"}]), "spec.notifications[0].url"),
    # Rewards joined for the offline gate and training (issue 15).
    ("rewards-window-zero", _set("spec.rewards", {"window": "0s"}), "spec.rewards.window"),
    ("rewards-window-in-days", _set("spec.rewards", {"window": "7d"}), "spec.rewards.window"),
    ("rewards-function-median", _set("spec.rewards", {"function": "median"}), "spec.rewards.function"),
    ("rewards-default-and-exclude", _set("spec.rewards", {"default": 0, "excludeUnrewarded": True}), "spec.rewards"),
    ("rewards-keep-unrewarded-without-default", _set("spec.rewards", {"excludeUnrewarded": False}), "spec.rewards"),
    ("rewards-default-a-string", _set("spec.rewards", {"default": "0"}), "spec.rewards.default"),
    ("reward-key-secret-without-name", _set("spec.rewardKeySecret", {"key": "key"}), "spec.rewardKeySecret.name"),
    ("reward-key-secret-name-not-dns", _set("spec.rewardKeySecret", {"name": "My_Key"}), "spec.rewardKeySecret.name"),
    ("workers-zero", _set("spec.policy.workers", 0), "spec.policy.workers"),
    ("workers-too-many", _set("spec.fallback.workers", 65), "spec.fallback.workers"),
]


def _invalid_manifest(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    manifest = copy.deepcopy(_load(BASE))
    mutate(manifest)
    return manifest


def _pydantic_errors(manifest: dict[str, Any]) -> list[str]:
    try:
        api.PolicyRollout.model_validate(manifest)
    except pydantic.ValidationError as error:
        return [f"{cv.format_path(e['loc'])}: {e['msg']}" for e in error.errors()]
    return []


@pytest.mark.parametrize(("case", "mutate", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(
    case: str, mutate: Callable[[dict[str, Any]], None], field: str, crd: dict[str, Any]
) -> None:
    manifest = _invalid_manifest(mutate)
    for source, errors in (("CRD", cv.validate(manifest, crd)), ("pydantic", _pydantic_errors(manifest))):
        assert errors, f"{case}: the {source} accepted it"
        assert any(e.startswith(field) for e in errors), f"{case}: no {source} error names {field}: {errors}"


def test_there_are_enough_invalid_cases() -> None:
    assert len(INVALID) >= 15


def test_rule_messages_reach_the_user(crd: dict[str, Any]) -> None:
    messages = {
        "two-actions-in-a-step": "each step must set exactly one of shadow, setWeight, pause, approval",
        "duplicate-guardrail-names": "guardrail names must be unique",
        "shadow-guardrail-named-like-a-live-one": "unique across guardrails and shadowGuardrails",
        "query-and-template": "set exactly one of query or template",
        "rewards-window-zero": api.REWARD_WINDOW_ZERO,
        "rewards-default-and-exclude": api.REWARD_DEFAULT_AND_EXCLUDE,
        "rewards-keep-unrewarded-without-default": api.REWARD_KEEP_WITHOUT_DEFAULT,
    }
    for case, mutate, field in INVALID:
        if case in messages:
            errors = cv.validate(_invalid_manifest(mutate), crd)
            assert any(e.startswith(field) and messages[case] in e for e in errors), errors
            assert any(messages[case] in e for e in _pydantic_errors(_invalid_manifest(mutate)))


def test_every_rule_both_passes_and_fails(schema: dict[str, Any]) -> None:
    """Each CEL rule is exercised by cel-python on real objects, and decides both ways."""
    outcomes: dict[str, set[bool | str]] = {entry["rule"]: set() for _, entry in _rules(schema)}
    manifests = [_load(p) for p in EXAMPLES] + [_invalid_manifest(m) for _, m, _ in INVALID]
    for manifest in manifests:
        for check in cv.rule_checks(cv.defaulted(manifest, schema), schema):
            outcomes[check.rule].add(check.result)
    for rule, results in outcomes.items():
        assert {True, False} <= results, f"{rule}: {results}"  # errors: on manifests the schema refuses


def test_unique_names_rule_holds_when_guardrails_are_absent(schema: dict[str, Any]) -> None:
    analysis = schema["properties"]["spec"]["properties"]["analysis"]
    entries = analysis["x-kubernetes-validations"]
    assert len(entries) == 2
    for entry in entries:
        assert cv.evaluate_rule(entry["rule"], {"interval": "1m"}) is True


def test_status_written_by_the_operator_is_accepted(crd: dict[str, Any]) -> None:
    manifest = _load(BASE)
    manifest["status"] = api.PolicyRolloutStatus(
        phase=api.Phase.PROGRESSING,
        current_step_index=3,
        canary_weight=25,
        candidate_version="cql-2026-11-20",
        stable_version="rules-v7",
        guardrails=[api.GuardrailStatus(name="error-rate", value=0.002, verdict=api.Verdict.PASS)],
        conditions=[api.Condition(type="Ready", status="False", reason="Progressing")],
        history=[api.HistoryEntry(time="2026-11-23T05:00:00Z", phase=api.Phase.SHADOW, step=0, reason="Started")],
    ).wire()
    manifest["status"]["kopf"] = {"progress": {}}  # kopf's own state must survive pruning
    assert cv.validate(manifest, crd) == []
    manifest["status"]["phase"] = "Sideways"
    assert any(e.startswith("status.phase: Unsupported value") for e in cv.validate(manifest, crd))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"apiVersion": "policy.rollouts.io/v1"}, "apiVersion: Unsupported value"),
        ({"kind": "Rollout"}, "kind: Unsupported value"),
        ({"metadata": {}}, "metadata.name: Required value"),
        ({"metadata": {"name": "Pricing_V2"}}, "metadata.name: Invalid value"),
    ],
)
def test_validator_checks_the_object_identity(change: dict[str, Any], expected: str, crd: dict[str, Any]) -> None:
    manifest = {**_load(BASE), **change}
    assert any(e.startswith(expected) for e in cv.validate(manifest, crd))


class _Union(api.Model):
    value: int | str


class _Open(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    name: str = "x"
    tags: list[str] = pydantic.Field(default_factory=list)


def test_a_union_field_is_refused_naming_it() -> None:
    with pytest.raises(crdgen.SchemaError, match=r"_Union\.value: anyOf with 2 non-null branches"):
        crdgen.model_schema(_Union)


def test_open_models_keep_unknown_fields_and_factories_become_defaults() -> None:
    schema = crdgen.model_schema(_Open)
    assert schema["x-kubernetes-preserve-unknown-fields"] is True
    assert schema["properties"]["tags"] == {"type": "array", "items": {"type": "string"}, "default": []}
    assert schema["properties"]["name"] == {"type": "string", "default": "x"}
