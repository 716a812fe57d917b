"""Validate a manifest the way the API server would for our CRD, with no API server.

The Kubernetes emulator used in the tests stores whatever it is given: it neither checks the
OpenAPI schema nor runs `x-kubernetes-validations`. This helper does both, in the order the
API server does: drop nulls, apply schema defaults, check the structural schema (with
`kubectl`'s strict field validation: unknown fields are errors, not silently pruned), then
evaluate every CEL rule with cel-python at the object path where the schema declares it.

Errors are strings in the API server's style, each starting with the field path at fault
(`spec.steps[1].setWeight: Invalid value: 101: ...`), so tests can assert on the field.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = REPO_ROOT / "crds" / "policyrollout.yaml"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class RuleCheck:
    """One CEL rule evaluated at one object path: result is True, False or an error text."""

    path: str
    rule: str
    message: str
    field_path: str
    result: bool | str


def load_crd(path: Path = CRD_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def version_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """The openAPIV3Schema of `version` (default: the storage version)."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version or (version is None and entry.get("storage")):
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version!r}")


def validate(manifest: dict[str, Any], crd: dict[str, Any] | None = None) -> list[str]:
    """All errors the API server would report for `manifest` (an empty list when it is valid)."""
    crd = crd if crd is not None else load_crd()
    errors = _identity_errors(manifest, crd)
    if errors:
        return errors
    version = manifest["apiVersion"].split("/", 1)[1]
    schema = version_schema(crd, version)
    obj = defaulted(manifest, schema)
    errors += schema_errors(obj, schema)
    errors += [_cel_error(check) for check in rule_checks(obj, schema) if check.result is not True]
    return errors


def defaulted(obj: Any, schema: dict[str, Any]) -> Any:
    """A copy of `obj` with nulls dropped and schema defaults filled in, as the API server does."""
    result = _drop_nulls(copy.deepcopy(obj))
    _apply_defaults(result, schema)
    return result


def schema_errors(obj: Any, schema: dict[str, Any]) -> list[str]:
    """OpenAPI schema violations of an already defaulted object, unknown fields included."""
    validator = jsonschema.Draft4Validator(_strict(schema, root=True))
    found = sorted(validator.iter_errors(obj), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    return [message for error in found for message in _schema_messages(error)]


def rule_checks(obj: Any, schema: dict[str, Any], path: Sequence[str | int] = ()) -> Iterator[RuleCheck]:
    """Evaluate every `x-kubernetes-validations` rule at each path of `obj` where it applies."""
    if obj is None:
        return
    for entry in schema.get("x-kubernetes-validations", []):
        yield RuleCheck(
            path=format_path(path),
            rule=entry["rule"],
            message=entry.get("message", f"failed rule: {entry['rule']}"),
            field_path=entry.get("fieldPath", ""),
            result=evaluate_rule(entry["rule"], obj),
        )
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if key in props:
                yield from rule_checks(value, props[key], [*path, key])
            elif isinstance(extra, dict):
                yield from rule_checks(value, extra, [*path, key])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            yield from rule_checks(item, schema["items"], [*path, index])


def evaluate_rule(rule: str, value: Any) -> bool | str:
    """True/False, or the evaluation error as text (the API server rejects the object then)."""
    try:
        result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    except celpy.CELEvalError as error:
        return f"rule evaluation error: {error.args[0] if error.args else error}"
    if isinstance(result, celpy.CELEvalError):
        return f"rule evaluation error: {result.args[0] if result.args else result}"
    if not isinstance(result, celpy.celtypes.BoolType):
        return f"rule must evaluate to a bool, got {type(result).__name__}"
    return bool(result)


def _is_sorted(values: celpy.celtypes.ListType) -> celpy.celtypes.BoolType:
    """`list.isSorted()` of the Kubernetes CEL list library (not in cel-python)."""
    items = list(values)
    return celpy.celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(items)))


# Functions of the Kubernetes CEL environment (k8s.io/apiserver/pkg/cel/library) that the rules use.
KUBERNETES_FUNCTIONS = {"isSorted": _is_sorted}


@functools.lru_cache(maxsize=256)
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=KUBERNETES_FUNCTIONS)


def format_path(path: Sequence[str | int]) -> str:
    """`spec.steps[1].setWeight` from ("spec", "steps", 1, "setWeight")."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _join(path: Sequence[str | int], key: str) -> str:
    return format_path([*path, key])


def _identity_errors(manifest: dict[str, Any], crd: dict[str, Any]) -> list[str]:
    spec = crd["spec"]
    served = {f"{spec['group']}/{v['name']}" for v in spec["versions"] if v.get("served")}
    errors = []
    if manifest.get("apiVersion") not in served:
        shown = manifest.get("apiVersion")
        errors.append(f"apiVersion: Unsupported value: {shown!r}: supported values: {sorted(served)}")
    if manifest.get("kind") != spec["names"]["kind"]:
        errors.append(f"kind: Unsupported value: {manifest.get('kind')!r}: must be {spec['names']['kind']!r}")
    metadata = manifest.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        errors.append("metadata.name: Required value: name is required")
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: Invalid value: {name!r}: must be a lowercase RFC 1123 subdomain")
    return errors


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _apply_defaults(obj: Any, schema: dict[str, Any]) -> None:
    """Structural defaulting: fill absent fields, then recurse (into filled-in values too)."""
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if key in props:
                _apply_defaults(value, props[key])
            elif isinstance(extra, dict):
                _apply_defaults(value, extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            _apply_defaults(item, schema["items"])


def _strict(schema: dict[str, Any], root: bool = False) -> dict[str, Any]:
    """The schema with every closed object refusing unknown fields (kubectl's strict validation)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if root:  # ObjectMeta is validated by the API server itself, not by the CRD schema
            out["properties"]["metadata"] = {"type": "object"}
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    elif out.get("type") == "object" and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _schema_messages(error: jsonschema.ValidationError) -> list[str]:
    path = list(error.absolute_path)
    where = format_path(path) or "<root>"
    value = error.instance
    shown = json.dumps(value) if not isinstance(value, (dict, list)) else f'"{type(value).__name__}"'
    kind, limit = error.validator, error.validator_value
    if kind == "required":
        return [f"{_join(path, name)}: Required value" for name in limit if name not in value]
    if kind == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        return [
            f"{_join(path, k)}: Unknown field: {k!r} is not in the schema; check its spelling or remove it"
            for k in value
            if k not in known
        ]
    if kind == "enum":
        return [f"{where}: Unsupported value: {shown}: supported values: {', '.join(map(json.dumps, limit))}"]
    if kind == "type":
        return [f"{where}: Invalid value: {shown}: must be of type {limit}"]
    texts = {
        "minimum": f"should be greater than or equal to {limit}",
        "maximum": f"should be less than or equal to {limit}",
        "pattern": f"should match '{limit}'",
        "minLength": f"should be at least {limit} chars long",
        "maxLength": f"may not be longer than {limit}",
        "minItems": f"should have at least {limit} items",
        "maxItems": f"must have at most {limit} items",
    }
    return [f"{where}: Invalid value: {shown}: {texts.get(str(kind), error.message)}"]


def _cel_error(check: RuleCheck) -> str:
    where = check.path + check.field_path if check.field_path else check.path
    detail = check.message if check.result is False else f"{check.message} ({check.result})"
    return f'{where or "<root>"}: Invalid value: "object": {detail}'
