"""A real Prometheus as a local process, scraping the local policy servers and routers.

Targets are declared through a `file_sd` file, with the `rollout` and `namespace` labels that the
Kubernetes scrape configuration adds by relabelling (docs/guardrails.md), so the guardrail
templates render to the very same PromQL in both modes. Prometheus applies target changes at
most every ~5 s: declare the targets early (before the shadow step) and they are scraped by the
time the canary analysis starts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from rollout_lab.local import processes

__all__ = ["INSTALL_HINT", "LocalPrometheus", "find_binary"]

INSTALL_HINT = (
    "Prometheus is needed for the guardrails: install it with `sudo apt-get install prometheus` (Debian/Ubuntu; "
    "`make demo` does it when run as root), or download it from https://prometheus.io/download/ and put the "
    "`prometheus` binary on PATH or in $PROMETHEUS_BINARY"
)


def find_binary() -> str:
    """The Prometheus binary ($PROMETHEUS_BINARY, then PATH); raises FileNotFoundError with how to get it."""
    candidate = os.environ.get("PROMETHEUS_BINARY") or shutil.which("prometheus")
    if not candidate or not os.access(candidate, os.X_OK):
        raise FileNotFoundError(f"no Prometheus binary found. {INSTALL_HINT}")
    return candidate


class LocalPrometheus:
    def __init__(self, workdir: Path, scrape_interval: str = "500ms") -> None:
        self.workdir = workdir
        self.scrape_interval = scrape_interval
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_path = workdir / "prometheus" / "targets.json"
        self._groups: dict[str, dict] = {}
        self._targets_lock = threading.Lock()  # rollouts run in threads; a late stale write would drop a group
        self.process: processes.LocalProcess | None = None

    def start(self) -> None:
        binary = find_binary()
        root = self.workdir / "prometheus"
        root.mkdir(parents=True, exist_ok=True)
        self._write_targets()
        config = root / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{
                "job_name": "policy-rollouts-local",
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "file_sd_configs": [{"files": [str(self.targets_path)], "refresh_interval": "1s"}],
            }],
        }, indent=2))
        self.process = processes.LocalProcess("prometheus", [
            binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ], self.workdir / "logs")
        self.process.wait_http(f"{self.url}/-/ready", timeout=30)

    def set_targets(self, key: str, targets: list[str], labels: dict[str, str]) -> None:
        """Scrape `targets` (host:port) with `labels`; `key` names the group (one per rollout)."""
        with self._targets_lock:
            self._groups[key] = {"targets": targets, "labels": labels}
            self._write_targets()

    def _write_targets(self) -> None:
        self.targets_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.targets_path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(list(self._groups.values()), out)
        os.replace(tmp, self.targets_path)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
