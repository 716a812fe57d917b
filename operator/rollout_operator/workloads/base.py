"""The workload plug-in interface: run each variant's policy and report whether it is ready.

The Kubernetes implementation manages Deployments and Services; local mode (a later issue)
runs policy-server processes. The engine never knows which.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from rollout_operator import api
from rollout_operator.engine import types

__all__ = ["WorkloadManager", "WorkloadState"]


@dataclasses.dataclass(frozen=True)
class WorkloadState:
    """What `WorkloadManager.observe` read back: each variant's readiness and the stable version."""

    candidate_ready: bool
    stable_ready: bool
    stable_running_version: str | None


class WorkloadManager(Protocol):
    """Runs each variant's policy (Deployments and Services, or local processes) and reports readiness."""

    def ensure(self, rollout: api.PolicyRollout, workloads: types.Workloads) -> None:
        """Make each variant run what `workloads` says (idempotent)."""

    def observe(self, rollout: api.PolicyRollout) -> WorkloadState:
        """Read back readiness and the version each variant actually runs."""
