"""Arguments of the bench subcommands; the heavy modules load only when a bench runs."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_SEED = 20261123


def add_bench_judges(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench-judges",
        help="simulate canary traffic and compare the analysis judges (false rollbacks, time to detect)",
        description="Synthetic canary traffic through every judge as the engine calls it: A/A false-rollback "
        "rates and analyses needed to catch 2% and 5% reward regressions (see bench/README.md).",
    )
    parser.add_argument("--quick", action="store_true", help="1,000 A/A and 200 regressed rollouts per gap")
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the detection curves (needs matplotlib)")
    parser.add_argument("--alpha", type=float, default=0.05, help="false-rollback budget")
    parser.add_argument("--drift", type=float, default=0.0, help="amplitude of a common reward cycle (0.1 = +-10%%)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (same seed, same results)")
    parser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    from rollout_lab.judge_bench import judges

    return judges.command(args)
