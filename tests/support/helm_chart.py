"""Render the chart with Helm's own engine (helm-python-sdk) and read back what it produced.

Shared by the chart tests: `render(values)` returns every rendered object (CRDs from `crds/`
included, templates' documents split and parsed); `rules_of(...)` flattens RBAC rules to the
(apiGroup, resource[/subresource], verb) triples an RBAC check compares.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "policy-rollouts"
RELEASE = "rollouts"
NAMESPACE = "policy-rollouts-system"

Triple = tuple[str, str, str]


@functools.cache
def chart() -> helm_python.Chart:
    helm_python.disable_logging()
    return helm_python.Chart.load(CHART)


def render_templates(
    values: dict[str, Any] | None = None, namespace: str = NAMESPACE, release: str = RELEASE
) -> dict[str, list[dict[str, Any]]]:
    """Template path -> the objects it rendered (empty documents dropped)."""
    rendered = chart().render(values or {}, name=release, namespace=namespace)
    return {
        path: [doc for doc in yaml.safe_load_all(text) if doc]
        for path, text in rendered.items()
        if not path.endswith("NOTES.txt")
    }


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE,
           release: str = RELEASE) -> list[dict[str, Any]]:
    """Every object a `helm install` would create: CRDs first, then the templates."""
    crds = [doc for crd in chart().crds for doc in yaml.safe_load_all(crd["data"]) if doc]
    return crds + [obj for objs in render_templates(values, namespace, release).values() for obj in objs]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def rules_of(role: dict[str, Any]) -> set[Triple]:
    """A Role's or ClusterRole's rules as (apiGroup, resource, verb) triples."""
    triples = set()
    for rule in role.get("rules", []):
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    triples.add((group, resource, verb))
    return triples


def bound_roles(
    objects: list[dict[str, Any]], service_account: str, sa_namespace: str
) -> list[tuple[dict[str, Any], str | None]]:
    """(role, namespace where it applies; None = cluster-wide) for every binding of the ServiceAccount."""
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in objects
        if o.get("kind") in ("Role", "ClusterRole")
    }
    result = []
    for binding in objects:
        if binding.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = binding.get("subjects", [])
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == service_account
            and s.get("namespace") == sa_namespace
            for s in subjects
        ):
            continue
        ref = binding["roleRef"]
        where = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role_ns = where if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        assert role is not None, f"{binding['kind']} {binding['metadata']['name']} refers to a missing {ref}"
        result.append((role, where))
    return result


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
