"""Fixtures for the router tests: two real policy servers (session-wide) and router processes.

``stable`` and ``candidate`` are ``policy-server serve`` subprocesses of two different greedy
example policies (so their actions differ on some observations and agree on others);
``start_router(*flags)`` runs ``policy-server route`` as a subprocess and waits until it answers.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from policy_server import artifact
from tests.support.policy_server import REPO, CliServer, cli_server, parse_metrics


class HttpClient:
    """Keep-alive JSON client that can send extra headers (the sticky key)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            resp = self.conn.getresponse()
            raw = resp.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            raise
        ctype = resp.getheader("Content-Type", "")
        return resp.status, (json.loads(raw) if ctype.startswith("application/json") else raw.decode())

    def act(self, observation: list[float], headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        status, body = self.request("POST", "/v1/act", {"observation": observation, **extra}, headers)
        assert status == 200, body
        return body

    def metrics(self) -> dict[str, float]:
        status, text = self.request("GET", "/metrics")
        assert status == 200, text
        return parse_metrics(text)

    def close(self) -> None:
        self.conn.close()


class RouterProc:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port

    def client(self) -> HttpClient:
        return HttpClient(self.port)

    def table(self) -> dict[str, Any]:
        c = self.client()
        try:
            status, body = c.request("GET", "/router/config")
        finally:
            c.close()
        assert status == 200, body
        return body

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def start_router(*flags: str, timeout: float = 30, env: dict[str, str] | None = None) -> Iterator[RouterProc]:
    proc = subprocess.Popen(
        # A generous candidate budget by default, so that a slow answer on this loaded machine does not turn
        # into a fallback in tests about something else; tests of the budget pass their own (the last flag wins).
        [
            sys.executable,
            "-m",
            "policy_server.cli",
            "route",
            "--port",
            "0",
            "--log-level",
            "WARNING",
            "--latency-budget-ms",
            "10000",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on http://[\d.]+:(\d+)", line)
        assert m, f"router did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        router = RouterProc(proc, int(m.group(1)))
        deadline = time.monotonic() + timeout
        while True:
            try:
                c = router.client()
                status, _ = c.request("GET", "/readyz")
                c.close()
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "router not ready in time"
            time.sleep(0.05)
        yield router
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class Standin:
    """A stand-in policy server process (standin.py): kill it, restart it on the same port, read what it got."""

    def __init__(self, name: str, variant: str, env: dict[str, str] | None, fail_rewards: int = 0) -> None:
        self.name, self.variant, self.env, self.fail_rewards = name, variant, env, fail_rewards
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Standin:
        cmd = [sys.executable, "-m", "tests.policy_server.router.standin", "--port", str(self.port)]
        cmd += ["--name", self.name, "--variant", self.variant, "--fail-rewards", str(self.fail_rewards)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, **(self.env or {})}
        )
        line = self.proc.stdout.readline()
        m = re.search(r"listening on http://[\d.]+:(\d+)", line)
        assert m, f"stand-in {self.name} did not start: {line!r}"
        self.port = int(m.group(1))
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def received(self) -> list[dict[str, Any]]:
        c = HttpClient(self.port)
        try:
            status, body = c.request("GET", "/received")
        finally:
            c.close()
        assert status == 200, body
        return body


@contextmanager
def standins(
    variant: str, n: int, env: dict[str, str] | None = None, fail_rewards: int = 0
) -> Iterator[list[Standin]]:
    """``n`` stand-in endpoints of ``variant`` named ``s0..`` (stable) or ``c0..`` (candidate), killed after."""
    procs = [Standin(f"{variant[0]}{i}", variant, env, fail_rewards) for i in range(n)]
    try:
        for s in procs:
            s.start()
        yield procs
    finally:
        for s in procs:
            s.kill()


def url(server: CliServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def total(samples: dict[str, float], name: str) -> float:
    """Sum of every sample of ``name`` (all label sets)."""
    return sum(v for k, v in samples.items() if k.partition("{")[0] == name)


@pytest.fixture(scope="session")
def router_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("router-models")
    greedy = {"kind": "greedy"}
    return {
        "stable": artifact.write_example_model(root / "stable", seed=3, version="v1", exploration=greedy),
        "candidate": artifact.write_example_model(root / "candidate", seed=2, version="v2", exploration=greedy),
    }


@pytest.fixture(scope="session")
def stable(router_models: dict[str, Path]) -> Iterator[CliServer]:
    with cli_server("--model", str(router_models["stable"]), "--variant", "stable", "--max-wait-ms", "0") as srv:
        yield srv


@pytest.fixture(scope="session")
def candidate(router_models: dict[str, Path]) -> Iterator[CliServer]:
    with cli_server("--model", str(router_models["candidate"]), "--variant", "candidate", "--max-wait-ms", "0") as srv:
        yield srv
