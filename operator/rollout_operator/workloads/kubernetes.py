"""Variants as Deployments + Services, created-or-patched and owned by the PolicyRollout.

A variant with no policy to run (the candidate after promotion or rollback) is scaled to
zero rather than deleted: its Service stays, so traffic objects that still name it (with
weight 0) remain valid, and the next rollout reuses the Deployment.

The rollout's reward-key Secret (``resources.reward_key``) is made here, before the first pod
that reads it: created once, never patched.
"""

from __future__ import annotations

import contextlib
from typing import Any

from rollout_operator import api, kube
from rollout_operator.engine import types
from rollout_operator.resources import meta, reward_key, workload
from rollout_operator.workloads import base


class KubernetesWorkloads:
    def __init__(self, client: kube.Client) -> None:
        self.client = client

    def ensure(self, rollout: api.PolicyRollout, workloads: types.Workloads) -> None:
        self._ensure_reward_key(rollout)
        self._ensure_variant(rollout, "stable", workloads.stable)
        if workloads.candidate is not None:
            self._ensure_variant(rollout, "candidate", workloads.candidate)
        else:
            self._scale_to_zero(rollout, "candidate")

    def _ensure_reward_key(self, rollout: api.PolicyRollout) -> None:
        """Create ``{rollout}-reward-key`` once, before any pod refers to it; never patch it (humans rotate it).

        With ``spec.rewardKeySecret`` the user's Secret is only referenced (the controller checked it).
        """
        if rollout.spec.reward_key_secret is not None:
            return
        name = reward_key.secret_name(rollout)
        if self.client.find("v1", "Secret", name, rollout.metadata.namespace) is not None:
            return
        with contextlib.suppress(kube.Conflict):  # made by an earlier pass the cache has not shown yet: it stands
            self.client.create(reward_key.secret(rollout))

    def _ensure_variant(self, rollout: api.PolicyRollout, variant: meta.Variant, policy: api.PolicySpec) -> None:
        self.client.apply(workload.deployment(rollout, variant, policy))
        self.client.apply(workload.service(rollout, variant))

    def _scale_to_zero(self, rollout: api.PolicyRollout, variant: meta.Variant) -> None:
        name = meta.workload_name(rollout, variant)
        current = self.client.find("apps/v1", "Deployment", name, rollout.metadata.namespace)
        if current is not None and (current.get("spec") or {}).get("replicas") != 0:
            self.client.patch("apps/v1", "Deployment", name, rollout.metadata.namespace, {"spec": {"replicas": 0}})

    def observe(self, rollout: api.PolicyRollout) -> base.WorkloadState:
        stable = self._deployment(rollout, "stable")
        candidate = self._deployment(rollout, "candidate")
        candidate_ready = _ready(candidate) and _version(candidate) == meta.label_value(rollout.spec.policy.version)
        stable_ready = _ready(stable)
        return base.WorkloadState(
            candidate_ready=candidate_ready,
            stable_ready=stable_ready,
            stable_running_version=_running_version(stable) if stable_ready else None,
        )

    def _deployment(self, rollout: api.PolicyRollout, variant: meta.Variant) -> dict[str, Any] | None:
        name = meta.workload_name(rollout, variant)
        return self.client.find("apps/v1", "Deployment", name, rollout.metadata.namespace)


def _version(deployment: dict[str, Any] | None) -> str | None:
    if deployment is None:
        return None
    template_labels = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    return template_labels.get(meta.LABEL_VERSION)


def _running_version(deployment: dict[str, Any] | None) -> str | None:
    """The full version string (labels are truncated/sanitised; the annotation is exact)."""
    if deployment is None:
        return None
    annotations = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
    return annotations.get(meta.ANNOTATION_VERSION) or _version(deployment)


def _ready(deployment: dict[str, Any] | None) -> bool:
    """Rolled out: the controller saw the latest spec and every wanted replica is available."""
    if deployment is None:
        return False
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    generation = (deployment.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return False
    return int(status.get("updatedReplicas", status.get("availableReplicas", 0)) or 0) >= wanted and int(
        status.get("availableReplicas", 0) or 0
    ) >= wanted
