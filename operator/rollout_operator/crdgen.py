"""Generate the PolicyRollout CustomResourceDefinition from the pydantic models in `api.py`.

The models are the contract; the CRD is derived from them so the API server, the engine and
local mode can never disagree about a field. Pydantic writes JSON Schema (draft 2020-12 with
`$ref`, `anyOf [X, null]`, titles, `additionalProperties: false`), while the API server wants a
*structural* OpenAPI v3 schema: every node typed, no references, no unions. This module turns
one into the other and wraps it in the CRD (names, status subresource, printer columns).

Usage: `python -m rollout_operator.crdgen --write` (what `make crds` runs) rewrites
`crds/policyrollout.yaml`; `--check` (what CI runs) exits 1 when that file is stale.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import json_schema
from pydantic_core import core_schema

from rollout_operator import api
from rollout_operator.errors import RolloutOperatorError

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / "policyrollout.yaml"
HEADER = (
    "# Generated from operator/rollout_operator/api.py by `make crds` "
    "(python -m rollout_operator.crdgen --write). Do not edit by hand.\n"
)
CATEGORIES = ["policy"]

# Keys of a pydantic JSON schema that have no place in a Kubernetes structural schema.
_DROPPED_KEYS = {"title", "$defs", "$schema"}


class SchemaError(RolloutOperatorError, ValueError):
    """A model produced a schema that cannot be made structural; the message says which node."""


class _KubernetesJsonSchema(json_schema.GenerateJsonSchema):
    """Pydantic's generator with two Kubernetes needs added.

    - Fields with a `default_factory` get a `default` (an empty list/map/object) so the API
      server fills them in, as pydantic does, and CEL rules can rely on them being present.
    - Models that do not forbid extra fields keep unknown fields
      (`x-kubernetes-preserve-unknown-fields`): the status model ignores fields that kopf or
      older operator versions wrote, and pruning them would make kopf lose its own state.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, pydantic.BaseModel):
            return {}  # nested field defaults fill it in, as they do in pydantic
        return value

    def model_schema(self, schema: core_schema.ModelSchema) -> json_schema.JsonSchemaValue:
        result = super().model_schema(schema)
        extra = schema["cls"].model_config.get("extra")
        if extra in (None, "ignore", "allow"):
            result["x-kubernetes-preserve-unknown-fields"] = True
        return result


def model_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model, as it appears under the CRD's spec/status."""
    raw = model.model_json_schema(by_alias=True, schema_generator=_KubernetesJsonSchema)
    defs = raw.get("$defs", {})
    return _structural(raw, defs, path=model.__name__)


def _resolve(ref: str, defs: dict[str, Any], path: str) -> dict[str, Any]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
        raise SchemaError(f"{path}: cannot inline $ref {ref!r}: only local #/$defs references are supported")
    return copy.deepcopy(defs[ref[len(prefix) :]])


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Overlay a field's own keys (description, default) on the schema of its type."""
    merged = dict(base)
    merged.update(overlay)
    return merged


def _structural(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Rewrite one pydantic JSON-schema node (and its children) into a structural schema node."""
    node = dict(node)
    if "$ref" in node:
        target = _resolve(node.pop("$ref"), defs, path)
        node = _merge(target, node)
    for key in ("anyOf", "oneOf", "allOf"):
        if key not in node:
            continue
        branches = [b for b in node.pop(key) if b != {"type": "null"}]
        if len(branches) != 1:
            raise SchemaError(
                f"{path}: {key} with {len(branches)} non-null branches is not structural; "
                "use one type per field (a model with optional fields instead of a union)"
            )
        node = _merge(_structural(branches[0], defs, path), node)
    if node.get("default", ...) is None:
        del node["default"]  # `X | None = None`: absence is the default, nothing to fill in
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        kinds = {type(v) for v in node["enum"]}
        if kinds != {str}:
            raise SchemaError(f"{path}: enum {node['enum']!r} mixes types; use a StrEnum")
        node["type"] = "string"
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]  # forbidden in CRDs: unknown fields are pruned or refused instead
    elif node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True

    out: dict[str, Any] = {k: v for k, v in node.items() if k not in _DROPPED_KEYS}
    if "properties" in out:
        props = {name: _structural(sub, defs, f"{path}.{name}") for name, sub in out["properties"].items()}
        if props:
            out["properties"] = props
        else:
            del out["properties"]
    if isinstance(out.get("items"), dict):
        out["items"] = _structural(out["items"], defs, f"{path}[]")
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"], defs, f"{path}.*")
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path}: schema node has no type; give the field a concrete type")
    return out


def _root_schema() -> dict[str, Any]:
    spec = model_schema(api.PolicyRolloutSpec)
    status = model_schema(api.PolicyRolloutStatus)
    return {
        "type": "object",
        "description": (api.PolicyRollout.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def _printer_columns() -> list[dict[str, Any]]:
    def column(name: str, kind: str, path: str, description: str, priority: int = 0) -> dict[str, Any]:
        entry = {"name": name, "type": kind, "jsonPath": path, "description": description}
        if priority:
            entry["priority"] = priority
        return entry

    return [
        column("Phase", "string", ".status.phase", "Where the rollout is: Shadow, Progressing, Promoted, ..."),
        column("Step", "integer", ".status.currentStepIndex", "Index of the step being run."),
        column("Weight", "integer", ".status.canaryWeight", "Percent of traffic on the candidate."),
        column("Candidate", "string", ".status.candidateVersion", "Version of the candidate policy."),
        column("Stable", "string", ".status.stableVersion", "Version of the policy serving the rest."),
        column("Age", "date", ".metadata.creationTimestamp", "Time since the object was created."),
    ]


def build_crd() -> dict[str, Any]:
    """The PolicyRollout CRD as a dict, ready to dump to YAML or send to the API server."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _root_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                }
            ],
        },
    }


# Strings that YAML 1.1 reads as booleans. PyYAML writes them bare, but kubectl and Helm parse
# YAML 1.1 (go-yaml): a bare `n:` property became `false:` in the API server, which then pruned
# `status.offlineEvaluation.n`. They are written quoted.
_YAML11_BOOLEANS = frozenset(
    word for w in ("y", "n", "yes", "no", "on", "off", "true", "false") for word in (w, w.upper(), w.capitalize())
)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if value in _YAML11_BOOLEANS else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render(crd: dict[str, Any] | None = None) -> str:
    """The CRD as stable YAML text: sorted keys, no line wrapping, a do-not-edit header."""
    body = yaml.dump(crd if crd is not None else build_crd(), Dumper=_Dumper, sort_keys=True, width=10_000)
    return HEADER + body


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rollout_operator.crdgen", description="Generate the PolicyRollout CRD from api.py."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the CRD file")
    mode.add_argument("--check", action="store_true", help="exit 1 if the CRD file is not what api.py generates")
    parser.add_argument("--path", type=Path, default=CRD_PATH, help=f"CRD file (default: {CRD_PATH})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    text = render()
    shown = _display(args.path)
    if args.write:
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_text(text)
        print(f"wrote {shown}")
        return 0
    current = args.path.read_text() if args.path.exists() else None
    if current != text:
        reason = "is missing" if current is None else "is stale"
        print(f"{shown} {reason}: run `make crds` and commit the result", file=sys.stderr)
        return 1
    print(f"{shown} is up to date")
    return 0


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
