"""The CRD (OpenAPI schema + CEL, as the API server checks them) and the pydantic model agree.

Local mode and the operator read manifests with the pydantic model; `kubectl apply` is judged by
the CRD. Every invalid manifest of the suite is fed to both here, and both must refuse it naming
the same field; every valid manifest we ship (examples, the demo's) must pass both. The same
invalid manifests go to the real kube-apiserver in test_admission.py (test_crd.INVALID).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from rollout_lab.demo import scenario
from rollout_operator import api

from tests.operator import test_crd
from tests.support import crd_validation as cv
from tests.support.kube import policy_rollout_manifest

Mutation = Callable[[dict[str, Any]], None]


def _replace(path: str, value: Any) -> Mutation:
    return test_crd._set(path, value)


def _rename(path: str, new: str) -> Mutation:
    """Misspell a field: what test_checks.py suggests a correction for."""

    def mutate(manifest: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = manifest
        for part in parents:
            target = target[part]
        target[new] = target.pop(last)

    return mutate


# Invalid manifests written elsewhere in the suite (their own tests check the messages users see),
# as mutations of test_crd.BASE with the field both validators must name.
ELSEWHERE: list[tuple[str, Mutation, str]] = [
    ("test_api:unknown-spec-field", _replace("spec.stepz", []), "spec.stepz"),
    ("test_checks:misspelt-guardrails", _rename("spec.analysis.guardrails", "gaurdrails"), "spec.analysis.gaurdrails"),
    ("test_checks:misspelt-set-weight", _rename("spec.steps.1.setWeight", "setWieght"), "spec.steps[1].setWieght"),
    ("test_scenarios:weight-and-pause", _replace("spec.steps.1", {"setWeight": 10, "pause": {}}), "spec.steps[1]"),
    ("test_local_run:weight-200", _replace("spec.steps.1.setWeight", 200), "spec.steps[1].setWeight"),
    ("test_crd:object-name", _replace("metadata.name", "Pricing_V2"), "metadata.name"),
    ("test_crd:no-name", _replace("metadata", {}), "metadata.name"),
    ("test_crd:api-version", _replace("apiVersion", "policy.rollouts.io/v1"), "apiVersion"),
    ("test_crd:kind", _replace("kind", "Rollout"), "kind"),
    ("test_crd:status-phase", _replace("status", {"phase": "Sideways"}), "status.phase"),
]
CASES = [(f"test_crd:{case}", mutate, field) for case, mutate, field in test_crd.INVALID] + ELSEWHERE


def _crd_errors(manifest: dict[str, Any]) -> list[str]:
    return cv.validate(manifest, cv.load_crd())


def _model_errors(manifest: dict[str, Any]) -> list[str]:
    try:
        api.PolicyRollout.model_validate(manifest)
    except pydantic.ValidationError as error:
        return [f"{cv.format_path(e['loc'])}: {e['msg']}" for e in error.errors()]
    return []


@pytest.mark.parametrize(("case", "mutate", "field"), CASES, ids=[c[0] for c in CASES])
def test_both_refuse_every_invalid_manifest_naming_the_same_field(case: str, mutate: Mutation, field: str) -> None:
    manifest = copy.deepcopy(test_crd._load(test_crd.BASE))
    mutate(manifest)
    for source, errors in (("CRD", _crd_errors(manifest)), ("pydantic", _model_errors(manifest))):
        assert any(e.startswith(field) for e in errors), f"{case}: the {source} does not refuse {field}: {errors}"


def _shipped() -> list[tuple[str, dict[str, Any]]]:
    manifests = [(p.name, d) for p in test_crd.EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d]
    for timing in ("FAST", "FULL"):
        demo = scenario.manifest("demo", Path("/a/candidate"), "v2", Path("/a/fallback"), Path("/logs"),
                                 getattr(scenario, timing))
        manifests.append((f"demo-{timing.lower()}", demo))
    manifests.append(("tests.support.kube.policy_rollout_manifest", policy_rollout_manifest()))
    return manifests


SHIPPED = _shipped()


@pytest.mark.parametrize(("name", "manifest"), SHIPPED, ids=[n for n, _ in SHIPPED])
def test_both_accept_every_manifest_we_ship(name: str, manifest: dict[str, Any]) -> None:
    assert _crd_errors(manifest) == []
    assert _model_errors(manifest) == []


@pytest.mark.parametrize("value", ["50", True, "true", 50.5])
def test_a_weight_is_an_integer_in_both(value: Any) -> None:
    manifest = _with(_replace("spec.steps.1.setWeight", value))
    assert _crd_errors(manifest) and _model_errors(manifest)


def test_an_explicit_field_allows_a_step_down_in_both() -> None:
    down = [{"setWeight": 50}, {"pause": {}}, {"setWeight": 10}, {"pause": {}}]
    refused = _with(_replace("spec.steps", down))
    assert any(api.STEPS_GO_DOWN in e for e in _crd_errors(refused))
    assert any(api.STEPS_GO_DOWN in e for e in _model_errors(refused))
    allowed = _with(_replace("spec.steps", down), _replace("spec.allowWeightDecrease", True))
    assert _crd_errors(allowed) == [] and _model_errors(allowed) == []


@pytest.mark.parametrize("steps", [
    [{"pause": {"duration": "1m"}}],
    [{"shadow": {"duration": "1m"}}, {"setWeight": 0}, {"approval": {}}],
])
def test_an_explicit_field_allows_promotion_without_an_analysed_live_step(steps: list[dict[str, Any]]) -> None:
    refused = _with(_replace("spec.steps", steps))
    assert any(api.NO_ANALYSED_LIVE_STEP in e for e in _crd_errors(refused))
    assert any(api.NO_ANALYSED_LIVE_STEP in e for e in _model_errors(refused))
    allowed = _with(_replace("spec.steps", steps), _replace("spec.allowPromotionWithoutAnalysis", True))
    assert _crd_errors(allowed) == [] and _model_errors(allowed) == []


def test_the_sequential_judge_alone_is_an_analysis() -> None:
    manifest = _with(_replace("spec.analysis", {"judge": {"kind": "sequential"}}))
    assert _crd_errors(manifest) == [] and _model_errors(manifest) == []


@pytest.mark.parametrize("condition", ["< 1e99", ">= -12345678901234567890.5", "!= .5e-3", "> 0"])
def test_large_finite_thresholds_pass_both(condition: str) -> None:
    manifest = _with(_replace("spec.analysis.guardrails.0.condition", condition))
    assert _crd_errors(manifest) == [] and _model_errors(manifest) == []


def test_a_non_finite_threshold_says_how_to_fix_it() -> None:
    [error] = _model_errors(_with(_replace("spec.analysis.guardrails.0.condition", "< 1e999")))
    assert "finite number" in error and "e.g. '< 0.01'" in error


def _with(*mutations: Mutation) -> dict[str, Any]:
    manifest = copy.deepcopy(test_crd._load(test_crd.BASE))
    for mutate in mutations:
        mutate(manifest)
    return manifest
