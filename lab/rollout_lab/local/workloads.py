"""`WorkloadManager` for local mode: `replicas` `policy-server serve` processes per variant, each on a fixed port.

A variant runs as many processes as its policy's ``replicas`` (the pods of a Deployment); the
router balances over their URLs (``urls``), as a Service over its endpoints. Each replica keeps
its port for the whole run (Prometheus scrapes it from the start), and a process is replaced
when its variant must run another artifact or version (a promotion, a new candidate) — the
local analogue of a Deployment's rolling update, without its gap: every server shares its port
(``serve --reuse-port``), the replacement binds only once its model is warm, and the old process
is stopped (it drains) after that. Until then the old one keeps serving and the variant does not
count as ready, so the engine waits as it would for a rollout.

Every process gets ``env`` (local mode passes the run's ``POLICY_SERVER_REWARD_KEY``), so a
reward for any decision is accepted by any replica, including after the replica that decided
has been replaced or stopped.
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
    envelope: tuple[str, ...] = ()  # its --envelope flags: a changed spec.envelope replaces it, as a pod rolls


def max_replicas(rollout: api.PolicyRollout) -> int:
    """Replicas a variant may need during the run: stable runs the fallback's, then the candidate's once promoted."""
    return max(rollout.spec.policy.replicas, rollout.spec.fallback.replicas)


class LocalWorkloads:
    def __init__(self, workdir: Path, seed: int = 0, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.seed = seed
        self.env = dict(env or {})
        self._slots: dict[tuple[str, str, int], _Slot] = {}

    def _key(self, rollout: api.PolicyRollout) -> str:
        return f"{rollout.metadata.namespace}/{rollout.metadata.name}"

    def _slot(self, rollout: api.PolicyRollout, variant: meta.Variant, replica: int = 0) -> _Slot:
        key = (self._key(rollout), variant, replica)
        if key not in self._slots:
            self._slots[key] = _Slot(port=processes.free_port())
        return self._slots[key]

    def _all_slots(self, rollout: api.PolicyRollout, variant: meta.Variant) -> list[_Slot]:
        return [self._slot(rollout, variant, i) for i in range(max_replicas(rollout))]

    def replicas(self, rollout: api.PolicyRollout, variant: meta.Variant) -> int:
        """Processes the variant runs now: its policy's replicas (stable: the fallback's until promoted)."""
        running = self._slot(rollout, variant).policy
        if running is not None:
            return running.replicas
        return (rollout.spec.fallback if variant == "stable" else rollout.spec.policy).replicas

    def port(self, rollout: api.PolicyRollout, variant: meta.Variant, replica: int = 0) -> int:
        return self._slot(rollout, variant, replica).port

    def ports(self, rollout: api.PolicyRollout, variant: meta.Variant) -> list[int]:
        """Every port the variant may use during the run (Prometheus scrapes them all from the start)."""
        return [s.port for s in self._all_slots(rollout, variant)]

    def url(self, rollout: api.PolicyRollout, variant: meta.Variant) -> str:
        """The first replica's URL (one process to ask about the variant, e.g. its `/v1/model`)."""
        return f"http://127.0.0.1:{self.port(rollout, variant)}"

    def urls(self, rollout: api.PolicyRollout, variant: meta.Variant) -> list[str]:
        """The URLs of the variant's replicas (the endpoints of its Service), in replica order."""
        return [f"http://127.0.0.1:{self.port(rollout, variant, i)}" for i in range(self.replicas(rollout, variant))]

    def decision_log(self, rollout: api.PolicyRollout, variant: meta.Variant) -> str:
        """``spec.decisionLog.url``/<variant> as in a cluster; without it, the run's work directory."""
        return workload.decision_log_url(rollout, variant) or str(
            self.workdir / "decisions" / rollout.metadata.name / variant
        )

    def decision_logs(self, rollout: api.PolicyRollout) -> list[str]:
        """Every decision log the rollout's servers write (a reward may be logged by either variant's servers)."""
        return [self.decision_log(rollout, "stable"), self.decision_log(rollout, "candidate")]

    def ensure(self, rollout: api.PolicyRollout, workloads: types.Workloads) -> None:
        for variant, policy in (("stable", workloads.stable), ("candidate", workloads.candidate)):
            for replica, slot in enumerate(self._all_slots(rollout, variant)):  # type: ignore[arg-type]
                wanted = policy if policy is not None and replica < policy.replicas else None
                self._ensure_replica(rollout, variant, replica, slot, wanted)  # type: ignore[arg-type]

    def _ensure_replica(self, rollout: api.PolicyRollout, variant: meta.Variant, replica: int, slot: _Slot,
                        policy: api.PolicySpec | None) -> None:
        """One replica of the variant: started, kept, or replaced (new artifact/version) without a gap."""
        running = slot.process is not None and slot.process.alive
        if policy is None:
            self._stop(slot)
            return
        envelope = tuple(workload.envelope_args(rollout, policy))
        if running and slot.policy is not None and (slot.policy.artifact, slot.policy.version, slot.envelope) == (
            policy.artifact, policy.version, envelope
        ):
            self._settle(slot)
            return
        self._settle(slot)
        if running and slot.retiring is None:  # hand over: it serves until its successor listens
            slot.retiring = slot.process
        successor, slot.process, slot.policy = slot.process, None, None
        if successor is not None and successor is not slot.retiring:  # never got to listen: retiring one stays
            successor.stop()
        argv = processes.policy_server_command(
            "serve", "--model", policy.artifact, "--port", str(slot.port), "--variant", variant,
            "--log-dir", self.decision_log(rollout, variant), "--seed", str(self.seed + replica),
            "--threads", "1", "--drift-interval-s", "2", "--reuse-port", *workload.trusted_key_args(rollout),
            *envelope,
            *workload.fairness_args(rollout),
        )
        # Replica 0 keeps the single-process name (its log file, the errors that name it).
        name = f"{rollout.metadata.name}-{variant}" + (f"-{replica}" if replica else "")
        log.info("starting %s: %s %s on port %d", name, policy.artifact, policy.version, slot.port)
        slot.process = processes.LocalProcess(name, argv, self.workdir / "logs", env={
            **self.env, "POLICY_ROLLOUT": rollout.metadata.name, "POLICY_VARIANT": variant,
            "POLICY_VERSION": policy.version,
        })
        slot.policy, slot.envelope = policy, envelope

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

    def _variant_ready(self, rollout: api.PolicyRollout, variant: meta.Variant) -> bool:
        """Ready when every replica it should run is ready (a Deployment's available replicas = spec.replicas)."""
        wanted = self.replicas(rollout, variant)
        return all(self._ready(self._slot(rollout, variant, i)) for i in range(wanted))

    def observe(self, rollout: api.PolicyRollout) -> base.WorkloadState:
        stable = self._slot(rollout, "stable")
        stable_ready = self._variant_ready(rollout, "stable")
        return base.WorkloadState(
            candidate_ready=self._variant_ready(rollout, "candidate"),
            stable_ready=stable_ready,
            stable_running_version=stable.policy.version if stable_ready and stable.policy else None,
        )

    def failed(self) -> list[processes.LocalProcess]:
        """Processes that should run but exited (the run loop reports them)."""
        return [s.process for s in self._slots.values() if s.process is not None and not s.process.alive]

    def stop_rollout(self, rollout: api.PolicyRollout) -> None:
        for (key, _, _), slot in self._slots.items():
            if key == self._key(rollout):
                self._stop(slot)

    def close(self) -> None:
        for slot in self._slots.values():
            self._stop(slot)
