"""The sequential scenario (`policy-rollouts demo --scenario sequential`): cooling a server room, end to end.

1. Log: the fallback (a thermostat that explores) serves days of `policy_rollouts/Cooling-v0` through a
   real `policy-server serve`; every step carries `context.episode_id`/`step`/`terminal`, and its
   energy reward and overheat cost are posted late, as meter readings are.
2. Train: two candidates with `policy-server train --algorithm constrained-cql` on those episodes: one
   without a cost budget (it sees only the energy bill and cools at the wrong hours: it overheats more
   than the thermostat) and one within `budget` degree-hours per day.
3. Roll both out in local mode with the operator's engine: the offline gate (`ope --trajectories`
   with a constraint on `overheat`) refuses the unconstrained one on its cost budget; the constrained
   one passes, is shadowed, canaried under guardrails on Prometheus and promoted.
4. Report: `report.json` and `report.html`: the gate's per-estimator values and intervals and per-cost upper
   bound vs budget, each candidate's true values in the simulator, training curves and times.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rollout_lab.demo import pipeline, scenario, sequential_report
from rollout_lab.local import episodes, processes, run, view

__all__ = ["FAST", "FULL", "Settings", "episode_traffic", "main", "manifest", "run_sequential", "write_fallback"]

COST = "overheat"


@dataclasses.dataclass(frozen=True)
class Settings:
    episodes: int  # logged days under the fallback
    rate: float  # steps per second while logging and rolling out
    concurrency: int  # episodes in flight
    train_steps: int
    min_effective_trajectories: float
    timing: scenario.Timing
    rollout_timeout: float
    gamma: float = 0.95
    # The constrained candidate trains within `budget` degree-hours of discounted overheat per day; the gate allows
    # `gate_max` at its 95 % upper bound (stricter than the thermostat's own 0.13: the new policy must be safer).
    budget: float = 0.05
    gate_max: float = 0.05
    # the candidates' softmax exploration: closer to the thermostat than 0.5, so the trajectory weights vary less
    temperature: float = 0.7
    # constrained-cql's conservative weight and dual step: the overheat cost is small per step (degrees, mostly
    # 0), and the default CQL weight (0.5) buries it under the conservative terms, so the multiplier never moves.
    cql_alpha: float = 0.05
    lambda_lr: float = 0.5


# The Kish effective number of trajectories (whole-day weights, products of 24 ratios) swings too widely to gate
# the fast form on: 1.6-47 of 400-500 days at softmax temperature 0.5, 2.4-52 of 500 at 0.7 (end-to-end runs
# and simulated logs). The fast form asks for 1 (the check off; the report gives the ESS), the full form for 10.
FAST = Settings(500, 400.0, 48, 2000, 1.0, scenario.FAST, 240.0)
FULL = Settings(1200, 400.0, 64, 3000, 10.0, scenario.FULL, 700.0)
FALLBACK_EPSILON = 0.6
FALLBACK_SETPOINT_C = 23.5
# The trajectory gate's estimator: weighted PDIS alone. Measured on simulated logs (400 days, 6 seeds), its
# 95 % upper bound of the overheat was at most 0.011 for every constrained candidate (simulated truth <= 0.01)
# and at least 0.075 for every unconstrained one (truth 0.28-0.92). Per-decision DR and FQE, whose fitted Q is
# linear per hour, put the constrained candidates' upper bound at 0.15-0.74 on 3 seeds of 6 (truth <= 0.004):
# with them in the gate the candidate that is within budget was refused half the time.
ESTIMATORS = ("wpdis",)


def _env():
    from policy_server.sim import cooling

    return cooling.CoolingEnv()


def write_fallback(out: Path, epsilon: float = FALLBACK_EPSILON, setpoint: float = FALLBACK_SETPOINT_C) -> Path:
    """The trusted rule as a servable artifact: the thermostat of `cooling.thermostat_action`, epsilon-greedy."""
    import torch

    from policy_server import artifact
    from policy_server.ope.logged import LoggedData
    from policy_server.sim import cooling
    from policy_server.train import trainer

    class Thermostat(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            room_c = 24.0 + 4.0 * x[:, :1]
            level = torch.clamp(torch.round((room_c - setpoint) / 1.5), 0.0, 3.0)
            return -(torch.arange(4, dtype=x.dtype).unsqueeze(0) - level) ** 2

    obs = cooling.observe(cooling.initial(np.random.default_rng(0), 512))
    n = obs.shape[0]
    data = LoggedData(obs, np.zeros(n, np.int64), np.ones(n), np.zeros(n), None, len(cooling.COOLING_LEVELS))
    model = trainer.TrainedModel(Thermostat(), "q_values", "rule", 0, 0.0)
    path = trainer.export_artifact(model, data, out, version="thermostat-v1", name="cooling-fallback",
                                   exploration=artifact.Exploration(kind="epsilon_greedy", epsilon=epsilon))
    finish_manifest(path)
    return path


def finish_manifest(path: Path) -> None:
    """Name the features and the cost, so the server labels its metrics (and pre-creates the cost's counters)."""
    from policy_server.sim import cooling

    manifest_path = path / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["costs"] = [COST]
    data["observation"]["names"] = list(cooling.FEATURES)
    manifest_path.write_text(json.dumps(data, indent=2) + "\n")


def policy_of(path: Path):  # -> Callable[[np.ndarray], np.ndarray]
    """The served action probabilities of an exported artifact (its program and exploration rule), for `simulate`."""
    import torch

    manifest = json.loads((path / "manifest.json").read_text())
    program = torch.jit.load(str(path / manifest["program"]))
    exploration = manifest.get("exploration") or {"kind": "greedy"}

    def probabilities(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            values = program(torch.as_tensor(obs, dtype=torch.float32)).double()
        if exploration["kind"] == "softmax":
            return torch.softmax(values / float(exploration["temperature"]), dim=-1).numpy()
        greedy = torch.nn.functional.one_hot(values.argmax(dim=-1), values.shape[-1]).double().numpy()
        eps = float(exploration.get("epsilon", 0.0)) if exploration["kind"] == "epsilon_greedy" else 0.0
        return eps / values.shape[-1] + (1.0 - eps) * greedy

    return probabilities


def simulated(path: Path, gamma: float, days: int = 4000, seed: int = 123) -> dict[str, float]:
    """A policy's true discounted reward and overheat per day, from `days` simulated days (not the log)."""
    from policy_server.sim import cooling

    return {k: round(v, 4) for k, v in cooling.simulate(policy_of(path), days, seed=seed).discounted(gamma).items()}


def log_episodes(live: view.LiveView, workdir: Path, fallback: Path, logs: Path, settings: Settings,
                 seed: int) -> dict[str, Any]:
    """Days under the fallback through a real policy server (decision log with episode keys)."""
    started = time.time()
    with pipeline.logging_server("cooling-logging", fallback, logs, workdir, seed) as url:
        gen = episodes.EpisodeGenerator(url, _env, rate=settings.rate, concurrency=settings.concurrency,
                                        episodes=settings.episodes, seed=seed, prefix="log", drain_s=5.0)
        gen.start()
        deadline = time.monotonic() + 600
        while not gen.finished and time.monotonic() < deadline:
            live.set_stage("1/4 logging", f"thermostat ran {gen.episodes_done}/{settings.episodes} days")
            time.sleep(0.5)
        gen.stop()
    totals = gen.totals().get("stable")
    return {"episodes": gen.episodes_done, "failedEpisodes": gen.failed_episodes,
            "decisions": totals.decisions if totals else 0, "rewards": totals.rewards if totals else 0,
            "seconds": round(time.time() - started, 1), "log": str(logs)}


def train(logs: Path, out: Path, name: str, budget: float | None, settings: Settings, seed: int) -> dict[str, Any]:
    """`policy-server train --algorithm constrained-cql` in a subprocess, as the operator's training Job runs it."""
    result_path = out / f"{name}-result.json"
    args = ["train", "--algorithm", "constrained-cql", "--logs", str(logs), "--out", str(out / name),
            "--version", f"{name}-v1", "--name", f"cooling-{name}", "--gamma", str(settings.gamma),
            "--steps", str(settings.train_steps), "--seed", str(seed), "--exploration", "softmax",
            "--temperature", str(settings.temperature), "--tensorboard", str(out / f"{name}-curves"),
            "--cql-alpha", str(settings.cql_alpha), "--lambda-lr", str(settings.lambda_lr),
            "--write-result", str(result_path)]
    if budget is not None:
        args += ["--cost", COST, "--cost-budget", str(budget)]
    began = time.time()
    log_path = out / "logs" / f"train-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        code = subprocess.run(processes.policy_server_command(*args), stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=900, check=False).returncode
    if code != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        raise processes.ProcessError(f"training {name} failed (exit {code}); see {log_path}:\n{tail}")
    finish_manifest(out / name)
    result = json.loads(result_path.read_text())
    return {"name": name, "artifact": str(out / name), "version": f"{name}-v1", "budget": budget,
            "seconds": round(time.time() - began, 1), "result": result, "curves": _curves(out / f"{name}-curves")}


def _curves(directory: Path) -> dict[str, list[tuple[int, float]]]:
    try:
        from policy_server.train import curves
    except ImportError:  # a build without the training curves
        return {}
    return curves.read_curves(directory) if directory.exists() else {}


def manifest(name: str, candidate: Path, version: str, fallback: Path, logs: Path, settings: Settings) -> dict:
    """A rollout gated by trajectory OPE with an overheat budget, shadowed, canaried at 20/50/80 %, promoted."""
    window = {"window": settings.timing.window}
    guard = {"failureLimit": 2, "inconclusiveLimit": 5}
    return {
        "apiVersion": "policy.rollouts.io/v1alpha1",
        "kind": "PolicyRollout",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {
            "policy": {"image": "local", "artifact": str(candidate), "version": version},
            "fallback": {"image": "local", "artifact": str(fallback), "version": "thermostat-v1"},
            # one episode, one variant: the router keeps a day on whichever variant served its first hour
            "traffic": {"stickyKey": "X-Episode-Id"},
            "offlineEvaluation": {
                "dataset": str(logs),
                "trajectory": {"gamma": settings.gamma, "estimators": list(ESTIMATORS),
                               "agreementTolerance": 0.2,
                               "minEffectiveTrajectories": settings.min_effective_trajectories},
                "baseline": "fallback",
                "minLowerBoundRatio": 0.9,
                "confidence": 0.95,
                "constraints": [{"cost": COST, "max": settings.gate_max}],
            },
            "steps": [
                {"shadow": {"duration": settings.timing.shadow}},
                {"setWeight": 20},
                {"pause": {"duration": settings.timing.pauses[0]}},
                {"setWeight": 50},
                {"pause": {"duration": settings.timing.pauses[1]}},
                {"setWeight": 80},
                {"pause": {"duration": settings.timing.pauses[2]}},
            ],
            "analysis": {
                "interval": settings.timing.interval,
                "guardrails": [
                    # share of the candidate's hours that ended above the limit
                    {"name": "overheat", "template": "constraint-violation-rate", "params": window,
                     "condition": "< 0.1", **guard},
                    {"name": "energy-savings", "template": "reward-ratio", "params": window,
                     "condition": "> 0.8", **guard},
                    {"name": "errors", "template": "error-rate", "params": window, "condition": "< 0.02", **guard},
                ],
            },
            "progressDeadline": "5m",
        },
    }


def _rollout(live: view.LiveView, local: run.LocalPlatform, name: str, candidate: dict[str, Any], fallback: Path,
             logs: Path, out: Path, settings: Settings, seed: int) -> dict[str, Any]:
    """One candidate through the engine in local mode, with days of the simulator played against its router."""
    from rollout_operator import api

    document = manifest(name, Path(candidate["artifact"]), candidate["version"], fallback, logs, settings)
    manifest_path = out / "manifests" / f"{name}.yaml"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(yaml.safe_dump(document, sort_keys=False))
    rollout = run.load_manifest(manifest_path)
    local.register(rollout)
    gen = episodes.EpisodeGenerator(local.traffic.url(rollout), _env, rate=settings.rate / 2,
                                    concurrency=settings.concurrency, seed=seed, prefix=name)
    evidence = pipeline.Evidence(rollout)

    def on_tick(current: api.PolicyRollout, sample: run.Sample) -> None:
        if not gen.started and sample.actual_weight is not None and local.workloads.observe(current).stable_ready:
            gen.start()
        evidence.observe(current, sample.time)
        live.tick(current, gen.totals() if gen.started else {})

    try:
        result = run.run_rollout(local, rollout, timeout=settings.rollout_timeout, tick=0.5, on_tick=on_tick)
    finally:
        gen.stop()
        local.stop_rollout(rollout)
    s = result.rollout.status
    live_since = next((x.time for x in result.samples if x.weight > 0), None)
    traffic = {v: {"decisions": b.decisions, "rewards": b.rewards, "meanReward": b.reward_sum / b.rewards
                   if b.rewards else None, "overheatShare": b.violations / b.rewards if b.rewards else None}
               for v, b in gen.totals(since=live_since or 0.0).items() if v != "error"}
    return {
        "candidate": candidate["name"], "version": candidate["version"], "rollout": name, "outcome": s.phase.value,
        "stopped_at": pipeline.stopped_at(result.rollout, served_live=live_since is not None),
        "candidate_live_decisions": traffic.get("candidate", {}).get("decisions", 0) if live_since else 0,
        "message": s.message, "timedOut": result.timed_out,
        "seconds": round(result.finished_at - result.started_at, 1),
        "offlineEvaluation": s.offline_evaluation.wire() if s.offline_evaluation else None,
        "gate": gate_summary(local.workdir, name),
        "guardrails": [g.wire() for g in s.guardrails], "history": [h.wire() for h in s.history],
        "trafficWhileLive": traffic, "episodes": gen.episodes_done,
        "errors": sum(b.errors for b in gen.totals().values()),
        "timeline": [dataclasses.asdict(x) for x in result.samples], "analyses": evidence.analyses,
        "manifest": str(manifest_path),
    }


def gate_summary(workdir: Path, rollout: str) -> dict[str, Any] | None:
    """The trajectory gate's numbers from its Job's result: per-estimator values with intervals, costs vs budget."""
    paths = sorted((workdir / "jobs").glob(f"{rollout}-*.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(paths):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("mode") != "trajectories":
            continue
        return {
            "verdict": result.get("verdict"), "reason": result.get("reason"), "ess": result.get("ess"),
            "n": result.get("n"), "baselineValue": result.get("baselineValue"),
            "estimates": [{k: e.get(k) for k in ("estimator", "value", "ciLow", "ciHigh", "lowerBound", "required",
                                                  "verdict")} for e in result.get("estimates", [])],
            "costs": [{k: e.get(k) for k in ("criterion", "estimator", "value", "upperBound", "budget", "verdict")}
                      for e in result.get("constraints", [])],
        }
    return None


def run_sequential(out: Path, fast: bool = False, seed: int = 0, live: view.LiveView | None = None) -> dict[str, Any]:
    """The whole scenario; writes `out/report.json` and `out/report.html` and returns the report."""
    settings = FAST if fast else FULL
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "work"
    live = live or view.LiveView()
    began = time.time()
    with pipeline.local_platform(workdir, seed, live, "Prometheus") as local:
        fallback = write_fallback(out / "artifacts" / "fallback")
        logs = out / "decision-log"
        logging = log_episodes(live, workdir, fallback, logs, settings, seed)
        live.set_stage("2/4 training", f"two constrained-cql candidates on {logging['episodes']} logged days")
        trained_at = time.time()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(train, logs, out / "artifacts", name, budget, settings, seed)
                       for name, budget in (("unconstrained", None), ("constrained", settings.budget))]
            candidates = [f.result() for f in futures]
        training = {"seconds": round(time.time() - trained_at, 1), "steps": settings.train_steps,
                    "algorithm": "constrained-cql", "candidates": candidates}
        truth = {"fallback": simulated(fallback, settings.gamma),
                 **{c["name"]: simulated(Path(c["artifact"]), settings.gamma) for c in candidates}}
        live.set_stage("3/4 rollouts", "cooling-unconstrained, cooling-constrained")
        with concurrent.futures.ThreadPoolExecutor(len(candidates)) as pool:
            futures = [pool.submit(_rollout, live, local, f"cooling-{c['name']}", c, fallback, logs, out,
                                   settings, seed + 1 + i) for i, c in enumerate(candidates)]
            rollouts = [f.result() for f in futures]
        live.set_stage("4/4 report", str(out / "report.json"))
    result = {
        "scenario": "sequential", "fast": fast, "seed": seed, "wallSeconds": round(time.time() - began, 1),
        "environment": "policy_rollouts/Cooling-v0 (energy reward, overheat cost in degree-hours, delayed effects)",
        "gamma": settings.gamma, "budget": settings.budget, "gateMax": settings.gate_max, "logging": logging,
        "training": training,
        "simulated": truth, "scenarios": rollouts,
        "events": [dataclasses.asdict(e) for e in local.store.events],
    }
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str))
    sequential_report.write_html(json.loads((out / "report.json").read_text()), out / "report.html")
    return result


def episode_traffic(url: str, rate: float, seed: int = 0) -> episodes.EpisodeGenerator:
    """Days of the cooling environment against `url` (`policy-rollouts run --env cooling`)."""
    env = _env()
    return episodes.EpisodeGenerator(url, _env, rate=rate, seed=seed, prefix="day", drain_s=env.max_delay_s + 2)


def main(out: Path, fast: bool, seed: int) -> int:
    """`policy-rollouts demo --scenario sequential`: run it, print one line per rollout, exit 0 or 1."""
    import sys

    from rollout_lab.local import processes as local_processes

    try:
        result = run_sequential(out, fast=fast, seed=seed)
    except (pipeline.DemoError, local_processes.ProcessError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    for s in result["scenarios"]:
        gate = s.get("gate") or {}
        print(f"{s['rollout']:>22}: {s['outcome']} ({'promoted' if s['stopped_at'] is None else s['stopped_at']}); "
              f"gate {gate.get('verdict')}: {gate.get('reason')}")
    truth = ", ".join(f"{k} {v['overheat']:.3g}" for k, v in result["simulated"].items())
    print(f"simulated discounted overheat per day: {truth} (gate max {result['gateMax']})")
    print(f"report: {out / 'report.html'}  ({result['wallSeconds']} s)")
    return 0
