"""The subcommands this package adds to `policy-rollouts`: `run`, `demo` and `bench-judges`.

The operator's CLI finds them through the `policy_rollouts.commands` entry point (see
`rollout_operator.cli.main`), so the operator never imports this package: an operator image
without torch and gymnasium has no `run` or `demo`, and says so. Heavy imports stay inside the
handlers so that registering the commands costs nothing.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rollout_lab.judge_bench import cli as bench_cli

__all__ = ["demo_command", "register", "run_command"]

# Measured on the 2-core reference machine; README and docs/local-mode.md give the same figure.
FAST_DEMO_TIME = "about 100 s on 2 idle cores"


def _needs_local_dependencies(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """One line instead of a traceback where torch, gymnasium or pyarrow are missing (an operator image)."""

    @functools.wraps(command)
    def checked(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ModuleNotFoundError as exc:
            sys.stderr.write(f"error: policy-rollouts {args.command} needs the local-mode dependencies (module "
                             f"{exc.name!r} is missing): pip install 'policy-rollouts[server]'\n")
            return 2

    return checked


@_needs_local_dependencies
def run_command(args: argparse.Namespace) -> int:
    from rollout_operator import checks

    from rollout_lab.local import loadgen, processes, run, view

    logging.basicConfig(level=logging.WARNING)
    try:
        rollout = run.load_manifest(args.filename)
    except run.ManifestError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    # Everything that cannot work is said now, before any process starts.
    problems = checks.spec_problems(rollout) + checks.local_artifact_problems(rollout)
    if problems:
        sys.stderr.write("".join(f"error: {args.filename}: {problem}\n" for problem in problems))
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="policy-rollouts-local-"))
    live = view.LiveView()
    local = run.LocalPlatform(workdir, seed=args.seed, on_event=live.event)
    gen = None
    try:
        try:
            local.start()
        except FileNotFoundError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        from policy_server.sim import pricing

        local.register(rollout)
        env = pricing.PricingEnv()
        env.reset(seed=args.seed)
        # On stop, wait for the delayed rewards still due (the servers stop after them).
        gen = loadgen.TrafficGenerator(local.traffic.url(rollout), env, rate=args.rate, drain_s=env.max_delay_s + 2)
        if args.env == "cooling":  # days of the cooling environment (episodes) instead of pricing customers
            from rollout_lab.demo import sequential

            gen = sequential.episode_traffic(local.traffic.url(rollout), rate=args.rate, seed=args.seed)

        def on_tick(current, sample) -> None:  # type: ignore[no-untyped-def]
            if args.rate > 0 and not gen.started and sample.actual_weight is not None \
                    and local.workloads.observe(current).stable_ready:
                gen.start()
            live.tick(current, gen.totals() if gen.started else {})

        with live:
            live.set_stage("rollout", f"{rollout.metadata.name} (workdir {workdir})")
            result = run.run_rollout(local, rollout, timeout=args.timeout, on_tick=on_tick)
    except processes.ProcessError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    finally:
        if gen is not None:
            gen.stop()
        local.close()
    status = result.rollout.status
    print(f"{rollout.metadata.name}: {status.phase.value}: {status.message or ''}")
    if gen is not None and gen.started:
        from rollout_lab.local import rewards

        counts = rewards.summary(rewards.account(gen.reward_ledgers(), rewards.joined_request_ids(
            local.workloads.decision_logs(rollout))))
        print(f"rewards: posted {counts['rewards_posted']}, joined {counts['rewards_joined']}, "
              f"lost {counts['rewards_lost']}")
    print(f"status, events and process logs: {workdir}")
    if result.timed_out:
        return 3
    return 0 if status.phase.value == "Promoted" else 1


@_needs_local_dependencies
def demo_command(args: argparse.Namespace) -> int:
    from rollout_lab.demo import pipeline
    from rollout_lab.local import processes

    logging.basicConfig(level=logging.WARNING)
    if args.scenario == "sequential":
        from rollout_lab.demo import sequential

        return sequential.main(Path(args.out), fast=args.fast, seed=args.seed)
    if args.max_feedback_delay is not None and not args.max_feedback_delay > 0:
        sys.stderr.write(f"error: --max-feedback-delay must be seconds > 0, got {args.max_feedback_delay}\n")
        return 2
    out = Path(args.out)
    try:
        result = pipeline.run_demo(out, fast=args.fast, seed=args.seed, max_feedback_delay=args.max_feedback_delay)
    except (pipeline.DemoError, processes.ProcessError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    for s in result["scenarios"]:
        print(f"{s['candidate']:>16}: {s['outcome']}, {_where(s)}; "
              f"{s['candidate_live_decisions']} decisions served to customers; rewards posted "
              f"{s.get('rewards_posted', 0)}, joined {s.get('rewards_joined', 0)}, lost {s.get('rewards_lost', 0)}")
        print(f"{'':>18}{s['message']}")
    print(f"report: {out / 'report.html'}  ({result['wallSeconds']} s)")
    return 0


def _where(scenario: dict[str, object]) -> str:
    """Where the demo's candidate ended, in words (report.json's `stopped_at`)."""
    stopped = scenario.get("stopped_at")
    if stopped is None:
        return "promoted"
    if stopped == "offline-gate":
        return "stopped by the offline gate before any traffic"
    if stopped == "shadow":
        return "stopped in shadow before any traffic"
    extra = f" by guardrail {scenario['guardrail']}" if scenario.get("guardrail") else ""
    return f"rolled back at {stopped}{extra}"


def _add_run(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a PolicyRollout on this machine (local processes, a local Prometheus, simulated traffic)",
        description="Execute a PolicyRollout manifest with the operator's engine, without a cluster: policy servers "
        "and the router run as local processes, Prometheus scrapes them, and simulated customers of "
        "policy_server.sim's pricing environment call the router. Artifacts in the manifest must be local paths.",
    )
    parser.add_argument("-f", "--filename", required=True, help="PolicyRollout manifest (YAML)")
    parser.add_argument("--workdir", default=None, help="where logs, decision logs and status go (default: a temp dir)")
    parser.add_argument("--rate", type=float, default=150.0, help="simulated requests per second (0: no traffic)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated customers (default: 0)")
    parser.add_argument("--env", choices=["pricing", "cooling"], default="pricing",
                        help="simulated traffic: pricing customers, or days of the cooling environment (episodes)")
    parser.set_defaults(handler=run_command)


def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole product on one machine: log, train, offline gate, shadow, canary, rollback and promotion",
        description="Log traffic of the fallback pricing policy, train two candidates (an honest one and one that "
        "games its reward by breaking the margin floor), and roll both out locally with guardrails: the reward "
        "hacker is rolled back, the honest one promoted. Writes DIR/report.json and DIR/report.html.",
    )
    parser.add_argument("--fast", action="store_true", help=f"short steps and small data ({FAST_DEMO_TIME})")
    parser.add_argument("--out", default="demo-out", help="output directory (default: ./demo-out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, training and traffic (default: 0)")
    parser.add_argument("--max-feedback-delay", type=float, default=None, metavar="SECONDS",
                        help="longest delay of the late rewards (10 %% of them) during the rollouts (default: 10 "
                        "with --fast, 75 without: longer than a canary step)")
    parser.add_argument("--scenario", choices=["pricing", "sequential"], default="pricing",
                        help="pricing (default), or sequential: cooling episodes, constrained-cql candidates and the "
                        "trajectory gate (docs/local-mode.md; about 3 minutes with --fast)")
    parser.set_defaults(handler=demo_command)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run`, `demo` and `bench-judges` to the `policy-rollouts` parser (the entry point's target)."""
    _add_run(subparsers)
    _add_demo(subparsers)
    bench_cli.add_bench_judges(subparsers)
