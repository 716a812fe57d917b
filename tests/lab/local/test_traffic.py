"""The routing table local mode writes: each variant's endpoints, as a Service's, in the router's file.

A variant with several replicas is the list of their URLs; one replica is its URL alone (read by
routers with and without list support). Weights and shadow are written as the engine set them.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from rollout_lab.local import traffic, workloads
from rollout_operator import api
from rollout_operator.engine.types import Weights


def _rollout(stable_replicas: int, candidate_replicas: int) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate({
        "metadata": {"name": "table", "namespace": "test", "generation": 1},
        "spec": {"policy": {"image": "local", "artifact": "c", "version": "v2", "replicas": candidate_replicas},
                 "fallback": {"image": "local", "artifact": "f", "version": "v1", "replicas": stable_replicas},
                 "steps": [{"setWeight": 50}], "allowPromotionWithoutAnalysis": True},
    })


def _written(tmp_path: Path, rollout: api.PolicyRollout, weights: Weights) -> tuple[dict, workloads.LocalWorkloads]:
    local = workloads.LocalWorkloads(tmp_path)
    router = traffic.LocalTraffic(tmp_path, local)
    router.set_weights(rollout, weights)
    return json.loads(router.table_path(rollout).read_text()), local


def test_each_variant_is_the_list_of_its_replicas_urls(tmp_path: Path) -> None:
    rollout = _rollout(stable_replicas=2, candidate_replicas=3)
    table, local = _written(tmp_path, rollout, Weights(candidate=20))
    assert table["stable"] == local.urls(rollout, "stable") and len(table["stable"]) == 2
    assert table["candidate"] == local.urls(rollout, "candidate") and len(table["candidate"]) == 3
    assert table["weight"] == 20 and table["shadow"] is False


def test_a_single_replica_is_written_as_its_url(tmp_path: Path) -> None:
    rollout = _rollout(stable_replicas=1, candidate_replicas=1)
    table, local = _written(tmp_path, rollout, Weights(candidate=0, shadow=True))
    assert table["stable"] == local.url(rollout, "stable")
    assert table["candidate"] == local.url(rollout, "candidate")
    assert table["shadow"] is True


def test_endpoints_collapse_only_a_single_url() -> None:
    assert traffic.endpoints(["http://127.0.0.1:1"]) == "http://127.0.0.1:1"
    assert traffic.endpoints(["http://127.0.0.1:1", "http://127.0.0.1:2"]) == ["http://127.0.0.1:1",
                                                                               "http://127.0.0.1:2"]


class _Router:
    """Stands in for the router process: alive (its HTTP side is `_serving`)."""

    alive = True


@pytest.mark.parametrize("echo", ["as written", "always lists"])
def test_weights_are_read_back_whether_the_router_echoes_a_url_or_a_list(tmp_path: Path, echo: str) -> None:
    rollout = _rollout(stable_replicas=1, candidate_replicas=2)
    table, local = _written(tmp_path, rollout, Weights(candidate=50))
    if echo == "always lists":
        table["stable"] = [table["stable"]]
    router = traffic.LocalTraffic(tmp_path, local)
    with _serving(router, rollout, table):
        assert router.get_weights(rollout) == Weights(candidate=50)
    table["candidate"] = table["candidate"][:1]  # a table naming other endpoints is not this rollout's split
    with _serving(router, rollout, table):
        assert router.get_weights(rollout) is None


@contextlib.contextmanager
def _serving(router: traffic.LocalTraffic, rollout: api.PolicyRollout, table: dict) -> Iterator[None]:
    """Answer the router's config endpoint on the port local mode gave the rollout's router."""
    body = json.dumps({"table": table}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", router.port(rollout)), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    router._routers[router._key(rollout)] = _Router()  # type: ignore[assignment]
    try:
        yield
    finally:
        router._routers.clear()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
