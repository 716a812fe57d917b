"""The pydantic PolicyRollout models: parsing, defaults that match the CRD, wire round trips.

The rejection table (bad manifests refused by both the CRD and the models) lives in
test_crd.py; here are the behaviours of the models themselves.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from rollout_operator import api

from tests.support import crd_validation as cv

EXAMPLES = sorted((cv.REPO_ROOT / "examples").glob("*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert api.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["5 minutes", "5", "", "m5", "-5m", "1d"])
def test_parse_duration_rejects_with_advice(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*e\.g\. '30s'"):
        api.parse_duration(text)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses(path: Path) -> None:
    rollout = api.PolicyRollout.model_validate(_load(path))
    assert rollout.metadata.name == _load(path)["metadata"]["name"]
    assert rollout.spec.steps, "an example needs steps"
    assert rollout.status.phase is api.Phase.PENDING


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_model_defaults_match_crd_defaults(path: Path) -> None:
    """What the API server stores after defaulting is what the operator reads from the model."""
    manifest = _load(path)
    schema = cv.version_schema(cv.load_crd())
    stored = cv.defaulted(manifest, schema)
    assert stored["spec"] == api.PolicyRollout.model_validate(manifest).wire()["spec"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_wire_round_trip_is_accepted_by_the_crd(path: Path) -> None:
    rollout = api.PolicyRollout.model_validate(_load(path))
    wire = rollout.wire()
    assert cv.validate(wire) == []
    assert api.PolicyRollout.model_validate(wire) == rollout


def test_pricing_example_reads_as_intended() -> None:
    rollout = api.PolicyRollout.model_validate(_load(cv.REPO_ROOT / "examples" / "pricing-canary.yaml"))
    kinds = [s.kind for s in rollout.spec.steps]
    assert kinds == ["shadow", "set_weight", "pause", "set_weight", "approval", "set_weight"]
    assert [s.set_weight for s in rollout.spec.steps if s.kind == "set_weight"] == [5, 25, 100]
    assert api.parse_duration(rollout.spec.steps[2].pause.duration) == timedelta(minutes=30)
    assert [g.name for g in rollout.spec.analysis.guardrails] == ["error-rate", "mean-reward", "p99-latency"]
    assert rollout.spec.traffic.provider is api.TrafficProvider.ROUTER


def test_gateway_example_reads_parent_refs() -> None:
    rollout = api.PolicyRollout.model_validate(_load(cv.REPO_ROOT / "examples" / "recommender-gateway.yaml"))
    traffic = rollout.spec.traffic
    assert traffic.provider is api.TrafficProvider.GATEWAY_API
    assert [(p.name, p.namespace, p.section_name) for p in traffic.gateway_api.parent_refs] == [
        ("public", "gateway-system", "https")
    ]


def test_empty_approval_and_pause_survive_the_round_trip() -> None:
    manifest = _load(cv.REPO_ROOT / "examples" / "ads-istio.yaml")
    wire = api.PolicyRollout.model_validate(manifest).wire()
    assert {"pause": {}} in wire["spec"]["steps"]
    pricing = api.PolicyRollout.model_validate(_load(cv.REPO_ROOT / "examples" / "pricing-canary.yaml")).wire()
    assert {"approval": {}} in pricing["spec"]["steps"]


def test_status_ignores_fields_it_does_not_know() -> None:
    status = api.PolicyRolloutStatus.model_validate({"phase": "Shadow", "kopf": {"progress": {}}})
    assert status.phase is api.Phase.SHADOW


def test_unknown_spec_field_is_refused_with_its_name() -> None:
    manifest = _load(cv.REPO_ROOT / "examples" / "minimal.yaml")
    manifest["spec"]["stepz"] = []
    with pytest.raises(pydantic.ValidationError) as error:
        api.PolicyRollout.model_validate(manifest)
    assert [e["loc"] for e in error.value.errors()] == [("spec", "stepz")]


@pytest.mark.parametrize(
    ("phase", "terminal"),
    [(api.Phase.PROMOTED, True), (api.Phase.ROLLED_BACK, True), (api.Phase.PAUSED, False), (api.Phase.SHADOW, False)],
)
def test_terminal_phases(phase: api.Phase, terminal: bool) -> None:
    assert phase.terminal is terminal


def test_manifests_are_strict_but_the_operators_own_status_reads_back_as_written() -> None:
    """A value the engine computed (an unbounded interval) never makes the status unreadable."""
    judge = api.JudgeStatus(kind="sequential", lower=float("-inf"), upper=float("inf"), intervals="3")
    assert judge.upper == float("inf") and judge.intervals == 3
    with pytest.raises(pydantic.ValidationError):
        api.Step.model_validate({"setWeight": "3"})
