"""``policy-server``: serve a policy artifact, or write an example one.

    policy-server example-model --out DIR [--kind discrete|continuous] [--format torchscript|export]
    policy-server serve --model PATH_OR_URL --port P [--host 127.0.0.1] [--log-dir DIR] [--workers N] ...
    policy-server keygen --out DIR          (an Ed25519 key pair for signing artifacts)
    policy-server sign --artifact DIR --key PRIVATE.pem
    policy-server ope --logs URL --policy ARTIFACT --baseline ARTIFACT|logged [--json]   (policy_server.ope.cli)
    policy-server train --logs URL --out DIR --version V [--algorithm ...]              (policy_server.train.cli)
    policy-server join --logs URL --out URL [--window 1h] [--json]                      (policy_server.join.cli)

Exit codes of ``serve``: 0 after a clean shutdown (SIGTERM/SIGINT), 2 when the artifact cannot be
served (the message says why and how to fix it), 1 on other start-up errors (e.g. port in use) and
after a shutdown that could not write every decision (counted on stderr; they stay in the WAL).
With ``--workers N`` the supervisor exits with the worst of its workers' codes, or 1 when workers
kept dying (policy_server/workers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from policy_server import groups

__all__ = ["build_parser", "main", "serve_process"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="policy-server", description="Serve reinforcement-learning policies.")
    sub = p.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("example-model", help="write a small seeded MLP policy artifact")
    ex.add_argument("--out", required=True, help="directory to write the artifact into")
    ex.add_argument("--kind", choices=["discrete", "continuous"], default="discrete")
    ex.add_argument("--format", choices=["torchscript", "export"], default="torchscript")
    ex.add_argument("--n-actions", type=int, default=4, help="actions (discrete) or action dimensions (continuous)")
    ex.add_argument("--obs-dim", type=int, default=8)
    ex.add_argument("--version", default="v1")
    ex.add_argument("--name", default="example-policy")
    ex.add_argument("--seed", type=int, default=0)
    _exploration_args(ex)

    s = sub.add_parser("serve", help="serve a policy artifact over HTTP")
    s.add_argument("--model", required=True, help="artifact directory or fsspec URL (file://, s3://, memory://)")
    s.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port, printed on start)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--log-dir", default=None, help="decision log directory or fsspec URL (unset: no logging)")
    s.add_argument("--variant", default="default", help="label of this deployment in metrics and responses")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    s.add_argument("--max-batch", type=int, default=32, help="most requests per forward pass")
    s.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="under load, wait up to this long for a batch to fill (default 0: batch what arrived together; "
        "measured best on CPU, try 1-2 ms on GPU)",
    )
    s.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    s.add_argument("--seed", type=int, default=None, help="seed of the exploration RNG (default: random)")
    s.add_argument("--latency-budget-ms", type=float, default=None, help="serve the fallback action past this")
    s.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (413 above)")
    s.add_argument("--drift-interval-s", type=float, default=5.0, help="how often drift PSI is recomputed")
    s.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with the server this one replaces (SO_REUSEPORT) and bind only once the model is "
        "warm: start the new server, wait for its 'listening' line, then stop the old one (no refused requests)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT; the kernel balances connections); "
        "each logs its own segments and /metrics answers the sum of all (docs/policy-server.md#workers)",
    )
    s.add_argument("--log-level", default="INFO")
    s.add_argument(
        "--envelope",
        default=None,
        help="serve only actions inside this envelope (JSON: actions, low/high, budget); others are replaced by "
        "the fallback's action and recorded as proposals (docs/policy-server.md#action-envelope)",
    )
    s.add_argument(
        "--envelope-fallback-model",
        default=None,
        help="the rollout's fallback artifact: its action replaces an out-of-envelope one (unset: the shield's "
        "fallback action)",
    )
    _exploration_args(s, override=True)
    _durability_args(s)
    _hardening_args(s)
    groups.add_args(s)

    kg = sub.add_parser("keygen", help="write an Ed25519 key pair for signing artifacts")
    kg.add_argument("--out", required=True, help="directory for signing-key.pem and signing-key.pub.pem")
    sg = sub.add_parser("sign", help="sign an artifact's manifest (writes manifest.sig)")
    sg.add_argument("--artifact", required=True, help="local artifact directory")
    sg.add_argument("--key", required=True, help="Ed25519 private key (PEM), e.g. from `keygen`")

    from policy_server.router import cli as router_cli

    router_cli.add_parser(sub)

    from policy_server.join import cli as join_cli
    from policy_server.ope import cli as ope_cli
    from policy_server.train import cli as train_cli

    ope_cli.add_parser(sub)
    train_cli.add_parser(sub)
    join_cli.add_parser(sub)
    return p


def _exploration_args(p: argparse.ArgumentParser, override: bool = False) -> None:
    help_kind = "override the artifact's exploration rule" if override else "exploration rule"
    p.add_argument(
        "--exploration", choices=["greedy", "epsilon_greedy", "softmax", "gaussian"], default=None, help=help_kind
    )
    p.add_argument("--epsilon", type=float, default=0.1, help="for epsilon_greedy")
    p.add_argument("--temperature", type=float, default=1.0, help="for softmax")


def _durability_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--wal-dir",
        default=None,
        help="write-ahead log on local disk (an emptyDir): a SIGKILL loses at most --wal-commit-ms of decisions, "
        "replayed into --log-dir on the next start",
    )
    s.add_argument("--wal-commit-ms", type=float, default=5.0, help="group-commit interval of the write-ahead log")
    s.add_argument("--wal-fsync", action="store_true", help="fdatasync each commit (survives a node crash too)")
    s.add_argument(
        "--durable", action="store_true", help="answer only once the decision is committed to the WAL (needs --wal-dir)"
    )
    s.add_argument(
        "--on-log-failure",
        choices=["serve", "unready"],
        default="serve",
        help="when the log cannot be written: keep serving (default) or also answer /readyz 503",
    )
    s.add_argument(
        "--log-flush-timeout-s",
        type=float,
        default=15.0,
        help="at shutdown, stop retrying the log after this long (with --shutdown-timeout-s, below the grace period)",
    )
    s.add_argument(
        "--shutdown-timeout-s", type=float, default=10.0, help="at shutdown, wait this long for requests in flight"
    )


def _hardening_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--max-reward-abs", type=float, default=1e9, help="larger |reward| is refused with 400")
    s.add_argument("--max-cost-abs", type=float, default=1e9, help="larger |cost| is refused with 400")
    s.add_argument(
        "--max-reward-age-s",
        type=float,
        default=7 * 86400.0,
        help="refuse (410) a reward this long after its decision (default 7 days); the joiner's window decides "
        "what counts",
    )
    s.add_argument("--header-timeout-s", type=float, default=10.0, help="408 if headers take longer")
    s.add_argument("--body-timeout-s", type=float, default=30.0, help="408 if the body takes longer")
    s.add_argument("--idle-timeout-s", type=float, default=120.0, help="close keep-alive connections idle this long")
    s.add_argument(
        "--trusted-key",
        action="append",
        default=None,
        help="Ed25519 public key (PEM path or base64); repeatable; the artifact must be signed by one "
        "(also POLICY_TRUSTED_KEYS, comma-separated)",
    )


def _trusted_keys(args: argparse.Namespace) -> tuple[str, ...]:
    env = [k.strip() for k in os.environ.get("POLICY_TRUSTED_KEYS", "").split(",") if k.strip()]
    return tuple([*(args.trusted_key or []), *env])


def _keygen(args: argparse.Namespace) -> int:
    from policy_server import signing

    private, public = signing.generate_keypair(args.out)
    print(f"{private}\n{public}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from policy_server import signing

    try:
        out = signing.sign(args.artifact, Path(args.key).read_bytes())
    except (OSError, ValueError, signing.SignatureError) as exc:
        print(f"policy-server: cannot sign {args.artifact}: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _exploration(args: argparse.Namespace):  # -> artifact.Exploration | None
    if args.exploration is None:
        return None
    from policy_server import artifact

    return artifact.Exploration(kind=args.exploration, epsilon=args.epsilon, temperature=args.temperature)


def _example_model(args: argparse.Namespace) -> int:
    from policy_server import artifact

    out = artifact.write_example_model(
        args.out,
        kind=args.kind,
        n_actions=args.n_actions,
        obs_dim=args.obs_dim,
        format=args.format,
        version=args.version,
        seed=args.seed,
        name=args.name,
        exploration=_exploration(args),
    )
    print(out)
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        groups.from_args(args)  # checked once here, before any worker starts
    except groups.GroupConfigError as exc:
        print(f"policy-server: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"policy-server: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.workers > 1:  # a supervisor that imports no torch; each worker runs serve_process
        from policy_server import workers

        return workers.supervise(args)
    return serve_process(args)


def _announce(host: str, port: int) -> None:
    print(f"policy-server listening on http://{host}:{port}", flush=True)


def serve_process(
    args: argparse.Namespace,
    *,
    announce: Callable[[str, int], None] = _announce,
    overrides: dict[str, Any] | None = None,
) -> int:
    """One server process: the whole of ``serve`` with one worker, or one worker of several.

    ``announce`` is called once the socket is bound; ``overrides`` replace ServerConfig fields
    (workers.py sets the shared port, SO_REUSEPORT, the worker's WAL and metrics directories).
    """
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    import uvloop

    from policy_server import artifact, server

    torch.set_num_threads(max(args.threads, 1))
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    try:
        exploration = _exploration(args)
    except ValueError as exc:
        print(f"policy-server: bad exploration settings: {exc}", file=sys.stderr)
        return 2
    if args.durable and not args.wal_dir:
        print("policy-server: --durable needs --wal-dir (the write-ahead log it waits for)", file=sys.stderr)
        return 2
    if args.wal_dir and not args.log_dir:
        print("policy-server: --wal-dir needs --log-dir (where the log is replayed)", file=sys.stderr)
        return 2
    from policy_server import attribution, envelope, protocol, validation

    if args.envelope is not None:
        try:
            envelope.parse_spec(args.envelope)
        except envelope.EnvelopeError as exc:
            print(f"policy-server: {exc}", file=sys.stderr)
            return 2
    elif args.envelope_fallback_model:
        print("policy-server: --envelope-fallback-model needs --envelope (what it stands in for)", file=sys.stderr)
        return 2

    try:
        reward_keys = attribution.RewardKeys.from_env()
    except attribution.RewardKeyError as exc:
        print(f"policy-server: {exc}", file=sys.stderr)
        return 2
    config = server.ServerConfig(
        model=args.model,
        variant=args.variant,
        device=args.device,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        exploration=exploration,
        seed=args.seed,
        log_dir=args.log_dir,
        latency_budget_ms=args.latency_budget_ms,
        max_body=args.max_body,
        drift_interval_s=args.drift_interval_s,
        reuse_port=args.reuse_port,
        wal_dir=args.wal_dir,
        wal_commit_ms=args.wal_commit_ms,
        wal_fsync=args.wal_fsync,
        durable=args.durable,
        on_log_failure=args.on_log_failure,
        log_flush_timeout_s=args.log_flush_timeout_s,
        shutdown_timeout_s=args.shutdown_timeout_s,
        limits=validation.Limits(max_reward_abs=args.max_reward_abs, max_cost_abs=args.max_cost_abs),
        timeouts=protocol.Timeouts(args.header_timeout_s, args.body_timeout_s, args.idle_timeout_s),
        trusted_keys=_trusted_keys(args),
        reward_keys=reward_keys,
        max_reward_age_s=args.max_reward_age_s,
        envelope=args.envelope,
        envelope_fallback_model=args.envelope_fallback_model,
        groups=groups.from_args(args),
    )
    if overrides:
        config = dataclasses.replace(config, **overrides)

    async def run() -> int:
        app = server.PolicyServer(config)
        loop = asyncio.get_running_loop()
        try:
            port = await app.start(args.host, args.port)
        except OSError as exc:
            print(f"policy-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        stopping: list[asyncio.Future] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stopping.append(asyncio.ensure_future(app.shutdown())))
        if app.listening:  # with --reuse-port a model that failed to load leaves the port unbound
            announce(args.host, port)  # after the handlers: a SIGTERM right after this line drains
        try:
            await app.wait_ready()
        except artifact.ArtifactError as exc:
            print(f"policy-server: cannot serve the artifact: {exc}", file=sys.stderr)
            await app.shutdown()
            return 2
        except envelope.EnvelopeError as exc:
            print(f"policy-server: {exc}", file=sys.stderr)
            await app.shutdown()
            return 2
        except Exception as exc:
            print(f"policy-server: start-up failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            await app.shutdown()
            return 2
        await app.wait_stopped()
        for task in stopping:  # surface a shutdown error instead of "Task exception was never retrieved"
            with contextlib.suppress(asyncio.CancelledError):
                exc = await asyncio.gather(task, return_exceptions=True)
                if exc and isinstance(exc[0], BaseException):
                    print(f"policy-server: shutdown failed: {type(exc[0]).__name__}: {exc[0]}", file=sys.stderr)
                    return 1
        if app.unwritten:
            kept = f"; they stay in {args.wal_dir} and are replayed on the next start" if args.wal_dir else ""
            print(
                f"policy-server: {app.unwritten} decisions/rewards could not be written to {args.log_dir} "
                f"within {args.log_flush_timeout_s:g} s{kept}",
                file=sys.stderr,
            )
            return 1
        return 0

    return uvloop.run(run())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "example-model":
        return _example_model(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "keygen":
        return _keygen(args)
    if args.command == "sign":
        return _sign(args)
    if args.command == "ope":
        from policy_server.ope import cli as ope_cli

        return ope_cli.main(args)
    if args.command == "train":
        from policy_server.train import cli as train_cli

        return train_cli.main(args)
    if args.command == "join":
        from policy_server.join import cli as join_cli

        return join_cli.main(args)
    if args.command == "route":
        from policy_server.router import cli as router_cli

        return router_cli.run(args)
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
