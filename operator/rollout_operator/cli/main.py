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

from rollout_operator.bench import cli as bench_cli
from rollout_operator.cluster import cli as cluster_cli


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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
    parser.add_argument("--tick", type=float, default=1.0,
                        help="seconds before a failed reconcile is retried (doubling up to 30 s)")
    parser.add_argument("--workers", type=_positive_int, default=8,
                        help="reconciles run at once (a bounded pool shared by every rollout; rollbacks first)")
    parser.add_argument("--liveness", default=None, help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8081/healthz")
    parser.add_argument("--metrics-port", type=int, default=8080,
                        help="serve the operator's Prometheus metrics on this port at /metrics (0: off)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics server binds")
    parser.add_argument("--peering", default=None, metavar="NAME",
                        help="run several replicas with kopf peering (KopfPeering/ClusterKopfPeering NAME must "
                        "exist): only the highest --priority one acts; default: standalone")
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority; default: random, so that replicas never tie (a tie pauses all)")
    parser.add_argument("--notify-url", action="append", default=None,
                        help="webhook told about every rollout (repeatable; default: $POLICY_ROLLOUTS_NOTIFY_URLS, "
                        "comma-separated)")
    parser.add_argument("--notify-format", default="json", choices=["json", "slack"],
                        help="payload format of the --notify-url webhooks")
    parser.add_argument("--notify-events", default="phase,rollback,approval",
                        help="comma-separated events sent to the --notify-url webhooks")
    parser.add_argument("--notify-timeout", type=float, default=5.0, help="seconds per webhook attempt")
    parser.add_argument("--notify-retries", type=int, default=3, help="retries of a failed webhook call")
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
    try:
        targets = _notify_targets(args)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    config = handlers.OperatorConfig(namespaces=tuple(args.namespace) if args.namespace else None,
                                     workers=args.workers, kubeconfig=kubeconfig, prometheus_url=args.prometheus_url,
                                     tick_seconds=args.tick, notify_targets=targets,
                                     notify_timeout_seconds=args.notify_timeout, notify_retries=args.notify_retries)
    memo = kopf.Memo(config=config)
    if args.metrics_port:
        from rollout_operator import metrics

        memo["metrics"] = metrics.OperatorMetrics()
        try:
            metrics.serve(memo["metrics"], args.metrics_port, args.metrics_host)
        except OSError as exc:
            sys.stderr.write(f"error: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}; "
                             "pass another --metrics-port (0 turns metrics off)\n")
            return 2
    peering: dict[str, object] = {"standalone": True}
    if args.peering:
        import random

        priority = args.priority if args.priority is not None else random.SystemRandom().randint(1, 2**31 - 1)
        peering = {"standalone": False, "peering_name": args.peering, "priority": priority}
    kopf.configure(verbose=args.verbose)
    asyncio.run(kopf.operator(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        memo=memo,
        liveness_endpoint=args.liveness,
        **peering,  # type: ignore[arg-type]
    ))
    return 0


def _notify_targets(args: argparse.Namespace) -> tuple[object, ...]:
    """Global webhooks from --notify-url (or $POLICY_ROLLOUTS_NOTIFY_URLS), validated like spec.notifications."""
    import os

    import pydantic

    from rollout_operator import api
    from rollout_operator.notifications import base

    urls = args.notify_url
    if urls is None:
        urls = [u.strip() for u in os.environ.get("POLICY_ROLLOUTS_NOTIFY_URLS", "").split(",") if u.strip()]
    events = [e.strip() for e in args.notify_events.split(",") if e.strip()]
    targets = []
    for url in urls:
        try:
            spec = api.NotificationSpec(url=url, format=args.notify_format, events=events)
        except pydantic.ValidationError as exc:
            problems = "; ".join(e["msg"] for e in exc.errors(include_url=False))
            raise ValueError(f"bad notification webhook {url!r} (--notify-url/--notify-events): {problems}; "
                             f"URLs start with http:// or https://, events are phase, rollback, approval") from None
        targets.append(base.Target.from_spec(spec))
    return tuple(targets)


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
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from rollout_operator.local import cli as local_cli

    return local_cli.run_command(args)


def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole product on one machine: log, train, offline gate, shadow, canary, rollback and promotion",
        description="Log traffic of the fallback pricing policy, train two candidates (an honest one and one that "
        "games its reward by breaking the margin floor), and roll both out locally with guardrails: the reward "
        "hacker is rolled back, the honest one promoted. Writes DIR/report.json and DIR/report.html.",
    )
    parser.add_argument("--fast", action="store_true", help="short steps and small data (about 2-3 minutes)")
    parser.add_argument("--out", default="demo-out", help="output directory (default: ./demo-out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rollout_operator.local import cli as local_cli

    return local_cli.demo_command(args)


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_crds,
    _add_operator,
    _add_run,
    _add_demo,
    bench_cli.add_bench_judges,
    cluster_cli.add_cluster,
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
