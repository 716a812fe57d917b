"""A real Prometheus and an exporter the test controls, on loopback.

Guardrail tests must exercise the same HTTP API and PromQL engine that production uses, so
instead of faking Prometheus we run the Debian `prometheus` binary against a tiny exporter
whose gauges and counters the test sets.

Usage::

    def test_x(exporter, prometheus):
        exporter.set("policy_errors_ratio", 0.5, rollout="r", variant="candidate")
        value = prometheus.wait_for('policy_errors_ratio{rollout="r"}', lambda v: v == 0.5)

Fixtures (enable them with `pytest_plugins = ("tests.support.prometheus",)` in a test module or
the root conftest):

- `exporter`: module-scoped `Exporter`.
- `prometheus`: module-scoped `PrometheusServer` scraping `exporter` every second, started and
  ready. Tests that stop it must start it again (see `PrometheusServer.stop`).
- `prometheus_factory`: function-scoped; `prometheus_factory(*targets)` returns a started
  `PrometheusServer` of your own; all are closed at teardown.

Timings measured here (2 cores, Prometheus 2.42, 1 s scrape): ready 0.1-0.2 s after start;
the first sample is queryable ~5.2 s after start (the discovery manager throttles target
updates to 5 s); `rate(x[5s])` is non-empty ~1 s later but underestimates until the series is
older than the window. A value set on the exporter shows up within ~1-2 s once scraping runs,
and a removed series goes stale (no data) within ~1 s. `stop()` takes ~10 ms; after `start()`
Prometheus is ready in ~0.05 s and *immediately serves the samples it had before the stop*
(same TSDB, no stale markers are written on shutdown); fresh scrapes resume ~5-6 s later.
`wait_for` polls instead of sleeping; give it >= 30 s on a loaded machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from rollout_operator.cluster.ports import free_port

PROMETHEUS_BINARY = os.environ.get("PROMETHEUS_BINARY") or shutil.which("prometheus") or "/usr/bin/prometheus"


# ---------------------------------------------------------------------------------- exporter


class Exporter:
    """A `/metrics` endpoint on 127.0.0.1 whose series the test sets.

    Each metric name is a gauge (`set`) or a counter (`inc`); its label names are fixed by the
    first call. prometheus_client exposes a counter `x` as `x_total`: query that name.
    Label values may be any string (the exposition format escapes them), which lets tests
    create series whose labels hold hostile text.
    """

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._server, self._thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.port: int = int(self._server.server_port)
        self.target = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.target}/metrics"

    def _metric(self, kind: type, name: str, labels: dict[str, str]) -> Any:
        with self._lock:
            metric = self._metrics.get(name)
            if metric is None:
                metric = kind(name, f"test metric {name}", sorted(labels), registry=self.registry)
                self._metrics[name] = metric
        if not isinstance(metric, kind):
            raise TypeError(f"metric {name!r} is a {type(metric).__name__}, not a {kind.__name__}: use another name")
        if set(metric._labelnames) != set(labels):
            raise ValueError(f"metric {name!r} has labels {sorted(metric._labelnames)}, got {sorted(labels)}")
        return metric.labels(**labels) if labels else metric

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set gauge `name{labels}` to `value` (NaN and +-Inf allowed)."""
        self._metric(prometheus_client.Gauge, name, labels).set(value)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` to counter `name{labels}`, exposed as `name_total`; `amount=0` just creates it."""
        self._metric(prometheus_client.Counter, name, labels).inc(amount)

    def remove(self, name: str, **labels: str) -> None:
        """Drop one series; Prometheus marks it stale at the next scrape, so queries see no data."""
        metric = self._metrics[name]
        if labels:
            metric.remove(*(labels[n] for n in metric._labelnames))
        else:
            self.registry.unregister(metric)
            del self._metrics[name]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -------------------------------------------------------------------------------- prometheus


def _die_with_parent() -> None:
    """Linux: SIGTERM the child when the thread that started it dies (e.g. pytest is killed),
    so a crashed test run leaves no Prometheus behind. Start servers from a long-lived thread."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PrometheusServer:
    """The real Prometheus binary on a loopback port, with its own config and TSDB directory.

    `stop()` and `start()` may be called repeatedly: the port and the TSDB stay the same, so a
    test can make Prometheus unreachable mid-rollout and bring it back with its history.

    Attributes: `port`, `url` (no trailing slash), `workdir`, `config_path`, `data_dir`,
    `log_path` (stdout+stderr of the binary, appended across restarts), `targets`.
    """

    def __init__(
        self,
        targets: list[str],
        *,
        scrape_interval: str = "1s",
        port: int | None = None,
        binary: str = PROMETHEUS_BINARY,
        extra_args: list[str] | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        if not Path(binary).is_file():
            raise FileNotFoundError(
                f"prometheus binary not found at {binary}: install it (apt-get install prometheus, "
                "or scripts/bootstrap.sh) or set PROMETHEUS_BINARY"
            )
        self.binary = binary
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args or [])
        self.ready_timeout = ready_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="prometheus-test-"))
        self.config_path = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=5.0)
        self._write_config()

    def _write_config(self) -> None:
        # JSON is valid YAML; scrape_timeout must not exceed the interval (default 10 s would).
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [{"job_name": "test", "static_configs": [{"targets": self.targets}]}],
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> PrometheusServer:
        """Start the binary and wait for `/-/ready`; raise with the log tail if it does not come up."""
        if self.running:
            return self
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.data_dir}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self._http.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"prometheus not ready within {self.ready_timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; afterwards the port refuses connections."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def close(self) -> None:
        """Stop and delete the config, TSDB and log."""
        self.stop()
        self._http.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------------------ queries

    def query(self, promql: str) -> dict[str, Any]:
        """The raw JSON answer of an instant query (`status`, `data` or `error`)."""
        response = self._http.post(f"{self.url}/api/v1/query", data={"query": promql})
        return response.json()

    def value(self, promql: str) -> float | None:
        """The query's single number: None if it has no data; raises on errors or several series."""
        body = self.query(promql)
        if body.get("status") != "success":
            raise ValueError(f"query {promql!r} failed: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        if data["resultType"] != "vector":
            raise ValueError(f"query {promql!r} returned a {data['resultType']}, not a vector")
        if not data["result"]:
            return None
        if len(data["result"]) > 1:
            raise ValueError(f"query {promql!r} returned {len(data['result'])} series")
        return float(data["result"][0]["value"][1])

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[float], bool] = lambda _: True,
        timeout: float = 30.0,
        interval: float = 0.25,
    ) -> float:
        """Poll until the query has one number satisfying `predicate`; return it.

        Raises TimeoutError naming the last value (or error) seen, and the log tail, so a test
        that waits in vain says why.
        """
        deadline = time.monotonic() + timeout
        last: object = "nothing yet"
        while True:
            try:
                value = self.value(promql)
                if value is not None and predicate(value):
                    return value
                last = value
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{promql!r} did not satisfy the predicate within {timeout}s; last: {last!r}\n{self.log_tail(10)}"
                )
            time.sleep(interval)

    def wait_for_no_data(self, promql: str, timeout: float = 30.0, interval: float = 0.25) -> None:
        """Poll until the query returns an empty result (e.g. after `Exporter.remove`)."""
        deadline = time.monotonic() + timeout
        last: object = "nothing yet"
        while time.monotonic() < deadline:
            try:
                last = self.value(promql)
                if last is None:
                    return
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            time.sleep(interval)
        raise TimeoutError(f"{promql!r} still has data after {timeout}s; last: {last!r}")


# ---------------------------------------------------------------------------------- fixtures


def _require_binary() -> None:
    if not Path(PROMETHEUS_BINARY).is_file():
        pytest.fail(
            f"prometheus binary not found at {PROMETHEUS_BINARY}: apt-get install prometheus "
            "(scripts/bootstrap.sh does) or set PROMETHEUS_BINARY",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    """A module-scoped exporter on 127.0.0.1; its series persist across the module's tests."""
    exp = Exporter()
    try:
        yield exp
    finally:
        exp.close()


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter) -> Iterator[PrometheusServer]:
    """A module-scoped, started Prometheus scraping `exporter` every second."""
    _require_binary()
    server = PrometheusServer([exporter.target])
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def prometheus_factory() -> Iterator[Callable[..., PrometheusServer]]:
    """Make extra started Prometheus servers (`factory(*targets, **kwargs)`); all closed at teardown."""
    _require_binary()
    servers: list[PrometheusServer] = []

    def make(*targets: str, **kwargs: Any) -> PrometheusServer:
        server = PrometheusServer(list(targets), **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.close()
