"""Helpers for the policy server tests: example artifacts, in-thread servers, CLI servers, a client."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import uvloop

from policy_server import artifact, server

REPO = Path(__file__).resolve().parents[2]


class Client:
    """A keep-alive HTTP/1.1 client (http.client: fast enough for thousands of requests per test)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | str | None = None) -> tuple[int, Any]:
        if isinstance(body, str):
            body = body.encode()
        try:
            self.conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            raise
        data = resp.read()
        if resp.will_close:
            self.conn.close()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, (json.loads(data) if ctype.startswith("application/json") else data.decode())

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, payload: Any) -> tuple[int, Any]:
        return self.request("POST", path, json.dumps(payload))

    def act(self, observation: list[float], **extra: Any) -> dict[str, Any]:
        status, body = self.post("/v1/act", {"observation": observation, **extra})
        assert status == 200, body
        return body

    def metrics(self) -> dict[str, float]:
        status, text = self.get("/metrics")
        assert status == 200
        return parse_metrics(text)

    def close(self) -> None:
        self.conn.close()


def pipelined(port: int, payloads: list[dict[str, Any]], timeout: float = 10.0) -> list[tuple[int, Any]]:
    """POST every payload to /v1/act in one write on one connection (HTTP/1.1 pipelining): the server
    parses them in one loop iteration, so they share a micro-batch. (status, JSON body) per answer, in order."""
    data = b""
    for payload in payloads:
        body = json.dumps(payload).encode()
        data += b"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    answers: list[tuple[int, Any]] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        while len(answers) < len(payloads):
            head_end = buffer.find(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", buffer[:head_end]) if head_end >= 0 else None
            if length and len(buffer) >= head_end + 4 + int(length[1]):
                body_end = head_end + 4 + int(length[1])
                answers.append((int(buffer.split(b" ", 2)[1]), json.loads(buffer[head_end + 4 : body_end])))
                buffer = buffer[body_end:]
                continue
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(answers)} of {len(payloads)} answers after {timeout}s: {buffer[-500:]!r}")
            buffer += conn.recv(65536)
    return answers


def pipelined_acts(port: int, payloads: list[dict[str, Any]], timeout: float = 10.0) -> list[dict[str, Any]]:
    """:func:`pipelined`, every answer a 200: their bodies, in order."""
    answers = pipelined(port, payloads, timeout)
    assert [status for status, _ in answers] == [200] * len(payloads), answers
    return [body for _, body in answers]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels sorted as exposed}': value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(samples: dict[str, float], __name: str, **labels: str) -> float:
    """Value of the sample ``name`` whose labels include ``labels``; KeyError if absent."""
    for key, value in samples.items():
        n, _, rest = key.partition("{")
        if n != __name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            return value
    raise KeyError(f"{__name}{labels} not exposed")


class InThreadServer:
    """A PolicyServer on its own uvloop loop in a daemon thread."""

    def __init__(self, config: server.ServerConfig, loader: Callable | None = None) -> None:
        self.app = server.PolicyServer(config, **({"loader": loader} if loader else {}))
        self.port = 0
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            try:
                self.port = await self.app.start("127.0.0.1", 0)
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._started.set()
            await self.app.wait_stopped()

        self.loop = uvloop.new_event_loop()
        self.loop.run_until_complete(main())
        self.loop.close()

    def start(self) -> InThreadServer:
        self.thread.start()
        assert self._started.wait(30), "server did not bind"
        if self._error:
            raise self._error
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.app.wait_ready(), self.loop)
        fut.result(timeout)

    def stop(self) -> None:
        if self.thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self.app.shutdown(), self.loop)
            fut.result(30)
            self.thread.join(10)

    def client(self) -> Client:
        return Client(self.port)


@contextmanager
def running(
    model: str | Path, loader: Callable | None = None, ready: bool = True, **config: Any
) -> Iterator[InThreadServer]:
    """A started in-thread server (waited until ready unless ``ready=False``), shut down afterwards."""
    srv = InThreadServer(server.ServerConfig(model=str(model), warmup_iters=2, **config), loader).start()
    try:
        if ready:
            srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``models(kind=..., format=..., **kwargs)`` -> artifact dir, cached per argument set."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("models")

    def make(**kwargs: Any) -> Path:
        key = json.dumps(kwargs, sort_keys=True)
        if key not in cache:
            cache[key] = artifact.write_example_model(root / f"m{len(cache)}", **kwargs)
        return cache[key]

    return make


def write_custom_artifact(out: Path, module: torch.nn.Module, manifest: dict[str, Any]) -> Path:
    """Script ``module`` and write it with ``manifest`` (program/sha256/format filled in)."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), buf)
    (out / "policy.pt").write_bytes(buf.getvalue())
    full = {
        "schema_version": 1,
        "name": "custom",
        "version": "c1",
        "format": "torchscript",
        "program": "policy.pt",
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        **manifest,
    }
    (out / "manifest.json").write_text(json.dumps(full))
    return out


def reseal_manifest(model: Path) -> None:
    """Set the manifest's sha256 to the program's, as an attacker with write access to the bucket would."""
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256((model / manifest["program"]).read_bytes()).hexdigest()
    (model / "manifest.json").write_text(json.dumps(manifest))


class CliServer:
    """``policy-server serve`` as a subprocess on a free port."""

    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.port = port

    def client(self) -> Client:
        return Client(self.port)


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "policy_server.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def cli_server(*args: str, ready_timeout: float = 90) -> Iterator[CliServer]:
    proc = start_cli(*args)
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on http://[\d.]+:(\d+)", line)
        assert m, f"no listening line: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        srv = CliServer(proc, int(m.group(1)))
        deadline = time.monotonic() + ready_timeout
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                status, _ = Client(srv.port, timeout=2).get("/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.1)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
