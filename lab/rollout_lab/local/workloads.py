"""`WorkloadManager` for local mode: one `policy-server serve` process per variant, on a fixed loopback port.

Each variant keeps its port for the whole run (Prometheus scrapes it from the start), and a
process is replaced when its variant must run another artifact or version (a promotion, a
new candidate) — the local analogue of a Deployment's rolling update, without its gap: every
server shares its port (``serve --reuse-port``), the replacement binds only once its model is
warm, and the old process is stopped (it drains) after that. Until then the old one keeps
serving and the variant does not count as ready, so the engine waits as it would for a rollout.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import httpx
from rollout_operator import api
from rollout_operator.engine import types
from rollout_operator.resources import meta, workload
from rollout_operator.workloads import base

from rollout_lab.local import processes

__all__ = ["LocalWorkloads"]

log = logging.getLogger(__name__)


LISTENING = "policy-server listening on"  # what `serve` prints once it accepts connections


@dataclasses.dataclass
class _Slot:
    port: int
    process: processes.LocalProcess | None = None
    policy: api.PolicySpec | None = None
    retiring: processes.LocalProcess | None = None  # the replaced process, serving until its successor listens


class LocalWorkloads:
    def __init__(self, workdir: Path, seed: int = 0) -> None:
        self.workdir = workdir
        self.seed = seed
        self._slots: dict[tuple[str, str], _Slot] = {}

    def _key(self, rollout: api.PolicyRollout) -> str:
        return f"{rollout.metadata.namespace}/{rollout.metadata.name}"

    def _slot(self, rollout: api.PolicyRollout, variant: meta.Variant) -> _Slot:
        key = (self._key(rollout), variant)
        if key not in self._slots:
            self._slots[key] = _Slot(port=processes.free_port())
        return self._slots[key]

    def port(self, rollout: api.PolicyRollout, variant: meta.Variant) -> int:
        return self._slot(rollout, variant).port

    def url(self, rollout: api.PolicyRollout, variant: meta.Variant) -> str:
        return f"http://127.0.0.1:{self.port(rollout, variant)}"

    def decision_log(self, rollout: api.PolicyRollout, variant: meta.Variant) -> str:
        """``spec.decisionLog.url``/<variant> as in a cluster; without it, the run's work directory."""
        return workload.decision_log_url(rollout, variant) or str(
            self.workdir / "decisions" / rollout.metadata.name / variant
        )

    def ensure(self, rollout: api.PolicyRollout, workloads: types.Workloads) -> None:
        for variant, policy in (("stable", workloads.stable), ("candidate", workloads.candidate)):
            slot = self._slot(rollout, variant)  # type: ignore[arg-type]
            running = slot.process is not None and slot.process.alive
            if policy is None:
                self._stop(slot)
                continue
            if running and slot.policy is not None and (slot.policy.artifact, slot.policy.version) == (
                policy.artifact, policy.version
            ):
                self._settle(slot)
                continue
            self._settle(slot)
            if running and slot.retiring is None:  # hand over: it serves until its successor listens
                slot.retiring = slot.process
            successor, slot.process, slot.policy = slot.process, None, None
            if successor is not None and successor is not slot.retiring:  # never got to listen: retiring one stays
                successor.stop()
            argv = processes.policy_server_command(
                "serve", "--model", policy.artifact, "--port", str(slot.port), "--variant", variant,
                "--log-dir", self.decision_log(rollout, variant), "--seed", str(self.seed),
                "--threads", "1", "--drift-interval-s", "2", "--reuse-port", *workload.trusted_key_args(rollout),
            )
            name = f"{rollout.metadata.name}-{variant}"
            log.info("starting %s: %s %s on port %d", name, policy.artifact, policy.version, slot.port)
            slot.process = processes.LocalProcess(name, argv, self.workdir / "logs", env={
                "POLICY_ROLLOUT": rollout.metadata.name, "POLICY_VARIANT": variant, "POLICY_VERSION": policy.version,
            })
            slot.policy = policy

    def _stop(self, slot: _Slot) -> None:
        # Out of the slot before stopping: another rollout's thread calling failed() must not take a
        # process that is shutting down (it exits while stop() waits) for one that crashed.
        procs = (slot.process, slot.retiring)
        slot.process = slot.retiring = slot.policy = None
        for proc in procs:
            if proc is not None:
                proc.stop()

    def _settle(self, slot: _Slot) -> None:
        """Stop the retiring process once its successor accepts connections."""
        if slot.retiring is not None and slot.process is not None and slot.process.printed(LISTENING):
            retiring, slot.retiring = slot.retiring, None
            retiring.stop()

    def _ready(self, slot: _Slot) -> bool:
        self._settle(slot)
        if slot.process is None or not slot.process.alive or slot.retiring is not None:
            return False
        try:
            return httpx.get(f"http://127.0.0.1:{slot.port}/readyz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def observe(self, rollout: api.PolicyRollout) -> base.WorkloadState:
        stable, candidate = self._slot(rollout, "stable"), self._slot(rollout, "candidate")
        stable_ready = self._ready(stable)
        return base.WorkloadState(
            candidate_ready=self._ready(candidate),
            stable_ready=stable_ready,
            stable_running_version=stable.policy.version if stable_ready and stable.policy else None,
        )

    def failed(self) -> list[processes.LocalProcess]:
        """Processes that should run but exited (the run loop reports them)."""
        return [s.process for s in self._slots.values() if s.process is not None and not s.process.alive]

    def stop_rollout(self, rollout: api.PolicyRollout) -> None:
        for (key, _), slot in self._slots.items():
            if key == self._key(rollout):
                self._stop(slot)

    def close(self) -> None:
        for slot in self._slots.values():
            self._stop(slot)
