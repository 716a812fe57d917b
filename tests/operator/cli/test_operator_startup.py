"""`policy-rollouts operator` fails fast and clearly when it cannot reach a cluster.

Before kopf starts, the command checks the kubeconfig and asks the API server for `/version`
once, with a short timeout. A missing kubeconfig or a server that does not answer ends the
process within seconds with one line on stderr that names the problem and what to do, instead
of kopf's minute of retries and tracebacks. Each case runs the real command as a subprocess
(the code of this checkout first on `PYTHONPATH`) against a local socket: nothing listening
(refused) or a listener that accepts and never answers (a server that hangs); and the real
control plane (tests/support/cluster.py) for credentials it refuses.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from rollout_operator.cluster.control_plane import ControlPlane

REPO = Path(__file__).resolve().parents[3]


def _run_operator(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    base = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    path = os.pathsep.join([str(REPO / "operator"), str(REPO), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, "-m", "rollout_operator.cli.main", "operator", "--metrics-port", "0", *args]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env={**base, "PYTHONPATH": path, **(env or {})})
    return result, time.monotonic() - started


def _one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"the operator started:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error: ")
    return lines[0]


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters: [{{name: test, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]\n"
        "users: [{name: test, user: {token: not-a-real-token}}]\n"
        "contexts: [{name: test, context: {cluster: test, user: test}}]\n"
    )
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """An address that accepts connections and never answers (a hung or firewalled API server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes the handshakes; nobody ever reads or writes
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_missing_kubeconfig_is_one_line_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "kubeconfig"
    result, elapsed = _run_operator("--kubeconfig", str(missing))
    line = _one_clear_line(result)
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert str(missing) in line and "does not exist" in line
    assert "pass --kubeconfig" in line  # what to do


def test_a_missing_kubeconfig_from_the_environment_names_where_it_came_from(tmp_path: Path) -> None:
    missing = tmp_path / "gone.yaml"
    result, elapsed = _run_operator(env={"KUBECONFIG": str(missing)})
    line = _one_clear_line(result)
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert str(missing) in line and "$KUBECONFIG" in line


def test_an_unreadable_kubeconfig_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [\n")
    result, elapsed = _run_operator("--kubeconfig", str(broken))
    line = _one_clear_line(result)
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert f"cannot load kubeconfig '{broken}'" in line and "valid file" in line


def test_a_refused_connection_is_one_line_instead_of_kopf_retries(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", f"https://{address}")
    result, elapsed = _run_operator("--kubeconfig", str(kubeconfig))
    line = _one_clear_line(result)
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert address in line and "connection refused" in line
    assert str(kubeconfig) in line and "start the cluster" in line  # what to do


def test_a_server_that_never_answers_times_out_in_seconds(tmp_path: Path, silent_server: str) -> None:
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", f"https://{silent_server}")
    result, elapsed = _run_operator("--kubeconfig", str(kubeconfig))
    line = _one_clear_line(result)
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert silent_server in line and "no answer within" in line and "start the cluster" in line


@pytest.mark.integration
def test_refused_credentials_are_one_line(control_plane: ControlPlane, tmp_path: Path) -> None:
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    for entry in config["users"]:
        entry["user"] = {"token": "not-a-real-token"}  # the real server's CA, a token it never issued
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    result, elapsed = _run_operator("--kubeconfig", str(kubeconfig))
    line = _one_clear_line(result)
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert control_plane.server in line and "refused the credentials" in line and "HTTP 401" in line
    assert str(kubeconfig) in line and "--kubeconfig" in line
