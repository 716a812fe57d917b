"""The workload plug-in interface: run each variant's policy and report whether it is ready.

The Kubernetes implementation manages Deployments and Services; local mode (a later issue)
runs policy-server processes. The engine never knows which.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from rollout_operator import api
from rollout_operator.engine import types


@dataclasses.dataclass(frozen=True)
class WorkloadState:
    candidate_ready: bool
    stable_ready: bool
    stable_running_version: str | None


class WorkloadManager(Protocol):
    def ensure(self, rollout: api.PolicyRollout, workloads: types.Workloads) -> None:
        """Make each variant run what `workloads` says (idempotent)."""

    def observe(self, rollout: api.PolicyRollout) -> WorkloadState:
        """Read back readiness and the version each variant actually runs."""
