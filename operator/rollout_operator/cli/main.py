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


def _add_operator(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the PolicyRollout operator (kopf) against the current kubeconfig or in-cluster config",
        description="Run the operator. Outside a cluster it uses --kubeconfig or $KUBECONFIG (~/.kube/config "
        "by default); inside one, its ServiceAccount.",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="watch only this namespace (repeatable); default: all namespaces")
    parser.add_argument("--prometheus-url", default="http://prometheus-operated.monitoring:9090",
                        help="Prometheus used by guardrails that do not name their own (spec.analysis.prometheusUrl)")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between reconciles of one rollout")
    parser.add_argument("--liveness", default=None, help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.set_defaults(handler=_cmd_operator)


def _cmd_operator(args: argparse.Namespace) -> int:
    import asyncio
    import os
    from pathlib import Path

    import kopf

    from rollout_operator import handlers

    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG")
    if kubeconfig is None and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        default = Path("~/.kube/config").expanduser()
        kubeconfig = str(default) if default.exists() else None
    if kubeconfig is None and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        sys.stderr.write("error: no kubeconfig found and not in a cluster: pass --kubeconfig or set $KUBECONFIG\n")
        return 2
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # kopf's login reads it at login time
    config = handlers.OperatorConfig(kubeconfig=kubeconfig, prometheus_url=args.prometheus_url,
                                     tick_seconds=args.tick)
    kopf.configure(verbose=args.verbose)
    asyncio.run(kopf.operator(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        memo=kopf.Memo(config=config),
        standalone=True,
        liveness_endpoint=args.liveness,
    ))
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_crds,
    _add_operator,
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
