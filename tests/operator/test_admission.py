"""Admission by the real API server: our generated CRD, the examples and the invalid manifests.

The CRD's OpenAPI schema and CEL rules are generated from the pydantic models and checked offline
with cel-python (test_crd.py). Here the real kube-apiserver (tests/support/cluster.py) is the judge,
through the kubectl of the same release as a user would call it (`apply --server-side`, strict field
validation): every example is accepted, every invalid manifest of test_crd.py is refused with a
message naming the field, and cel-python agrees with the server on every one.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rollout_operator.cluster.control_plane import ControlPlane

from tests.operator import test_crd
from tests.support import crd_validation as cv

pytestmark = pytest.mark.integration

CRD = Path(__file__).resolve().parents[2] / "crds" / "policyrollout.yaml"


def _dry_run(plane: ControlPlane, manifest: dict[str, Any]) -> tuple[int, str]:
    done = plane.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=admission-test", "-f", "-",
                         stdin=yaml.safe_dump(manifest))
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def namespaces(control_plane: ControlPlane) -> None:
    """The examples' namespaces exist (a dry run is still refused in a namespace that does not)."""
    for path in test_crd.EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and (namespace := doc.get("metadata", {}).get("namespace")):
                control_plane.kubectl("create", "namespace", namespace)


def test_the_generated_crd_applies_server_side_and_is_established(control_plane: ControlPlane) -> None:
    applied = control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    assert applied.returncode == 0, applied.stderr
    assert "serverside-applied" in applied.stdout
    crd = yaml.safe_load(CRD.read_text())
    waited = control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                                   f"crd/{crd['metadata']['name']}")
    assert waited.returncode == 0, waited.stderr
    served = control_plane.kubectl("get", "policyrollouts", "--all-namespaces")
    assert served.returncode == 0, served.stderr
    # What kubectl (YAML 1.1) read from the file is what we generated: a bare `n:` key once came back
    # as `false:`, and the server pruned status.offlineEvaluation.n.
    stored = json.loads(control_plane.kubectl("get", "crd", crd["metadata"]["name"], "-o", "json").stdout)
    assert stored["spec"]["versions"] == crd["spec"]["versions"]


@pytest.mark.parametrize("path", test_crd.EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted(path: Path, control_plane: ControlPlane, namespaces: None) -> None:
    for manifest in (d for d in yaml.safe_load_all(path.read_text()) if d):
        code, output = _dry_run(control_plane, manifest)
        assert code == 0, f"{path.name}: the API server refused it: {output}"


@pytest.mark.parametrize(("case", "mutate", "field"), test_crd.INVALID, ids=[c[0] for c in test_crd.INVALID])
def test_every_invalid_manifest_is_refused_naming_the_field_as_cel_python_says(
    case: str, mutate: Any, field: str, control_plane: ControlPlane, namespaces: None
) -> None:
    manifest = copy.deepcopy(test_crd._load(test_crd.BASE))
    mutate(manifest)
    code, output = _dry_run(control_plane, manifest)
    assert code != 0, f"{case}: the API server accepted it"
    assert field in output, f"{case}: the server's message does not name {field}: {output}"
    offline = cv.validate(manifest, yaml.safe_load(CRD.read_text()))
    assert any(e.startswith(field) for e in offline), f"{case}: cel-python disagrees with the server: {offline}"


@pytest.mark.parametrize("path", sorted((test_crd.EXAMPLES[0].parent / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_job_example_is_accepted(path: Path, control_plane: ControlPlane, namespaces: None) -> None:
    """The Kubernetes objects beside the rollouts (e.g. the sharded reward joiner's Indexed Job) are valid too."""
    for manifest in (d for d in yaml.safe_load_all(path.read_text()) if d):
        code, output = _dry_run(control_plane, manifest)
        assert code == 0, f"{path.name}: the API server refused it: {output}"
