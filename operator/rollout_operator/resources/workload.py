"""Deployment and Service of one policy variant (`stable` or `candidate`). Pure: no I/O.

Each variant runs `policy-server serve` in its own Deployment behind its own Service, so a
traffic provider only has to split between two Services, and the stable variant can keep
running the fallback while the candidate is judged.
"""

from __future__ import annotations

import json
from typing import Any

from rollout_operator import api
from rollout_operator.resources import meta, reward_key

CONTAINER_NAME = "policy-server"
SERVICE_PORT = 80
# Writable scratch for a read-only root filesystem: temp files, and the decision log segments
# that a sidecar or the next retraining Job picks up.
SCRATCH_VOLUMES = {"tmp": "/tmp", "data": "/var/lib/policy-server"}
# A policy pod's SIGTERM: requests in flight (<= 10 s), then the decision log's last write (<= 15 s),
# inside the grace period; what cannot be written stays in the write-ahead log on the "data" emptyDir.
GRACE_PERIOD_S = 30
SHUTDOWN_TIMEOUT_S = 10
LOG_FLUSH_TIMEOUT_S = 15
WAL_DIR = "/var/lib/policy-server/wal"
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}
def scrape_annotations(port: int) -> dict[str, str]:
    """The annotations a Prometheus pod scrape config keys on."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


WORKER_MEMORY_MI = 512  # default memory limit per server process when a pod runs several (--workers)


def _resources(policy: api.PolicySpec) -> dict[str, dict[str, str]]:
    """The spec's resources; each of requests/limits the spec leaves out keeps our default.

    With several workers the default memory limit grows with them (each process holds its own copy of
    the model), so a pod that asks for 4 workers is not OOM-killed by a limit sized for one.
    """
    result = {kind: dict(values) for kind, values in DEFAULT_RESOURCES.items()}
    if policy.workers > 1:
        result["limits"]["memory"] = f"{WORKER_MEMORY_MI * policy.workers}Mi"
    for kind, values in (policy.resources or {}).items():
        result[kind] = dict(values)
    return result


def _env(rollout: api.PolicyRollout, variant: meta.Variant, policy: api.PolicySpec) -> list[dict[str, Any]]:
    ours = {"POLICY_ROLLOUT": rollout.metadata.name, "POLICY_VARIANT": variant, "POLICY_VERSION": policy.version}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in ours.items()]
    env.append({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}})
    env.append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    # The rollout's shared key: ids signed here verify on every replica, variant and the router.
    env.append(reward_key.env_var(rollout))
    # The user's variables come last and may not override ours (the server trusts them).
    reserved = {*ours, reward_key.ENV_VAR}
    env += [{"name": e.name, "value": e.value} for e in policy.env if e.name not in reserved]
    return env


def workers_args(policy: api.PolicySpec) -> list[str]:
    """``--workers N`` when the spec asks for more than one server process per pod (default: one, no flag)."""
    return ["--workers", str(policy.workers)] if policy.workers > 1 else []


def decision_log_url(rollout: api.PolicyRollout, writer: str) -> str | None:
    """``<spec.decisionLog.url>/<writer>`` (a variant or ``router``), or None when the spec sets no log."""
    spec = rollout.spec.decision_log
    return None if spec is None else f"{spec.url.rstrip('/')}/{writer}"


def decision_log_args(rollout: api.PolicyRollout, writer: str) -> list[str]:
    """``--log-dir`` for :func:`decision_log_url`, or nothing when unset."""
    url = decision_log_url(rollout, writer)
    return [] if url is None else ["--log-dir", url]


def _durability_args(rollout: api.PolicyRollout, writer: str) -> list[str]:
    """A write-ahead log on the pod's emptyDir and shutdown budgets that fit the grace period, when logging."""
    if decision_log_url(rollout, writer) is None:
        return []
    return ["--wal-dir", WAL_DIR, "--shutdown-timeout-s", str(SHUTDOWN_TIMEOUT_S),
            "--log-flush-timeout-s", str(LOG_FLUSH_TIMEOUT_S)]  # fmt: skip


def trusted_key_args(rollout: api.PolicyRollout) -> list[str]:
    """``--trusted-key`` per key of ``spec.artifactVerification``: the server refuses unsigned artifacts."""
    verification = rollout.spec.artifact_verification
    return [] if verification is None else [a for key in verification.trusted_keys for a in ("--trusted-key", key)]


def envelope_args(rollout: api.PolicyRollout, policy: api.PolicySpec) -> list[str]:
    """``--envelope`` (and the fallback artifact that replaces what it refuses) for an RL policy's server.

    Not for the fallback itself (the known-safe rule). The JSON is part of the pod template, so a change
    of ``spec.envelope`` rolls the pods to the new envelope (that is how a person widens it, audited).
    """
    env = rollout.spec.envelope
    fallback = rollout.spec.fallback
    if env is None or policy.artifact == fallback.artifact:
        return []
    data = env.model_dump(exclude_none=True, mode="json")
    if env.budget is not None:
        data["budget"]["window"] = api.parse_duration(env.budget.window).total_seconds()
        data["budget"].setdefault("weights", "abs")
    text = json.dumps(data, separators=(",", ":"), sort_keys=True)
    return ["--envelope", text, "--envelope-fallback-model", fallback.artifact]


def fairness_args(rollout: api.PolicyRollout) -> list[str]:
    """``--group-key``/``--groups`` of ``spec.fairness``: every variant's server exports its metrics by group."""
    fairness = rollout.spec.fairness
    return [] if fairness is None else ["--group-key", fairness.group_key, "--groups", ",".join(fairness.groups)]


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def deployment(rollout: api.PolicyRollout, variant: meta.Variant, policy: api.PolicySpec) -> dict[str, Any]:
    """The Deployment `{rollout}-{variant}` serving `policy`."""
    name = meta.workload_name(rollout, variant)
    pod_labels = meta.labels(rollout, variant, policy.version)
    container = {
        "name": CONTAINER_NAME,
        "image": policy.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["policy-server"],
        # --host: the server binds loopback by default; kubelet probes and the Service reach the pod IP.
        "args": ["serve", "--model", policy.artifact, "--host", "0.0.0.0", "--port", str(policy.port),
                 "--variant", variant, *decision_log_args(rollout, variant), *_durability_args(rollout, variant),
                 *trusted_key_args(rollout), *workers_args(policy), *envelope_args(rollout, policy),
                 *fairness_args(rollout)],
        # The server's one-line reason to refuse (an unsigned artifact, a bad manifest) becomes the pod's
        # termination message, where `kubectl describe` and the operator's readiness report find it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "ports": [{"name": "http", "containerPort": policy.port, "protocol": "TCP"}],
        "env": _env(rollout, variant, policy),
        "resources": _resources(policy),
        "readinessProbe": _probe("/readyz", period=2, failures=3),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        "securityContext": meta.container_security_context(),
        "volumeMounts": [{"name": vol, "mountPath": path} for vol, path in SCRATCH_VOLUMES.items()],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta.object_meta(
            rollout, name, pod_labels, annotations={meta.ANNOTATION_VERSION: policy.version}
        ),
        "spec": {
            "replicas": policy.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": meta.selector_labels(rollout, variant)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        meta.ANNOTATION_VERSION: policy.version,
                        **scrape_annotations(policy.port),
                    },
                },
                "spec": {
                    # The policy server never talks to the Kubernetes API.
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": meta.pod_security_context(),
                    "terminationGracePeriodSeconds": GRACE_PERIOD_S,
                    "containers": [container],
                    "volumes": [{"name": vol, "emptyDir": {}} for vol in SCRATCH_VOLUMES],
                },
            },
        },
    }


def service(rollout: api.PolicyRollout, variant: meta.Variant) -> dict[str, Any]:
    """The Service `{rollout}-{variant}`: port 80 to the pods' `http` port, whatever number it is."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.object_meta(rollout, meta.workload_name(rollout, variant), meta.labels(rollout, variant)),
        "spec": {
            "type": "ClusterIP",
            "selector": meta.selector_labels(rollout, variant),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
