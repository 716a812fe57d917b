"""`policy-rollouts`: one argparse program, one small function per subcommand.

To add a subcommand, write `_add_<name>(subparsers)` that declares its arguments and sets
`handler=` to a `_cmd_<name>(args) -> int` function, then append `_add_<name>` to `COMMANDS`.
Handlers return the process exit status; imports of heavy modules belong inside them so that
`policy-rollouts --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _add_crds(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "crds",
        help="print the PolicyRollout CRD (YAML) generated from the API models",
        description="Print the PolicyRollout CustomResourceDefinition; pipe it to `kubectl apply -f -`.",
    )
    parser.set_defaults(handler=_cmd_crds)


def _cmd_crds(args: argparse.Namespace) -> int:
    from rollout_operator import crdgen

    sys.stdout.write(crdgen.render())
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_crds,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="policy-rollouts",
        description="Progressive delivery for reinforcement-learning policies on Kubernetes.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit status (argparse exits 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
