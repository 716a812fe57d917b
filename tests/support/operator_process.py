"""The real operator (`policy-rollouts operator`) as a child process, for end-to-end scenarios.

A subprocess rather than kopf in a thread: scenarios SIGKILL it mid-rollout and start it
again, which is what a crashed or rescheduled operator pod does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rollout_operator import checks

from tests.support.cluster import ClusterAPI

# The operator's policy in the tests (docs/security.md): its Jobs may run the tests' policy-server image.
TRUST_ENV = {checks.ENV_JOB_IMAGES: "ghcr.io/acme/policy-server:*"}


class OperatorProcess:
    def __init__(self, kubeconfig: Path, prometheus_url: str, log_path: Path, tick: float = 0.2,
                 extra_args: tuple[str, ...] = ("--metrics-port", "0"), env: dict[str, str] | None = None) -> None:
        """`extra_args` go after the standard flags (default: no metrics server, so runs never fight over its port);
        `env` replaces TRUST_ENV, the operator's policy."""
        self.env = TRUST_ENV if env is None else env
        self.kubeconfig = kubeconfig
        self.extra_args = tuple(extra_args)
        self.prometheus_url = prometheus_url
        self.log_path = log_path
        self.tick = tick
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        assert self.process is None or self.process.poll() is not None, "operator already running"
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env.pop("KUBECONFIG", None)
        command = [sys.executable, "-m", "rollout_operator.cli.main", "operator",
                   "--kubeconfig", str(self.kubeconfig), "--prometheus-url", self.prometheus_url,
                   "--tick", str(self.tick), "--verbose", *self.extra_args]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no final status write — a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def poll(predicate: Any, timeout: float, interval: float = 0.1, what: str = "", on_timeout: Any = None) -> Any:
    """Poll until `predicate()` is truthy; on timeout fail with `what` and `on_timeout()`'s text."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{detail}")
        time.sleep(interval)


NO_PROMETHEUS = "http://127.0.0.1:9"  # nothing listens there: a guardrail query would fail loudly


@pytest.fixture()
def operator(cluster: ClusterAPI, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator against the real control plane, for rollouts without guardrails (Prometheus is never queried).

    Scenarios with guardrails override it with one pointed at their Prometheus (test_scenarios.py).
    """
    process = OperatorProcess(cluster.operator_kubeconfig, NO_PROMETHEUS, tmp_path / "operator.log").start()
    try:
        yield process
    finally:
        process.stop()
