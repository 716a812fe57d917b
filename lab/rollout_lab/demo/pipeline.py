"""The demo, end to end: log → train → offline gate → shadow → canary → rollback / promotion → report.

1. Log: the fallback policy (list price, exploring) serves simulated customers through a real
   `policy-server serve`; decisions and delayed rewards/costs land in its Parquet decision log.
2. Train: two candidates on that log (see `artifacts`): one honest, one that games the proxy reward.
3. Roll out three scenarios with the operator's engine in local mode (`local.run`), all at once:
   the reward hacker (stopped by the offline gate's margin-violation budget: no customer served),
   the honest candidate (offline gate, judged shadow, canary at 20/50/80 % under guardrail
   templates and the sequential judge, promoted) and the honest candidate in a market that shifts
   once it is live (rolled back by the margin-floor guardrail), with Prometheus scraping the
   servers and customers arriving all along.
   Each variant runs 2 server processes behind the router; customers report outcomes through the
   router, 10 % of them late (a random delay up to longer than a canary step).
4. Report: `report.json` (per scenario: outcome, `stopped_at`, `candidate_live_decisions`, the
   gate's criteria, every analysis, the judge's interval, the rewards posted, joined and lost per
   variant) and `report.html`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from rollout_operator import api

from rollout_lab.demo import artifacts, report, scenario
from rollout_lab.errors import RolloutLabError
from rollout_lab.local import loadgen, processes, rewards, run, view

__all__ = ["DemoError", "run_demo"]


class DemoError(RolloutLabError, RuntimeError):
    """The demo could not run; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Settings:
    fast: bool
    log_decisions: int
    rate: float
    train_steps: int
    timing: scenario.Timing
    rollout_timeout: float
    # Feedback during the rollouts: this share of outcomes is reported late, after a uniform delay up to
    # feedback_max_s (longer than a canary step), so some rewards arrive after the step, the rollback or
    # the promotion; the others after the simulator's own delay (mean 0.5 s, at most 3 s).
    late_share: float
    feedback_max_s: float


# Customers per season of the simulated market. The logged data must span a whole season: a
# candidate trained on part of one extrapolates into seasons it never saw (the honest candidate
# then undercut the margin floor once the rollout's traffic reached them, and whether it was
# promoted depended on how fast the machine ran).
SEASON_CUSTOMERS = 4000
FAST = Settings(True, 4500, 250.0, 1500, scenario.FAST, 200.0, late_share=0.1, feedback_max_s=10.0)
FULL = Settings(False, 15000, 250.0, 4000, scenario.FULL, 700.0, late_share=0.1, feedback_max_s=75.0)


def _env(seed: int):
    from policy_server.sim import pricing

    env = pricing.PricingEnv(season_period=SEASON_CUSTOMERS)
    env.reset(seed=seed)
    return env


@contextlib.contextmanager
def logging_server(name: str, model: Path, logs: Path, workdir: Path, seed: int) -> Iterator[str]:
    """A real `policy-server serve` of `model` logging to `logs` (the fallback's traffic a candidate learns
    from); yields its URL once ready, then stops it with SIGTERM so the log writes what it buffered."""
    port = processes.free_port()
    server = processes.LocalProcess(name, processes.policy_server_command(
        "serve", "--model", str(model), "--port", str(port), "--variant", "stable", "--log-dir", str(logs),
        "--seed", str(seed), "--threads", "1"), workdir / "logs")
    try:
        server.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=30)


def _log_fallback(live: view.LiveView, workdir: Path, fallback: Path, logs: Path, settings: Settings,
                  seed: int) -> dict[str, Any]:
    started = time.time()
    with logging_server("fallback-logging", fallback, logs, workdir, seed) as url:
        gen = loadgen.TrafficGenerator(url, _env(seed), rate=settings.rate, drain_s=4.0)
        gen.start()
        while gen.sent < settings.log_decisions:
            live.set_stage("1/4 logging", f"fallback served {gen.sent}/{settings.log_decisions} customers")
            time.sleep(0.5)
        gen.stop()
        time.sleep(0.5)
    totals = gen.totals().get("stable", loadgen.Bucket())
    return {"decisions": totals.decisions, "rewards": totals.rewards,
            "conversion": totals.reward_sum / max(1, totals.rewards),
            "violationRate": totals.violations / max(1, totals.rewards), "seconds": round(time.time() - started, 1),
            "log": str(logs)}


@dataclasses.dataclass(frozen=True)
class Plan:
    """One rollout of the demo: a trained candidate, and whether the market shifts once it serves customers."""

    name: str
    candidate: artifacts.Candidate
    description: str
    drift: bool = False


def _plans(candidates: list[artifacts.Candidate]) -> list[Plan]:
    """The reward hacker, the honest candidate, and the honest candidate again in a market that shifts live."""
    by_name = {c.name: c for c in candidates}
    honest = by_name["constrained"]
    return [
        Plan("conversion-only", by_name["conversion-only"], by_name["conversion-only"].description),
        Plan("constrained", honest, honest.description),
        Plan("drift", honest, f"{honest.description}; supplier costs rise once it serves customers (the margin "
             f"floor goes from 10 % to {scenario.DRIFT_MIN_MARGIN:.0%}), after the log and the shadow", drift=True),
    ]


def stopped_at(rollout: api.PolicyRollout, served_live: bool) -> str | None:
    """Where the candidate was stopped: "offline-gate", "shadow", "step-N" (1-based spec step), None if promoted."""
    status = rollout.status
    if status.phase is api.Phase.PROMOTED:
        return None
    evaluation = status.offline_evaluation
    if evaluation is not None and evaluation.phase in ("Failed", "Refused", "Error"):
        return "offline-gate"
    if not served_live:
        return "shadow"
    return f"step-{status.current_step_index + 1}"


class Evidence:
    """What each analysis measured and what the judge concluded, as the rollout went (for the report)."""

    def __init__(self, rollout: api.PolicyRollout) -> None:
        analysis = rollout.spec.analysis
        self.conditions = {g.name: g.condition for g in [*analysis.guardrails, *analysis.shadow_guardrails]}
        self.shadow = {g.name for g in analysis.shadow_guardrails}
        self.analyses: list[dict[str, Any]] = []
        self.judge: list[dict[str, Any]] = []
        self._last: str | None = None

    def observe(self, rollout: api.PolicyRollout, now: float) -> None:
        status = rollout.status
        if status.last_analysis_at is None or status.last_analysis_at == self._last:
            return
        self._last = status.last_analysis_at
        for g in status.guardrails:
            if g.measured_at == status.last_analysis_at and g.name in self.conditions:
                self.analyses.append({"t": now, "guardrail": g.name, "value": g.value,
                                      "verdict": g.verdict.value if g.verdict else None,
                                      "condition": self.conditions[g.name], "shadow": g.name in self.shadow})
        judge = status.judge
        if judge is not None and judge.estimate is not None:
            self.judge.append({"t": now, "estimate": judge.estimate, "lower": judge.lower, "upper": judge.upper,
                               "decision": judge.decision})

    def shadow_summary(self, events: list[Any], rollout_name: str) -> dict[str, Any] | None:
        shadow = [a for a in self.analyses if a["shadow"]]
        if not shadow:
            return None
        last = {a["guardrail"]: a for a in shadow}
        passed = any(e.rollout == rollout_name and e.reason == "ShadowPassed" for e in events)
        return {"passed": passed, "guardrails": [{"name": name, "value": a["value"], "verdict": a["verdict"],
                                                  "condition": a["condition"]} for name, a in last.items()]}


def _failing_guardrail(rollout: api.PolicyRollout) -> str | None:
    limits = {g.name: g.failure_limit for g in rollout.spec.analysis.guardrails}
    for entry in rollout.status.guardrails:
        if entry.name in limits and entry.consecutive_failures >= limits[entry.name]:
            return entry.name
    if rollout.status.judge is not None and rollout.status.judge.decision in ("harm", "rollback"):
        return "judge"
    return None


def _scenario(live: view.LiveView, local: run.LocalPlatform, plan: Plan, fallback: Path,
              logs: Path, out: Path, settings: Settings, seed: int) -> dict[str, Any]:
    candidate = plan.candidate
    name = f"pricing-{plan.name}"
    document = scenario.manifest(name, candidate.artifact, candidate.version, fallback, logs, settings.timing)
    manifest_path = out / "manifests" / f"{name}.yaml"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(yaml.safe_dump(document, sort_keys=False))
    rollout = run.load_manifest(manifest_path)
    local.register(rollout)
    env = _env(seed)
    # On stop, wait for every delayed reward: the servers stop only after the last one is posted.
    gen = loadgen.TrafficGenerator(local.traffic.url(rollout), env, rate=settings.rate,
                                   drain_s=settings.feedback_max_s + 5.0, late_share=settings.late_share,
                                   late_max_s=settings.feedback_max_s, seed=seed)
    evidence = Evidence(rollout)
    live.print(f"rollout {name}: {plan.description}")

    def on_tick(current: api.PolicyRollout, sample: run.Sample) -> None:
        # customers arrive once the router routes and the stable policy answers (a deployed service's traffic)
        if not gen.started and sample.actual_weight is not None and local.workloads.observe(current).stable_ready:
            gen.start()
        if plan.drift and sample.weight > 0:
            env.min_margin = scenario.DRIFT_MIN_MARGIN  # the market shifts once the candidate serves customers
        evidence.observe(current, sample.time)
        live.tick(current, gen.totals() if gen.started else {})

    try:
        result = run.run_rollout(local, rollout, timeout=settings.rollout_timeout, tick=0.5, on_tick=on_tick)
    finally:
        gen.stop()
        local.stop_rollout(rollout)  # SIGTERM: every server writes what its decision log buffered
    # Joined after the run, from every log of the rollout (a reward may be logged by the other variant's servers).
    reward_counts = rewards.account(gen.reward_ledgers(),
                                    rewards.joined_request_ids(local.workloads.decision_logs(rollout)))
    final = result.rollout
    s = final.status
    traffic = {}
    live_since = next((x.time for x in result.samples if x.weight > 0), None)
    for variant, b in gen.totals(since=live_since or 0.0).items():
        if variant == "error":
            continue
        traffic[variant] = {"decisions": b.decisions, "rewards": b.rewards,
                            "conversion": b.reward_sum / b.rewards if b.rewards else None,
                            "violationRate": b.violations / b.rewards if b.rewards else None}
    live_decisions = traffic.get("candidate", {}).get("decisions", 0) if live_since is not None else 0
    entry: dict[str, Any] = {
        "candidate": plan.name,
        "version": candidate.version,
        "description": plan.description,
        "rollout": name,
        "outcome": s.phase.value,
        "started_at": result.started_at,
        "stopped_at": stopped_at(final, served_live=live_since is not None),
        "candidate_live_decisions": live_decisions,
        "message": s.message,
        "timedOut": result.timed_out,
        "seconds": round(result.finished_at - result.started_at, 1),
        "offlineEvaluation": s.offline_evaluation.wire() if s.offline_evaluation else None,
        "guardrails": [g.wire() for g in s.guardrails],
        "judge": s.judge.wire() if s.judge else None,
        "history": [h.wire() for h in s.history],
        "trafficWhileLive": traffic,
        "errors": sum(b.errors for b in gen.totals().values()),
        **rewards.summary(reward_counts),
        "timeline": [dataclasses.asdict(x) for x in result.samples],
        "trafficSeries": gen.series(),
        "analyses": evidence.analyses,
        "judgeSeries": evidence.judge,
        "shadowAnalysis": evidence.shadow_summary(local.store.events, name),
        "manifest": str(manifest_path),
    }
    if s.phase is api.Phase.ROLLED_BACK:
        entry["guardrail"] = _failing_guardrail(final)
    return entry


@contextlib.contextmanager
def local_platform(workdir: Path, seed: int, live: view.LiveView, what: str) -> Iterator[run.LocalPlatform]:
    """A started local platform (Prometheus; the rollouts add their processes) inside the live view, closed on
    the way out whatever happens; a missing binary is one line (DemoError), not a traceback."""
    local = run.LocalPlatform(workdir, scrape_interval="500ms", seed=seed, on_event=live.event)
    try:
        with live:
            live.set_stage("0/4 starting", f"{what} in {workdir}")
            try:
                local.start()
            except FileNotFoundError as exc:
                raise DemoError(str(exc)) from None
            yield local
    finally:
        local.close()


def run_demo(out: Path, fast: bool = False, seed: int = 0, live: view.LiveView | None = None,
             max_feedback_delay: float | None = None) -> dict[str, Any]:
    settings = FAST if fast else FULL
    if max_feedback_delay is not None:
        settings = dataclasses.replace(settings, feedback_max_s=max_feedback_delay)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "work"
    live = live or view.LiveView()
    began = time.time()
    with local_platform(workdir, seed, live, "Prometheus and the fallback policy") as local:
        fallback = artifacts.write_fallback(out / "artifacts" / "fallback", _env(seed + 100))
        logs = out / "decision-log"
        logging = _log_fallback(live, workdir, fallback, logs, settings, seed)
        live.set_stage("2/4 training", f"two candidates on {logging['rewards']} logged decisions "
                       f"({settings.train_steps} steps each, CPU)")
        trained_at = time.time()
        candidates = artifacts.train_candidates(str(logs), out / "artifacts", settings.train_steps, seed)
        training = {"seconds": round(time.time() - trained_at, 1), "steps": settings.train_steps,
                    "algorithm": "reward-model", "candidates": [
                        {"name": c.name, "version": c.version, "artifact": str(c.artifact),
                         "description": c.description} for c in candidates]}
        # Every rollout at once, as an operator runs many: each has its own servers, router and traffic.
        plans = _plans(candidates)
        live.set_stage("3/4 rollouts", ", ".join(f"pricing-{p.name}" for p in plans))
        with concurrent.futures.ThreadPoolExecutor(len(plans)) as pool:
            futures = [pool.submit(_scenario, live, local, p, fallback, logs, out, settings, seed + 1 + i)
                       for i, p in enumerate(plans)]
            scenarios = [f.result() for f in futures]
        live.set_stage("4/4 report", str(out / "report.html"))
    result = {
        "fast": fast,
        "seed": seed,
        "wallSeconds": round(time.time() - began, 1),
        "environment": "policy_rollouts/Pricing-v0 (conversion reward, margin_violation cost, delayed feedback, drift)",
        "logging": logging,
        "training": training,
        "offlineGate": "policy-server ope run as the rollout's local offline-evaluation Job (engine-driven)",
        "scenarios": scenarios,
        "events": [dataclasses.asdict(e) for e in local.store.events],
    }
    (out / "report.json").write_text(json.dumps(result, indent=2))
    report.write_html(result, out / "report.html")
    return result
