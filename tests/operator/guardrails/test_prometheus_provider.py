"""PrometheusProvider against the real Prometheus binary scraping an exporter we control.

Covers: exact values, scalars, rate() over a counter, no data, several series, NaN, range
vectors, PromQL syntax errors, wrong URLs, unreachable and hanging servers, and a Prometheus
stopped and restarted mid-test. One Prometheus serves the whole module (module-scoped fixtures).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.core import CounterMetricFamily
from rollout_operator.engine import types
from rollout_operator.guardrails import factory, prometheus, provider

from tests.support.prometheus import Exporter, PrometheusServer, free_port

pytestmark = pytest.mark.integration

RATIO = 'guardrail_ratio{rollout="r1",variant="candidate"}'


@pytest.fixture(scope="module")
def seeded(exporter: Exporter, prometheus: PrometheusServer) -> PrometheusServer:
    """Series every test may read; waits once for the first scrape (~5-6 s after start)."""
    exporter.set("guardrail_ratio", 0.0123456789, rollout="r1", variant="candidate")
    exporter.set("guardrail_ratio", 0.5, rollout="r2", variant="candidate")
    exporter.set("guardrail_ratio", 0.25, rollout="r2", variant="stable")
    exporter.set("guardrail_ratio", float("nan"), rollout="r3", variant="candidate")
    prometheus.wait_for('count(guardrail_ratio{rollout=~"r[123]"})', lambda v: v == 4)
    return prometheus


@pytest.fixture
def prom(seeded: PrometheusServer) -> Iterator[prometheus.PrometheusProvider]:
    with prometheus.PrometheusProvider(seeded.url, timeout=2.0) as p:
        yield p


def test_known_value_comes_back_exactly(prom: prometheus.PrometheusProvider) -> None:
    assert prom.query(RATIO) == types.Measurement(value=0.0123456789)


def test_scalar_results(prom: prometheus.PrometheusProvider) -> None:
    assert prom.query(f"scalar({RATIO}) * 2") == types.Measurement(value=0.0246913578)
    assert prom.query("1 + 1") == types.Measurement(value=2.0)


def test_follows_changes(exporter: Exporter, seeded: PrometheusServer, prom: prometheus.PrometheusProvider) -> None:
    exporter.set("guardrail_changing", 1.0, rollout="r1")
    seeded.wait_for("guardrail_changing", lambda v: v == 1.0)
    assert prom.query("guardrail_changing").value == 1.0
    exporter.set("guardrail_changing", 7.5, rollout="r1")
    seeded.wait_for("guardrail_changing", lambda v: v == 7.5)
    assert prom.query("guardrail_changing").value == 7.5


class _SteadyCounter:
    """A counter that grows exactly 100 per second of wall time, read at scrape time."""

    def __init__(self) -> None:
        self.start = time.time()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("guardrail_requests", "steady test counter", labels=["rollout"])
        family.add_metric(["r1"], 100.0 * (time.time() - self.start))
        yield family


def test_rate_over_counter(exporter: Exporter, seeded: PrometheusServer, prom: prometheus.PrometheusProvider) -> None:
    collector = _SteadyCounter()
    exporter.registry.register(collector)
    try:
        query = 'rate(guardrail_requests_total{rollout="r1"}[5s])'
        # rate() underestimates a series younger than its window: wait until 5 s of samples exist.
        seeded.wait_for('count_over_time(guardrail_requests_total{rollout="r1"}[5s])', lambda n: n >= 5)
        measurement = prom.query(query)
    finally:
        exporter.registry.unregister(collector)
    assert measurement.error is None
    assert measurement.value == pytest.approx(100.0, rel=0.1)


def test_no_data(prom: prometheus.PrometheusProvider) -> None:
    measurement = prom.query('guardrail_ratio{rollout="nobody"}')
    assert measurement.value is None
    assert measurement.error is not None
    assert measurement.error.startswith(provider.NO_DATA)
    assert "no data" in measurement.error


def test_series_removed_from_exporter_becomes_no_data(
    exporter: Exporter, seeded: PrometheusServer, prom: prometheus.PrometheusProvider
) -> None:
    exporter.set("guardrail_vanishing", 3.0, rollout="r1")
    seeded.wait_for("guardrail_vanishing", lambda v: v == 3.0)
    exporter.remove("guardrail_vanishing", rollout="r1")
    seeded.wait_for_no_data("guardrail_vanishing")
    assert provider.NO_DATA in (prom.query("guardrail_vanishing").error or "")


def test_several_series_is_an_error_naming_the_count(prom: prometheus.PrometheusProvider) -> None:
    measurement = prom.query('guardrail_ratio{rollout="r2"}')
    assert measurement.value is None
    assert measurement.error is not None
    assert provider.MULTIPLE_SERIES in measurement.error
    assert "2 series" in measurement.error
    assert 'variant="stable"' in measurement.error and 'variant="candidate"' in measurement.error
    # Aggregated, the same series give one number.
    assert prom.query('max(guardrail_ratio{rollout="r2"})') == types.Measurement(value=0.5)


@pytest.mark.parametrize(
    "query", ['guardrail_ratio{rollout="r3"}', "0 / 0", f"{RATIO} / 0"], ids=["nan-gauge", "nan-scalar", "inf"]
)
def test_nan_and_inf_are_errors(prom: prometheus.PrometheusProvider, query: str) -> None:
    measurement = prom.query(query)
    assert measurement.value is None
    assert provider.NOT_A_NUMBER in (measurement.error or "")


@pytest.mark.parametrize("query", [f"{RATIO}[1m]", '"just a string"'], ids=["matrix", "string"])
def test_non_scalar_results_are_errors(prom: prometheus.PrometheusProvider, query: str) -> None:
    measurement = prom.query(query)
    assert measurement.value is None
    assert provider.NOT_SCALAR in (measurement.error or "")


def test_syntax_error_carries_prometheus_message(seeded: PrometheusServer, prom: prometheus.PrometheusProvider) -> None:
    bad = "sum(guardrail_ratio{rollout="
    expected = seeded.query(bad)
    assert expected["status"] == "error"
    measurement = prom.query(bad)
    assert measurement.value is None
    assert measurement.error is not None
    assert provider.QUERY_FAILED in measurement.error
    assert expected["error"] in measurement.error
    assert "bad_data" in measurement.error


def test_wrong_url_is_an_http_error(exporter: Exporter, seeded: PrometheusServer) -> None:
    with prometheus.PrometheusProvider(f"{seeded.url}/not-here") as wrong_path:
        measurement = wrong_path.query("1")
        assert measurement.value is None
        assert provider.HTTP_ERROR in (measurement.error or "")
        assert "404" in (measurement.error or "")
        assert not wrong_path.is_online()
    with prometheus.PrometheusProvider(f"http://{exporter.target}") as not_prometheus:
        assert provider.HTTP_ERROR in (not_prometheus.query("1").error or "")


def test_nothing_listening_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with prometheus.PrometheusProvider(url, timeout=1.0) as p:
        measurement = p.query("1")
        assert measurement.value is None
        assert measurement.error is not None
        assert measurement.error.startswith(f"prometheus unreachable at {url}: ")
        assert not p.is_online()


def test_hanging_server_times_out_as_unreachable() -> None:
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with prometheus.PrometheusProvider(url, timeout=0.5) as p:
            measurement = p.query("1")
            assert measurement.value is None
            assert provider.UNREACHABLE in (measurement.error or "")
            assert "no answer within 0.5s" in (measurement.error or "")
            assert not p.is_online()


def test_injected_client_is_used_and_left_open(seeded: PrometheusServer) -> None:
    requests: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [requests.append]}) as client:
        with prometheus.PrometheusProvider(seeded.url + "/", client=client) as p:
            assert p.query(RATIO).value == 0.0123456789
        assert not client.is_closed
    assert [(r.method, r.url.path) for r in requests] == [("POST", "/api/v1/query")]
    assert b"query=" in requests[0].content


def test_factory_makes_a_working_provider(seeded: PrometheusServer) -> None:
    made = factory.make_metric_provider("prometheus", base_url=seeded.url, timeout=2.0)
    assert isinstance(made, provider.MetricProvider)
    assert made.name == "prometheus"
    assert made.is_online()
    assert made.query(RATIO).value == 0.0123456789


def test_factory_fixture_gives_an_independent_prometheus(
    prometheus_factory: Callable[..., PrometheusServer], seeded: PrometheusServer
) -> None:
    other = prometheus_factory()  # no targets: only its own API
    assert other.running and other.port != seeded.port
    with prometheus.PrometheusProvider(other.url) as p:
        assert p.is_online()
        assert p.query("vector(42)") == types.Measurement(value=42.0)
        assert provider.NO_DATA in (p.query(RATIO).error or "")


def test_stopped_then_restarted(exporter: Exporter, seeded: PrometheusServer) -> None:
    """Runs last in the module: it stops the shared Prometheus (and always starts it again)."""
    p = prometheus.PrometheusProvider(seeded.url, timeout=2.0)
    assert p.is_online()
    try:
        seeded.stop()
        measurement = p.query(RATIO)
        assert measurement.value is None
        assert (measurement.error or "").startswith(f"prometheus unreachable at {seeded.url}")
        assert not p.is_online()
    finally:
        seeded.start()
    assert p.is_online()
    # The TSDB survived, and new scrapes arrive again.
    exporter.set("guardrail_ratio", 0.75, rollout="r1", variant="candidate")
    seeded.wait_for(RATIO, lambda v: v == 0.75)
    assert p.query(RATIO) == types.Measurement(value=0.75)
    p.close()
