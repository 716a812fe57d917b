"""The router provider's objects: the routing-table ConfigMap and the router's own workload. Pure: no I/O.

The operator and the router (``policy-server route``) meet through one ConfigMap,
``{rollout}-routing``, whose ``routing.json`` key holds the routing table (same JSON as the
router's ``--config`` file, see docs/router.md). The router watches it through the Kubernetes
API, so a rollback reaches the data plane as soon as the operator writes it; ``generation``
counts changes and ``updatedAt`` (epoch seconds of the decision) lets the router export how
long the change took to arrive.

The router runs as ``{rollout}-router`` (Deployment + Service on port 80), with a service
account allowed to get/list/watch that one ConfigMap and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rollout_operator import api
from rollout_operator.engine.types import Weights
from rollout_operator.resources import meta, reward_key
from rollout_operator.resources.workload import (
    SERVICE_PORT,
    decision_log_args,
    scrape_annotations,
)

CONFIGMAP_KEY = "routing.json"  # = policy_server.router.table.CONFIGMAP_KEY (the contract; a test checks)
TABLE_VERSION = 1
ROUTER_PORT = 8080
STATE_DIR = "/var/lib/policy-router"
COMPONENT_LABEL = "app.kubernetes.io/component"


def configmap_name(rollout: api.PolicyRollout) -> str:
    return f"{rollout.metadata.name}-routing"


def router_name(rollout: api.PolicyRollout) -> str:
    return f"{rollout.metadata.name}-router"


def service_url(rollout: api.PolicyRollout, variant: meta.Variant) -> str:
    """The in-cluster URL of a variant's Service (port 80)."""
    return f"http://{meta.workload_name(rollout, variant)}.{rollout.metadata.namespace}.svc"


def _sticky(rollout: api.PolicyRollout) -> str | None:
    key = rollout.spec.traffic.sticky_key
    return f"header:{key}" if key else None


URLResolver = Callable[[api.PolicyRollout, meta.Variant], str]


def routing_table(
    rollout: api.PolicyRollout, weights: Weights, generation: int, updated_at: float, urls: URLResolver = service_url
) -> dict[str, Any]:
    """The table the router applies: stable/candidate URLs, candidate percent, shadow, sticky key."""
    table: dict[str, Any] = {
        "version": TABLE_VERSION,
        "stable": urls(rollout, "stable"),
        "candidate": urls(rollout, "candidate"),
        "weight": 0 if weights.shadow else weights.candidate,
        "shadow": weights.shadow,
        "generation": generation,
        "updatedAt": round(updated_at, 6),
        "salt": f"{rollout.metadata.namespace}/{rollout.metadata.name}",
    }
    sticky = _sticky(rollout)
    if sticky:
        table["stickyKey"] = sticky
    return table


def configmap(rollout: api.PolicyRollout, table: dict[str, Any]) -> dict[str, Any]:
    labels = {**meta.labels(rollout), COMPONENT_LABEL: "routing"}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.object_meta(rollout, configmap_name(rollout), labels),
        "data": {CONFIGMAP_KEY: json.dumps(table, sort_keys=True)},
    }


def table_of(cm: dict[str, Any] | None) -> dict[str, Any] | None:
    """The routing table stored in a ConfigMap; None if absent or unreadable."""
    raw = ((cm or {}).get("data") or {}).get(CONFIGMAP_KEY)
    if not raw:
        return None
    try:
        table = json.loads(raw)
    except ValueError:
        return None
    return table if isinstance(table, dict) else None


def same_routing(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether two tables route alike (generation and timestamp aside)."""
    if a is None:
        return False
    ignore = {"generation", "updatedAt"}
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def weights_of(
    cm: dict[str, Any] | None, rollout: api.PolicyRollout, urls: URLResolver = service_url
) -> Weights | None:
    """The split the stored table applies; None if there is none or it routes to other Services."""
    table = table_of(cm)
    if table is None:
        return None
    if table.get("stable") != urls(rollout, "stable") or table.get("candidate") != urls(rollout, "candidate"):
        return None
    weight = table.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 100:
        return None
    return Weights(candidate=round(weight), shadow=bool(table.get("shadow")))


# --------------------------------------------------------------------------- the router's workload


def _router_labels(rollout: api.PolicyRollout) -> dict[str, str]:
    return {**meta.labels(rollout), "app.kubernetes.io/name": "policy-router", COMPONENT_LABEL: "router"}


def _selector(rollout: api.PolicyRollout) -> dict[str, str]:
    return {api.LABEL_ROLLOUT: rollout.metadata.name, COMPONENT_LABEL: "router"}


def service_account(rollout: api.PolicyRollout) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta.object_meta(rollout, router_name(rollout), _router_labels(rollout)),
        "automountServiceAccountToken": True,  # the router watches its ConfigMap with this token
    }


def role(rollout: api.PolicyRollout) -> dict[str, Any]:
    """Read and watch exactly one ConfigMap (``resourceNames`` also limits list/watch by field selector), and
    the namespace's EndpointSlices: the router balances over each variant's ready pods itself (docs/router.md).

    EndpointSlice names are generated, so that rule cannot name them; it is read-only and confined to the
    rollout's namespace. The operator holds the same verbs (the chart's Role) to be allowed to grant them.
    """
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta.object_meta(rollout, router_name(rollout), _router_labels(rollout)),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [configmap_name(rollout)],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["get", "list", "watch"],
            },
        ],
    }


def role_binding(rollout: api.PolicyRollout) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta.object_meta(rollout, router_name(rollout), _router_labels(rollout)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": router_name(rollout)},
        "subjects": [{"kind": "ServiceAccount", "name": router_name(rollout), "namespace": rollout.metadata.namespace}],
    }


def deployment(rollout: api.PolicyRollout, replicas: int = 2) -> dict[str, Any]:
    """``policy-server route`` watching the rollout's ConfigMap; the last table kept in an emptyDir.

    The image is the fallback's (the trusted policy-server build). The flags route everything to
    the stable Service until the ConfigMap is read; ``--config`` survives container restarts.
    """
    name = router_name(rollout)
    ns = rollout.metadata.namespace
    args = [
        "route",
        "--host",
        "0.0.0.0",
        "--port",
        str(ROUTER_PORT),
        "--stable",
        service_url(rollout, "stable"),
        "--candidate",
        service_url(rollout, "candidate"),
        "--weight",
        "0",
        "--configmap",
        f"{ns}/{configmap_name(rollout)}",
        "--config",
        f"{STATE_DIR}/routing.json",
        *decision_log_args(rollout, "router"),
    ]
    probe = {
        "httpGet": {"path": "/readyz", "port": "http"},
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    container = {
        "name": "router",
        "image": rollout.spec.fallback.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["policy-server"],
        "args": args,
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "readinessProbe": probe,
        "livenessProbe": {**probe, "httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "securityContext": meta.container_security_context(),
        "volumeMounts": [{"name": "state", "mountPath": STATE_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    # The rollout's reward key: the router verifies the ids of rewards posted to it before forwarding them.
    env: list[dict[str, Any]] = [reward_key.env_var(rollout)]
    if rollout.spec.decision_log is not None:  # the log's storage credentials: the router runs the fallback's image
        env += [{"name": e.name, "value": e.value} for e in rollout.spec.fallback.env if e.name != reward_key.ENV_VAR]
    container["env"] = env
    labels = _router_labels(rollout)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta.object_meta(rollout, name, labels),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": _selector(rollout)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": scrape_annotations(ROUTER_PORT),
                },
                "spec": {
                    "serviceAccountName": name,
                    "enableServiceLinks": False,
                    "securityContext": meta.pod_security_context(),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [{"name": "state", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def service(rollout: api.PolicyRollout) -> dict[str, Any]:
    """``{rollout}-router``: the address clients call during the rollout."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.object_meta(rollout, router_name(rollout), _router_labels(rollout)),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(rollout),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def router_objects(rollout: api.PolicyRollout) -> list[dict[str, Any]]:
    """Everything the router needs, in creation order (identity and RBAC before the pods)."""
    return [service_account(rollout), role(rollout), role_binding(rollout), deployment(rollout), service(rollout)]
