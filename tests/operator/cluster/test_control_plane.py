"""`policy-rollouts cluster up|down` and `scripts/kube-binaries.sh` as a user runs them.

The session's own control plane (tests/support/cluster.py) is started through the same
`ControlPlane`; here a second one is started and stopped by the CLI, in a directory of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rollout_operator.cluster import control_plane

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollout_operator.cli.main", "cluster", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_cluster_up_gives_ready_nodes_and_down_stops_every_process(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    up = _cli("up", "--dir", str(directory), "--nodes", "2", "--gpu-nodes", "1")
    plane = control_plane.ControlPlane(directory)
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = Path(up.stdout.strip().splitlines()[0])
        assert kubeconfig == directory.resolve() / "kubeconfig" and kubeconfig.is_file()
        assert "kubectl get nodes" in up.stderr and "control plane ready" in up.stderr  # progress and next step
        pids = yaml.safe_load((directory / "pids.json").read_text())
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        plane.bin_dir = control_plane.binaries()
        nodes = plane.kubectl("get", "nodes", "--no-headers")
        assert nodes.returncode == 0, nodes.stderr
        rows = [line.split() for line in nodes.stdout.splitlines()]
        assert len(rows) == 3 and all(row[1] == "Ready" for row in rows), nodes.stdout
        again = _cli("up", "--dir", str(directory))
        assert again.returncode == 1 and "already runs" in again.stderr and "Traceback" not in again.stderr
    finally:
        down = _cli("down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert not directory.exists()
    assert not any(control_plane._alive(pid) for pid in pids.values())


def test_the_build_script_says_what_to_install_when_go_is_missing(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "POLICY_ROLLOUTS_KUBE_CACHE": str(tmp_path / "cache")}
    assert subprocess.run(["bash", "-c", "command -v go"], env=env, capture_output=True, check=False).returncode != 0
    built = subprocess.run(["bash", str(REPO / "scripts" / "kube-binaries.sh")], env=env, capture_output=True,
                           text=True, timeout=30, check=False)
    assert built.returncode == 2
    assert "Go is not installed" in built.stderr and "install Go" in built.stderr
    assert "Traceback" not in built.stderr and built.stderr.count("\n") == 1


def test_the_build_script_prints_the_cached_binaries_without_building() -> None:
    printed = subprocess.run(["bash", str(REPO / "scripts" / "kube-binaries.sh")], capture_output=True, text=True,
                             timeout=30, check=False)
    assert printed.returncode == 0, printed.stderr
    bin_dir = Path(printed.stdout.strip())
    for name in control_plane.BINARIES:
        assert (bin_dir / name).is_file() and os.access(bin_dir / name, os.X_OK), name
    version = subprocess.run([str(bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True,
                             check=False)
    assert version.stdout.strip() == "Kubernetes v1.37.2"
