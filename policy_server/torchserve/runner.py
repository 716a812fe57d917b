"""Run a private TorchServe instance on loopback: for the integration test, the benchmark and local trials.

TorchServe instances on one machine collide unless each gets its own temporary directory (the launcher's pid
file and the workers' Unix sockets live there), its own ``java.io.tmpdir``, its own ``initial_worker_port`` and
its own gRPC ports; by default gRPC also listens on every interface. `TorchServe` gives every instance a fresh
directory and free loopback ports, registers models through the management API (so one JVM can serve several
batching configurations in turn) and stops the launcher, the JVM and its Python workers as one process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from policy_server.errors import PolicyServerError

__all__ = ["TorchServe", "TorchServeError", "free_port", "process_tree_rss_bytes"]

# Warnings only: the default log4j2 configuration writes a DEBUG log and one access-log line per request.
_QUIET_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <File name="ts_log" fileName="${env:LOG_LOCATION:-logs}/ts_log.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="MODEL_LOG" level="warn"><AppenderRef ref="ts_log"/></Logger>
    <Logger name="org.pytorch.serve" level="warn"><AppenderRef ref="ts_log"/></Logger>
    <Root level="warn"><AppenderRef ref="ts_log"/></Root>
  </Loggers>
</Configuration>
"""


class TorchServeError(PolicyServerError, RuntimeError):
    """TorchServe did not start, did not register a model, or answered with an error."""


def free_port() -> int:
    """A TCP port that is free on loopback right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, read from /proc (no psutil needed)."""
    children = _children_map()
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += _rss_bytes(current)
        stack.extend(children.get(current, []))
    return total


@dataclass
class TorchServe:
    """One TorchServe on loopback, isolated in its own directory; use as a context manager.

    **Parameters:**
    * model_store: folder holding the ``.mar`` files to register.
    * quiet_logs: write warnings only (no per-request access log), the tuned setting for benchmarks.
    * startup_timeout_s: bound on the wait for the HTTP endpoints and for each synchronous registration.
    """

    model_store: Path
    quiet_logs: bool = False
    startup_timeout_s: float = 120.0
    extra_config: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(init=False)
    inference_port: int = field(init=False, default=0)
    management_port: int = field(init=False, default=0)
    metrics_port: int = field(init=False, default=0)
    process: subprocess.Popen[bytes] | None = field(init=False, default=None)

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def predictions_url(self, model_name: str) -> str:
        return f"{self.inference_url}/predictions/{model_name}"

    def start(self) -> TorchServe:
        """Write config.properties, launch ``torchserve --foreground`` and wait until it answers /ping."""
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise TorchServeError("TorchServe needs Java 11+: install a JDK (apt-get install openjdk-17-jre-headless)")
        launcher = Path(sys.executable).with_name("torchserve")
        if not launcher.exists():
            raise TorchServeError(f"{launcher} not found: pip install torchserve into this environment")
        self.workdir = Path(tempfile.mkdtemp(prefix="torchserve-"))
        tmp = self.workdir / "tmp"
        logs = self.workdir / "logs"
        tmp.mkdir()
        logs.mkdir()
        self.inference_port, self.management_port, self.metrics_port = free_port(), free_port(), free_port()
        config = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(free_port()),
            "grpc_management_port": str(free_port()),
            # Workers talk to the frontend over Unix sockets named after this port, inside java.io.tmpdir.
            "initial_worker_port": str(free_port()),
            "enable_model_api": "true",
            "metrics_mode": "prometheus",
            "disable_system_metrics": "true",
            "async_logging": "true",
            "model_store": str(self.model_store),
            "vmargs": f"-Djava.io.tmpdir={tmp}",
            **self.extra_config,
        }
        config_path = self.workdir / "config.properties"
        config_path.write_text("".join(f"{key}={value}\n" for key, value in config.items()))
        command = [
            str(launcher),
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--model-store",
            str(self.model_store),
            "--ts-config",
            str(config_path),
        ]
        if self.quiet_logs:
            log_config = self.workdir / "log4j2.xml"
            log_config.write_text(_QUIET_LOG4J2)
            command += ["--log-config", str(log_config)]
        env = {
            **os.environ,
            "TMPDIR": str(tmp),
            "TEMP": str(tmp),
            "LOG_LOCATION": str(logs),
            "METRICS_LOCATION": str(logs),
        }
        self._console = (self.workdir / "console.log").open("wb")
        # A new session: the launcher, the JVM and the Python workers share one process group to kill at once.
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=env, stdout=self._console, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TorchServeError(
                    f"TorchServe exited with {self.process.returncode} at startup:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, TorchServeError):
                if self._request("GET", f"{self.inference_url}/ping", timeout=2).get("status") == "Healthy":
                    return self
            time.sleep(0.2)
        self.stop()
        raise TorchServeError(
            f"TorchServe did not answer /ping within {self.startup_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def register(
        self,
        mar_name: str,
        *,
        model_name: str,
        workers: int = 1,
        batch_size: int = 1,
        max_batch_delay_ms: int = 100,
    ) -> None:
        """Register ``mar_name`` from the model store and wait until its workers have loaded it."""
        query = urllib.parse.urlencode(
            {
                "url": mar_name,
                "model_name": model_name,
                "initial_workers": workers,
                "batch_size": batch_size,
                "max_batch_delay": max_batch_delay_ms,
                "synchronous": "true",
            }
        )
        self._request("POST", f"{self.management_url}/models?{query}", timeout=self.startup_timeout_s)

    def unregister(self, model_name: str, *, attempts: int = 5) -> None:
        """Remove a model and stop its workers (their memory is returned).

        Retried: right after heavy load TorchServe (0.12) sometimes answers the DELETE with 500
        (NullPointerException on a null batch job in its aggregator); a moment later it succeeds.
        """
        for attempt in range(1, attempts + 1):
            try:
                self._request("DELETE", f"{self.management_url}/models/{model_name}", timeout=self.startup_timeout_s)
                return
            except TorchServeError:
                if attempt == attempts:
                    raise
                time.sleep(0.5 * attempt)

    def rss_bytes(self) -> int:
        """Resident memory of the launcher, the JVM and every worker."""
        return process_tree_rss_bytes(self.process.pid) if self.process is not None else 0

    def log_tail(self, n_bytes: int = 4000) -> str:
        texts = []
        for name in ("console.log", "logs/ts_log.log", "logs/model_log.log"):
            path = self.workdir / name
            if path.exists():
                texts.append(f"--- {name}\n{path.read_bytes()[-n_bytes:].decode(errors='replace')}")
        return "\n".join(texts)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the whole process group, SIGKILL whatever is left after ``timeout_s``; remove the directory."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout_s)
            # The JVM may outlive the launcher, and workers the JVM: sweep the group until it is empty.
            deadline = time.monotonic() + timeout_s
            while _group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            self._console.close()
        if getattr(self, "workdir", None) is not None and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _request(self, method: str, url: str, *, timeout: float) -> dict[str, object]:
        request = urllib.request.Request(url, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise TorchServeError(f"{method} {url} answered {error.code}: {detail}") from error
        try:
            return json.loads(body) if body else {}
        except json.JSONDecodeError:
            return {"raw": body.decode(errors="replace")}

    def __enter__(self) -> TorchServe:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
