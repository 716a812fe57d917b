"""`policy-rollouts`: one argparse program, one small function per subcommand.

To add a subcommand, write `_add_<name>(subparsers)` that declares its arguments and sets
`handler=` to a `_cmd_<name>(args) -> int` function, then append `_add_<name>` to `COMMANDS`.
Handlers return the process exit status; imports of heavy modules belong inside them so that
`policy-rollouts --help` stays fast. Commands of other packages (`run`, `demo`, `bench-judges` from
`rollout_lab`) arrive through the `policy_rollouts.commands` entry point.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from rollout_operator.cluster import cli as cluster_cli

# The operator's /metrics port: not 8080, which policy servers listen on by convention
# (api.PolicySpec.port) and which a local run of both would otherwise fight over.
METRICS_PORT = 8383
# How long `operator` waits for the API server's first answer before it gives up.
API_CHECK_TIMEOUT_SECONDS = 5.0


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
    parser.add_argument("--metrics-port", type=int, default=METRICS_PORT,
                        help=f"serve the operator's Prometheus metrics on this port at /metrics (0: off; default "
                        f"{METRICS_PORT}, clear of the policy server's usual 8080)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address the metrics server binds (default: loopback only; the Helm chart passes 0.0.0.0)")
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
    """Check what can be checked at once (arguments, then the API server), then hand over to kopf.

    Each failure is one line on stderr saying what is wrong and what to do: exit 2 for a bad
    argument or a missing kubeconfig, 1 when the kubeconfig or the API server cannot be used.
    """
    import asyncio
    import os

    kubeconfig, problem = _find_kubeconfig(args.kubeconfig)
    if problem is not None:
        sys.stderr.write(f"error: {problem}\n")
        return 2
    try:
        targets = _notify_targets(args)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    operator_metrics = None
    if args.metrics_port:
        from rollout_operator import metrics

        operator_metrics = metrics.OperatorMetrics()
        try:
            metrics.serve(operator_metrics, args.metrics_port, args.metrics_host)
        except OSError as exc:
            sys.stderr.write(f"error: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}; "
                             "pass another --metrics-port (0 turns metrics off)\n")
            return 2
    problem = _api_server_problem(kubeconfig, timeout=API_CHECK_TIMEOUT_SECONDS)
    if problem is not None:
        sys.stderr.write(f"error: {' '.join(problem.split())}\n")  # one line, whatever the libraries said
        return 1

    import kopf

    from rollout_operator import handlers

    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # kopf's login reads it at login time
    config = handlers.OperatorConfig(namespaces=tuple(args.namespace) if args.namespace else None,
                                     workers=args.workers, kubeconfig=kubeconfig, prometheus_url=args.prometheus_url,
                                     tick_seconds=args.tick, notify_targets=targets,
                                     notify_timeout_seconds=args.notify_timeout, notify_retries=args.notify_retries)
    memo = kopf.Memo(config=config)
    if operator_metrics is not None:
        memo["metrics"] = operator_metrics
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


def _find_kubeconfig(explicit: str | None) -> tuple[str | None, str | None]:
    """(kubeconfig, None), (None, None) in a cluster without one, or (None, what is wrong and what to do)."""
    import os
    from pathlib import Path

    if explicit:
        kubeconfig, source = explicit, "--kubeconfig"
    elif os.environ.get("KUBECONFIG"):
        kubeconfig, source = os.environ["KUBECONFIG"], "$KUBECONFIG"
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None, None  # in a pod: its ServiceAccount
    else:
        default = Path("~/.kube/config").expanduser()
        if not default.is_file():
            return None, "no kubeconfig found and not in a cluster: pass --kubeconfig or set $KUBECONFIG"
        return str(default), None
    paths = [p for p in kubeconfig.split(os.pathsep) if p]
    if not any(Path(p).is_file() for p in paths):  # a list may name missing files, as kubectl allows
        return None, (f"kubeconfig {kubeconfig} ({source}) does not exist: pass --kubeconfig with the path of a "
                      "kubeconfig file (e.g. the one `policy-rollouts cluster up` or `kind` wrote)")
    return kubeconfig, None


def _api_server_problem(kubeconfig: str | None, timeout: float) -> str | None:
    """One line saying why the API server cannot be used, or None when it answers.

    Checked once before kopf starts, so that a wrong kubeconfig or a cluster that is down ends the
    command at once instead of in kopf's minute of retries. Once connected, kopf retries as usual.
    """
    from rollout_operator import kube

    where = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster ServiceAccount"
    try:
        client = kube.Client.from_config(kubeconfig)
    except kube.KubeError as exc:
        return str(exc)
    try:
        client.server_version(timeout=timeout)
    except kube.KubeError as exc:
        if exc.status == 401:
            return (f"the Kubernetes API server at {client.host} refused the credentials of {where} (HTTP 401): "
                    "renew them, or pass --kubeconfig with a current one")
        if exc.status == 0:
            return (f"{exc} ({where}): start the cluster, or fix the server address in the kubeconfig "
                    "(`kubectl cluster-info` tells the same)")
        if exc.status == 404:
            return (f"{client.host} answers, but not as a Kubernetes API server (HTTP 404 for /version; {where}): "
                    "fix the server address in the kubeconfig")
        return None  # it answered: kopf reports other errors (RBAC, a 5xx) and retries as it meets them
    finally:
        client.close()
    return None


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


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_crds,
    _add_operator,
    cluster_cli.add_cluster,
]


# Other packages add subcommands through this entry-point group (`rollout_lab` adds `run`, `demo`
# and `bench-judges`): the dependency points from them to the operator, never back.
COMMANDS_ENTRY_POINT_GROUP = "policy_rollouts.commands"


def _plugin_commands() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    """The `register(subparsers)` functions of installed packages; one that cannot load is left out."""
    found = []
    for entry in sorted(metadata.entry_points(group=COMMANDS_ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            found.append(entry.load())
        except ImportError as exc:
            # A registered package that is not (fully) installed: the operator's own commands still run.
            sys.stderr.write(f"warning: commands of {entry.value} unavailable ({exc}); "
                             f"install policy-rollouts[server] for run and demo\n")
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="policy-rollouts",
        description="Progressive delivery for reinforcement-learning policies on Kubernetes.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in [*COMMANDS, *_plugin_commands()]:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit status (argparse exits 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
