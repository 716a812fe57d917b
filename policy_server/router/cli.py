"""``policy-server route``: the router's command line (wired into policy_server/cli.py).

    policy-server route --port P --stable URL... [--candidate URL... --weight W] [--shadow]
                        [--sticky-header NAME | --sticky-context FIELD]
                        [--entity-header NAME | --entity-context FIELD] [--config FILE]
                        [--configmap NAMESPACE/NAME [--kubeconfig PATH] [--no-endpointslices]] [--log-dir DIR]

Each variant is one URL or several (its endpoints: the router balances across them). With
``--configmap`` the router also follows the EndpointSlices of each variant's Service and routes to
its ready endpoints (kubewatch.py), unless ``--no-endpointslices``.

Where the routing table comes from, in order: the ``--config`` file if it exists (the last table
this router applied: a restart keeps the last weights), else the flags. With ``--configmap``
every change of that ConfigMap is applied at once and saved to ``--config``.
Exit codes: 0 after SIGTERM/SIGINT, 2 on bad flags or an unreadable table, 1 if the port is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser("route", help="route requests between a stable and a candidate policy server")
    r.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port, printed on start)")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--stable", nargs="+", help="URL(s) of the stable policy server's endpoints (http://host:port)")
    r.add_argument("--candidate", nargs="+", help="URL(s) of the candidate policy server's endpoints")
    r.add_argument(
        "--fallback", nargs="+", help="URL(s) answering when the candidate fails (default: the stable endpoints)"
    )
    r.add_argument("--weight", type=float, default=0.0, help="percent of requests sent to the candidate (0..100)")
    r.add_argument("--shadow", action="store_true", help="mirror stable-served requests to the candidate")
    r.add_argument("--sticky-header", help="request header whose value keeps a caller on one variant")
    r.add_argument("--sticky-context", help="field of the request's `context` object used as the sticky key")
    r.add_argument("--entity-header", help="request header naming the entity: one entity, one endpoint per variant")
    r.add_argument("--entity-context", help="field of the request's `context` object naming the entity")
    r.add_argument(
        "--latency-budget-ms",
        type=float,
        default=100.0,
        help="candidate answers slower than this are replaced by the fallback's",
    )
    r.add_argument("--upstream-timeout-s", type=float, default=5.0, help="deadline of stable/fallback calls")
    r.add_argument("--config", help="JSON file holding the last applied routing table (read at start, kept up to date)")
    r.add_argument("--configmap", help="NAMESPACE/NAME of the ConfigMap holding the routing table (watched)")
    r.add_argument("--kubeconfig", help="kubeconfig for --configmap (default: the pod's service account)")
    r.add_argument(
        "--endpointslices",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="route to the ready endpoints of each variant's Service (its EndpointSlices) instead of its "
        "ClusterIP; needs get/list/watch on endpointslices (default: on with --configmap)",
    )
    r.add_argument(
        "--endpoint-port-name",
        default="http",
        help="name of the Service port whose endpoints are used (--endpointslices)",
    )
    r.add_argument(
        "--watch-config",
        action="store_true",
        help="apply every change of the --config file at once (local mode: the operator writes the file)",
    )
    r.add_argument("--log-dir", help="decision log directory or fsspec URL (unset: no logging)")
    r.add_argument("--seed", type=int, default=None, help="seed of the random split (default: random)")
    r.add_argument("--log-level", default="INFO")


def _initial_table(args: argparse.Namespace):  # -> table.RoutingTable
    from policy_server.router import table

    if args.config:
        saved = table.load(args.config)
        if saved is not None:
            print(
                f"policy-server route: restored the last routing table from {args.config} (generation "
                f"{saved.generation}, candidate {saved.weight}%, shadow {saved.shadow}); routing flags are "
                "ignored — delete the file to start from the flags",
                file=sys.stderr,
            )
            return saved, "file"
    if not args.stable:
        raise table.TableError("--stable URL is required (or a --config file holding a routing table)")
    return table.RoutingTable(
        stable=args.stable[0] if len(args.stable) == 1 else args.stable,
        candidate=_one_or_list(args.candidate),
        fallback=_one_or_list(args.fallback),
        weight=args.weight,
        shadow=args.shadow,
        sticky_key=_key_flag(args.sticky_header, args.sticky_context, "sticky"),
        entity_key=_key_flag(args.entity_header, args.entity_context, "entity"),
    ), "flags"


def _one_or_list(urls: list[str] | None) -> str | list[str] | None:
    return urls[0] if urls and len(urls) == 1 else urls


def _key_flag(header: str | None, context: str | None, what: str) -> str | None:
    from policy_server.router import table

    if header and context:
        raise table.TableError(f"use --{what}-header or --{what}-context, not both")
    return f"header:{header}" if header else f"context:{context}" if context else None


async def _watch_file(path: str, router) -> None:  # router: app.Router
    """Local mode's ConfigMap: poll the table file and apply each new version (a bad one is logged, not applied)."""
    import os

    from policy_server.router import table

    seen = None
    with contextlib.suppress(OSError):
        seen = os.stat(path).st_mtime_ns
    while True:
        await asyncio.sleep(0.05)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            continue
        if mtime == seen:
            continue
        seen = mtime
        try:
            new = table.load(path)
        except table.TableError as exc:
            logging.getLogger(__name__).error("ignoring the routing table in %s: %s", path, exc)
            continue
        if new is not None and new != router.table:
            router.apply(new, source="file", persist=False)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop

    from policy_server import attribution
    from policy_server.router import app, kubewatch, table

    try:
        reward_keys = attribution.RewardKeys.from_env()
        initial, source = _initial_table(args)
        api = None
        if args.configmap:
            namespace, _, name = args.configmap.partition("/")
            if not namespace or not name:
                raise table.TableError(f"--configmap must be NAMESPACE/NAME, got {args.configmap!r}")
            api = (
                kubewatch.ApiConfig.from_kubeconfig(args.kubeconfig)
                if args.kubeconfig
                else kubewatch.ApiConfig.in_cluster()
            )
        elif args.endpointslices:
            raise table.TableError("--endpointslices needs --configmap (it reads the cluster the ConfigMap is in)")
    except (table.TableError, kubewatch.KubeConfigError, attribution.RewardKeyError) as exc:
        print(f"policy-server route: {exc}", file=sys.stderr)
        return 2
    config = app.RouterConfig(
        table=initial,
        config_path=args.config,
        log_dir=args.log_dir,
        latency_budget_ms=args.latency_budget_ms,
        upstream_timeout_s=args.upstream_timeout_s,
        seed=args.seed,
        reward_keys=reward_keys,
    )

    async def main() -> int:
        router = app.Router(config)
        router.table_source = source
        loop = asyncio.get_running_loop()
        try:
            port = await router.start(args.host, args.port)
        except OSError as exc:
            print(f"policy-server route: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        watcher_task = None
        slices = None
        if api is not None:
            if args.endpointslices is not False:
                slices = kubewatch.EndpointSliceWatcher(api, namespace, router.set_endpoints, args.endpoint_port_name)
                slices.follow(router.table.urls())

            def on_table(t: table.RoutingTable, rv: str) -> None:
                router.apply(t, source=f"configmap@{rv}")
                if slices is not None:
                    slices.follow(t.urls())

            watcher = kubewatch.ConfigMapWatcher(api, namespace, name, on_table)
            watcher_task = loop.create_task(watcher.run())
        elif args.watch_config and args.config:
            watcher_task = loop.create_task(_watch_file(args.config, router))
        gc.collect()
        gc.freeze()  # start-up objects are long-lived: keep them out of the collector's scans (p99)
        print(f"policy-server route listening on http://{args.host}:{port}", flush=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(router.shutdown()))
        await router.wait_stopped()
        if slices is not None:
            await slices.close()
        if watcher_task is not None:
            watcher_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher_task
        return 0

    return uvloop.run(main())
