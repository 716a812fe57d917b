"""Names, labels and owner references shared by every object the operator creates.

One place decides how an object is named and labelled, so the builders, the traffic
providers, the kubectl plugin and RBAC selectors all agree.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from rollout_operator import api

Variant = Literal["stable", "candidate"]
VARIANTS: tuple[Variant, ...] = ("stable", "candidate")

LABEL_VERSION = f"{api.GROUP}/version"
ANNOTATION_VERSION = f"{api.GROUP}/version"
MANAGED_BY = "policy-rollouts"
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def workload_name(rollout: api.PolicyRollout, variant: Variant) -> str:
    """`{rollout}-{variant}`: the Deployment and the Service of one variant."""
    return f"{rollout.metadata.name}-{variant}"


def label_value(text: str) -> str:
    """Make any string a valid label value (<=63 chars, alphanumeric at both ends)."""
    return _LABEL_VALUE_BAD.sub("-", text)[:63].strip("-_.")


def selector_labels(rollout: api.PolicyRollout, variant: Variant) -> dict[str, str]:
    """The labels that pick one variant's pods: stable across versions (selectors are immutable)."""
    return {api.LABEL_ROLLOUT: rollout.metadata.name, api.LABEL_VARIANT: variant}


def labels(rollout: api.PolicyRollout, variant: Variant | None = None, version: str | None = None) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": "policy-server",
        "app.kubernetes.io/instance": rollout.metadata.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        api.LABEL_ROLLOUT: rollout.metadata.name,
    }
    if variant is not None:
        result[api.LABEL_VARIANT] = variant
    if version is not None:
        result[LABEL_VERSION] = label_value(version)
    return result


def owner_references(rollout: api.PolicyRollout) -> list[dict[str, Any]]:
    """The PolicyRollout owns what it creates: deleting it garbage-collects them.

    Without a uid (a manifest not read from a cluster) no reference can be made.
    """
    if not rollout.metadata.uid:
        return []
    return [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": rollout.metadata.name,
            "uid": rollout.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def object_meta(
    rollout: api.PolicyRollout,
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": rollout.metadata.namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    owners = owner_references(rollout)
    if owners:
        meta["ownerReferences"] = owners
    return meta


RUN_AS_USER = 65532  # the conventional "nonroot" uid of distroless images


def pod_security_context() -> dict[str, Any]:
    """Non-root, fixed uid, default seccomp: every pod the operator creates runs this way."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Every container the operator creates: read-only root, no privilege escalation, no capabilities."""
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
