"""Offline-evaluation and training Jobs on Kubernetes: create the requested ones, read them back.

A Job reports its result as its container's termination message (see `resources.jobs`), which
the kubelet copies into the Pod's status; this module reads it from the Job's Pods. RBAC:
`create/get/list` on `batch/jobs`, `list` on `pods`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, Protocol

from rollout_operator import api, kube
from rollout_operator.engine import types
from rollout_operator.resources import job_policy
from rollout_operator.resources import jobs as job_resources

__all__ = ["JobRunner", "KubernetesJobs", "awaited_ids", "job_state", "termination_result"]

log = logging.getLogger(__name__)
JSON = dict[str, Any]


class JobRunner(Protocol):
    def observe(self, rollout: api.PolicyRollout) -> dict[str, types.JobObservation]:
        """The rollout's Jobs by request id, with their state and reported result."""

    def ensure(self, rollout: api.PolicyRollout, requests: tuple[types.JobRequest, ...],
               observed: dict[str, types.JobObservation]) -> None:
        """Create each requested Job that does not exist yet (never a second one)."""


def job_state(job: JSON) -> tuple[types.JobState, str | None]:
    """Running / Succeeded / Failed from a Job's status, with the Failed condition's reason."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") in ("Complete", "SuccessCriteriaMet"):
            return types.JobState.SUCCEEDED, None
        if condition.get("type") in ("Failed", "FailureTarget"):
            reason, message = condition.get("reason") or "Failed", condition.get("message") or ""
            return types.JobState.FAILED, f"{reason}: {message}".rstrip(": ")
    return types.JobState.RUNNING, None


def termination_result(pods: list[JSON]) -> tuple[JSON | None, str | None]:
    """The JSON termination message of the Job's most recently finished container, and the raw text."""
    finished = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != job_resources.CONTAINER_NAME:
                continue
            terminated = (status.get("state") or {}).get("terminated")
            if terminated and terminated.get("message"):
                finished.append((terminated.get("finishedAt") or "", terminated["message"]))
    if not finished:
        return None, None
    text = max(finished)[1]
    try:
        parsed = json.loads(text)
    except ValueError:
        return None, text
    return (parsed if isinstance(parsed, dict) else None), text


def awaited_ids(status: api.PolicyRolloutStatus) -> set[str]:
    """Jobs whose outcome status has not recorded yet: only their Pods' results are read."""
    ids = {e.job_id for e in status.training_jobs if e.phase in ("Pending", "Running")}
    evaluation = status.offline_evaluation
    if evaluation is not None and evaluation.phase == "Running":
        ids.add(evaluation.job_id)
    return ids


class KubernetesJobs:
    """Jobs through the API server, only with the images and ServiceAccounts `allowed` (None: any)."""

    def __init__(self, client: kube.Client, allowed: job_policy.JobAllowList | None = None) -> None:
        self.client = client
        self.allowed = allowed

    def _selector(self, rollout: api.PolicyRollout) -> str:
        return f"{api.LABEL_ROLLOUT}={rollout.metadata.name},{job_resources.LABEL_JOB_ID}"

    def observe(self, rollout: api.PolicyRollout) -> dict[str, types.JobObservation]:
        namespace = rollout.metadata.namespace
        selector = self._selector(rollout)
        result: dict[str, types.JobObservation] = {}
        awaited = awaited_ids(rollout.status)
        pods: list[JSON] | None = None
        for job in self.client.list("batch/v1", "Job", namespace, selector):
            labels = (job.get("metadata") or {}).get("labels") or {}
            ident = labels.get(job_resources.LABEL_JOB_ID)
            if not ident:
                continue
            state, message = job_state(job)
            parsed = None
            if state is not types.JobState.RUNNING and ident in awaited:
                if pods is None:  # one list for every finished Job of this rollout
                    pods = self.client.list("v1", "Pod", namespace, selector)
                mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(
                    job_resources.LABEL_JOB_ID) == ident]
                parsed, raw = termination_result(mine)
                if parsed is None and raw and state is types.JobState.FAILED:
                    message = f"{message}; last output: {raw[-500:]}"
            result[ident] = types.JobObservation(state=state, result=parsed, message=message)
        return result

    def ensure(self, rollout: api.PolicyRollout, requests: tuple[types.JobRequest, ...],
               observed: dict[str, types.JobObservation]) -> None:
        missing = [r for r in requests if r.id not in observed]
        refused = self.allowed.problems(rollout) if missing and self.allowed is not None else []
        if refused:
            # A spec edited mid-rollout (a new one fails before anything is created): the controller's
            # SpecProblem event says why; nothing runs with what the operator's policy does not allow.
            log.warning("not creating Jobs for %s: %s", rollout.metadata.name, "; ".join(refused))
            return
        for request in missing:
            job = job_resources.build(rollout, request)
            for companion in job_resources.companions(rollout, request):  # the rendezvous Service of workers > 1
                with contextlib.suppress(kube.Conflict):  # the rollout's, made for an earlier training Job
                    self.client.create(companion)
            try:
                self.client.create(job)
                log.info("created Job %s for %s", job["metadata"]["name"], rollout.metadata.name)
            except kube.Conflict:
                pass  # created by an earlier pass whose observation missed it: it is the same Job
