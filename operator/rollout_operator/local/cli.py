"""The `policy-rollouts run` and `policy-rollouts demo` commands (argument parsing lives in cli/main.py)."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

__all__ = ["demo_command", "run_command"]


def run_command(args: argparse.Namespace) -> int:
    from rollout_operator import checks
    from rollout_operator.demo import view
    from rollout_operator.local import loadgen, processes, run

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
        gen = loadgen.TrafficGenerator(local.traffic.url(rollout), env, rate=args.rate)

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
    print(f"status, events and process logs: {workdir}")
    if result.timed_out:
        return 3
    return 0 if status.phase.value == "Promoted" else 1


def demo_command(args: argparse.Namespace) -> int:
    from rollout_operator.demo import pipeline
    from rollout_operator.local import processes

    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    try:
        result = pipeline.run_demo(out, fast=args.fast, seed=args.seed)
    except (pipeline.DemoError, processes.ProcessError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    for s in result["scenarios"]:
        extra = f" (guardrail {s['guardrail']})" if s.get("guardrail") else ""
        print(f"{s['candidate']:>16}: {s['outcome']}{extra}")
    print(f"report: {out / 'report.html'}  ({result['wallSeconds']} s)")
    return 0
