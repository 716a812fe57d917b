"""The two planes describe lineage with the same wire format, field by field.

A trained artifact's manifest carries its lineage (`policy_server.artifact.Lineage`); the training Job
reports it and the operator stores it in the PolicyRollout's status (`rollout_operator.api.Lineage`). The
planes never import each other, so each has its own model: this test is what keeps them one format. A
field added, renamed or retyped on one side only fails here, before a Job's report becomes
"unreadable here" in a rollout's status.
"""

from __future__ import annotations

from typing import Any

from pydantic.alias_generators import to_camel
from rollout_operator import api

from policy_server import artifact

# Bounds only the CRD has: the status lives in one etcd object, so lists in it are capped. No trainer
# writes partitions today (they are hand-written lineage), and the operator reads a longer list as
# "unreadable here" rather than failing the rollout (engine/training.py).
CRD_ONLY = {("DatasetLineage", "partitions"): {"maxItems": 1000}}


def _wire_schema(model: type[Any]) -> dict[str, Any]:
    """The model's JSON schema by wire names, without prose (titles, descriptions) or the CRD-only bounds."""
    schema = model.model_json_schema(by_alias=True)

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("title", "description")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    schema = dict(strip(schema))
    for (definition, field), bounds in CRD_ONLY.items():
        prop = schema["$defs"][definition]["properties"][to_camel(field)]
        for variant in prop.get("anyOf", [prop]):
            for key in bounds:
                variant.pop(key, None)
    return schema


def test_the_operator_reads_the_lineage_the_artifact_writes_with_the_same_fields_and_types() -> None:
    assert _wire_schema(api.Lineage) == _wire_schema(artifact.Lineage)


def test_the_crd_only_bounds_are_really_there() -> None:
    """The exceptions above are real differences, not stale entries hiding a drift."""
    schema = api.Lineage.model_json_schema(by_alias=True)
    for (definition, field), bounds in CRD_ONLY.items():
        prop = schema["$defs"][definition]["properties"][to_camel(field)]
        variants = prop.get("anyOf", [prop])
        for key, value in bounds.items():
            assert any(v.get(key) == value for v in variants), (definition, field, key)


def test_a_full_lineage_written_by_the_artifact_side_reads_back_equal_on_the_operator_side() -> None:
    written = artifact.Lineage.model_validate({
        "dataset": {"uri": "s3://logs/pricing", "partitions": ["hour=2026120600"], "from": "2026-12-06T00:00:00Z",
                    "to": "2026-12-06T01:00:00Z", "sha256": "a" * 64, "hashOf": "segments", "rows": 1200},
        "code": {"image": "ghcr.io/acme/policy-server@sha256:" + "b" * 64, "commit": "0123abc"},
        "hyperparameters": {"algo": "dqn", "lr": 0.001, "epochs": 3},
        "environment": {"simulator": "pricing-sim", "simulatorVersion": "1.2", "python": "3.11.2",
                        "torch": "2.13.0", "policyServer": "0.9.0"},
        "opeReport": {"uri": "s3://models/pricing/v7/ope.json", "estimator": "snips", "estimate": 0.41,
                      "lowerBound": 0.38, "baselineValue": 0.35, "verdict": "pass"},
    }).wire()
    read = api.Lineage.model_validate(written, strict=False)
    assert read.model_dump(by_alias=True, exclude_none=True, mode="json") == written
    assert set(written) == {p.value for p in api.LineagePart} == set(artifact.LINEAGE_FIELDS)
