"""Run PolicyRollouts on this machine: local platform + the operator's reconcile loop on a real clock.

`LocalPlatform` owns the local processes (Prometheus, policy servers, routers, Jobs) and builds
the same `reconciler.Platform` the kopf handlers build; `run_rollout` then calls
`reconciler.reconcile` until the rollout reaches a terminal phase, sleeping as the engine asks
(its `requeue_after`) but at most `tick` seconds, exactly as the operator's daemon does.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rollout_operator import api, checks, reconciler
from rollout_operator.engine import types
from rollout_operator.guardrails import factory as metrics_factory

from rollout_lab.errors import RolloutLabError
from rollout_lab.local import jobs, processes, prometheus, store, traffic, workloads

__all__ = ["LocalPlatform", "RunResult", "Sample", "load_manifest", "run_rollout"]

log = logging.getLogger(__name__)


class ManifestError(RolloutLabError, ValueError):
    """The manifest is not a valid PolicyRollout (the message says which field and why)."""


def load_manifest(path: str | Path) -> api.PolicyRollout:
    """Parse a PolicyRollout manifest (YAML), validated exactly as the API server would."""
    import pydantic
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != api.KIND:
        raise ManifestError(f"{path} is not a PolicyRollout manifest (kind: {api.KIND}, apiVersion: {api.API_VERSION})")
    data.pop("status", None)
    data.setdefault("metadata", {}).setdefault("generation", 1)
    try:
        return api.PolicyRollout.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ManifestError(f"{path}: invalid PolicyRollout: {checks.format_validation_error(exc)}") from None


@dataclasses.dataclass(frozen=True)
class Sample:
    """The rollout as seen after one reconcile (for the live view and the report's plots)."""

    time: float
    phase: str
    step: int
    weight: int
    shadow: bool
    actual_weight: int | None


@dataclasses.dataclass
class RunResult:
    rollout: api.PolicyRollout
    samples: list[Sample]
    started_at: float
    finished_at: float
    timed_out: bool


class LocalPlatform:
    """Every local process one or more rollouts need, behind the reconciler's `Platform`."""

    def __init__(self, workdir: Path, scrape_interval: str = "500ms", seed: int = 0,
                 on_event: Callable[[store.RecordedEvent], None] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.prometheus = prometheus.LocalPrometheus(workdir, scrape_interval)
        # One reward key per run, shared by every server and router (as the operator's per-rollout Secret):
        # a reward for any decision is verified by any replica, a replaced or stopped one's included.
        self.reward_key = secrets.token_urlsafe(32)
        key_env = {"POLICY_SERVER_REWARD_KEY": self.reward_key}
        self.workloads = workloads.LocalWorkloads(workdir, seed=seed, env=key_env)
        self.traffic = traffic.LocalTraffic(workdir, self.workloads, env=key_env)
        self.jobs = jobs.LocalJobs(workdir)
        self.store = store.LocalStore(workdir / "rollouts", on_event)
        self._metrics = None
        self.platform = reconciler.Platform(
            workloads=self.workloads,
            router_for=lambda rollout: self.traffic,
            metrics_for=self._metrics_for,
            write_status=self.store.write_status,
            record_event=self.store.record_event,
            jobs=self.jobs,
        )

    def _metrics_for(self, rollout: api.PolicyRollout):  # -> provider.MetricProvider
        # Local mode always asks its own Prometheus: spec.analysis.prometheusUrl names a cluster's.
        if self._metrics is None:
            self._metrics = metrics_factory.make_metric_provider(
                "prometheus", base_url=self.prometheus.url, timeout=2.0
            )
        return self._metrics

    def start(self) -> None:
        self.prometheus.start()

    def register(self, rollout: api.PolicyRollout) -> None:
        """Declare the rollout's servers and router to Prometheus before they start (so scrapes begin early)."""
        targets = [f"127.0.0.1:{port}" for v in ("stable", "candidate") for port in self.workloads.ports(rollout, v)]
        targets.append(f"127.0.0.1:{self.traffic.port(rollout)}")
        self.prometheus.set_targets(rollout.metadata.name, targets,
                                    {"rollout": rollout.metadata.name, "namespace": rollout.metadata.namespace})

    def stop_rollout(self, rollout: api.PolicyRollout) -> None:
        """Stop the rollout's servers and router (its status and events stay in the store)."""
        self.traffic.finalize(rollout)
        self.workloads.stop_rollout(rollout)

    def current(self, rollout: api.PolicyRollout) -> api.PolicyRollout:
        return rollout.model_copy(update={"status": self.store.status_of(rollout)})

    def close(self) -> None:
        for part in (self.jobs, self.traffic, self.workloads, self.prometheus):
            try:
                part.close() if hasattr(part, "close") else part.stop()
            except Exception as exc:  # cleanup must go on to the next process
                log.warning("cannot stop %s: %s", type(part).__name__, exc)


def run_rollout(local: LocalPlatform, rollout: api.PolicyRollout, *, timeout: float = 900.0, tick: float = 0.5,
                on_tick: Callable[[api.PolicyRollout, Sample], None] | None = None) -> RunResult:
    """Reconcile `rollout` until it is Promoted, RolledBack, Aborted or Failed (or `timeout` seconds pass)."""
    samples: list[Sample] = []
    started = time.time()
    deadline = time.monotonic() + timeout
    settle = 0  # reconciles after reaching a terminal phase (so its last decision is applied everywhere)
    timed_out = False
    while True:
        current = local.current(rollout)
        decision: types.Decision = reconciler.reconcile(local.platform, current, datetime.now(UTC))
        after = local.current(rollout)
        try:
            actual = local.traffic.get_weights(after)
        except Exception:
            actual = None
        sample = Sample(time.time(), after.status.phase.value, after.status.current_step_index,
                        after.status.canary_weight, after.status.shadow,
                        None if actual is None else actual.candidate)
        samples.append(sample)
        if on_tick is not None:
            on_tick(after, sample)
        dead = [p for p in local.workloads.failed()]
        if dead:
            raise processes.ProcessError(f"{dead[0].name} exited; see {dead[0].log_path}:\n{dead[0].tail()}")
        if after.status.phase.terminal:
            settle += 1
            if settle > 2:
                break
        if time.monotonic() > deadline:
            timed_out = True
            break
        wait = tick if decision.requeue_after is None else max(0.05, min(tick, decision.requeue_after))
        time.sleep(wait)
    return RunResult(local.current(rollout), samples, started, time.time(), timed_out)
