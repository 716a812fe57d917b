"""`policy-rollouts cluster up|down`: a real control plane on loopback, for trying the operator and for tests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_DIR = ".cluster"


def add_cluster(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cluster",
        help="start or stop a real Kubernetes control plane on this machine (no Docker needed)",
        description="etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok fake nodes, built "
        "from their Go modules on first use (scripts/kube-binaries.sh) and run on loopback. Pods become Running "
        "and Ready on the fake nodes; no container runs.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start it in the background and write DIR/kubeconfig")
    up.add_argument("--dir", default=DEFAULT_DIR,
                    help=f"where its data, logs and kubeconfig go (default: {DEFAULT_DIR})")
    up.add_argument("--nodes", type=int, default=1, help="number of kwok fake nodes (default: 1)")
    up.add_argument("--gpu-nodes", type=int, default=1,
                    help="number of fake GPU nodes (nvidia.com/gpu allocatable, tainted; default: 1)")
    up.set_defaults(handler=_cmd_up)
    down = actions.add_parser("down", help="stop it and delete its directory")
    down.add_argument("--dir", default=DEFAULT_DIR, help="the directory `cluster up` used (default: %(default)s)")
    down.set_defaults(handler=_cmd_down)


def _progress(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def _cmd_up(args: argparse.Namespace) -> int:
    # Imported here: the PKI needs `cryptography` (extra `cluster`), which the operator image lacks.
    from rollout_operator.cluster.control_plane import ClusterError, ControlPlane

    plane = ControlPlane(Path(args.dir), nodes=args.nodes, gpu_nodes=args.gpu_nodes)
    try:
        plane.start(_progress)
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(plane.kubeconfig)
    print(f"try: KUBECONFIG={plane.kubeconfig} kubectl get nodes     stop: policy-rollouts cluster down "
          f"--dir {args.dir}", file=sys.stderr)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from rollout_operator.cluster.control_plane import ControlPlane

    directory = Path(args.dir)
    if not directory.exists():
        print(f"no control plane at {directory}: nothing to stop", file=sys.stderr)
        return 0
    ControlPlane(directory).remove()
    _progress(f"stopped and removed {directory}")
    return 0
