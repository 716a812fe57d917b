"""Child processes of local mode: start, wait until they answer, stop for sure.

Every process writes its output to its own log file (a newcomer debugging the demo reads
`DIR/logs/<name>.log`), and is stopped with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

# Re-exported: every local process takes its port from the one registry of handed-out ports.
from rollout_operator.cluster.ports import free_port

from rollout_lab.errors import RolloutLabError

__all__ = ["LocalProcess", "ProcessError", "free_port", "policy_server_command"]


class ProcessError(RolloutLabError, RuntimeError):
    """A local process did not start or died; the message names its log file."""


def policy_server_command(*args: str) -> list[str]:
    """`policy-server ARGS` with this interpreter, so local mode works without the console script on PATH."""
    return [sys.executable, "-m", "policy_server.cli", *args]


class LocalProcess:
    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_start = self._log.tell()  # the file may hold earlier processes' output (same name)
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 1500) -> str:
        """The end of the log, whole lines only (a reason cut mid-sentence helps nobody), about `chars` long."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        lines = text.splitlines(keepends=True)
        kept: list[str] = []
        for line in reversed(lines):
            if kept and sum(map(len, kept)) + len(line) > chars:
                break
            kept.append(line)
        return "".join(reversed(kept))

    def printed(self, text: str) -> bool:
        """Whether this process (not an earlier one logging to the same file) has printed ``text``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return text.encode() in f.read()
        except OSError:
            return False

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Poll `url` until it answers 200; raise with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise ProcessError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n{self.tail()}"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ProcessError(f"{self.name} did not answer {url} within {timeout:.0f} s; see {self.log_path}")

    def stop(self, grace: float = 5.0) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
