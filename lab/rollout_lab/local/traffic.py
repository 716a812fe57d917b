"""`TrafficRouter` for local mode: the real `policy-server route` process, driven through its table file.

On Kubernetes the operator writes the routing table into a ConfigMap that the router watches;
here it writes the same JSON (`resources.routing.routing_table`) into the file the router
watches (`--config FILE --watch-config`), atomically. `get_weights` asks the router itself
(`GET /router/config`), so what the engine sees is what the data plane really applies.

Each variant's entry is the list of its replicas' URLs (the endpoints of its Service; the
router balances over them). A variant with one replica is written as its URL alone, which
routers with and without list support both read.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rollout_operator import api
from rollout_operator.engine.types import Weights
from rollout_operator.resources import routing
from rollout_operator.traffic.base import TrafficError

from rollout_lab.local import processes
from rollout_lab.local.workloads import LocalWorkloads

__all__ = ["LocalTraffic", "endpoints"]


def endpoints(urls: list[str]) -> str | list[str]:
    """A variant's entry in the routing table: its URL if it has one replica, else the list of URLs."""
    return urls[0] if len(urls) == 1 else list(urls)


def _as_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value.rstrip("/")]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.rstrip("/") for v in value]
    return None


class LocalTraffic:
    name = "router"

    def __init__(self, workdir: Path, workloads: LocalWorkloads, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.workloads = workloads
        self.env = dict(env or {})  # the run's POLICY_SERVER_REWARD_KEY: the router verifies reward ids with it
        self._ports: dict[str, int] = {}
        self._routers: dict[str, processes.LocalProcess] = {}

    def _key(self, rollout: api.PolicyRollout) -> str:
        return f"{rollout.metadata.namespace}/{rollout.metadata.name}"

    def port(self, rollout: api.PolicyRollout) -> int:
        return self._ports.setdefault(self._key(rollout), processes.free_port())

    def url(self, rollout: api.PolicyRollout) -> str:
        return f"http://127.0.0.1:{self.port(rollout)}"

    def table_path(self, rollout: api.PolicyRollout) -> Path:
        return self.workdir / "routing" / f"{rollout.metadata.name}.json"

    def _read_file(self, rollout: api.PolicyRollout) -> dict | None:
        try:
            return json.loads(self.table_path(rollout).read_text())
        except (OSError, ValueError):
            return None

    def _write(self, rollout: api.PolicyRollout, weights: Weights) -> None:
        old = self._read_file(rollout)
        generation = int((old or {}).get("generation") or 0)
        desired = routing.routing_table(rollout, weights, generation + 1, time.time(), self._endpoints)
        if routing.same_routing(old, desired):
            return
        path = self.table_path(rollout)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(desired, out)
        os.replace(tmp, path)

    def _endpoints(self, rollout: api.PolicyRollout, variant: Any) -> Any:
        return endpoints(self.workloads.urls(rollout, variant))

    def reconcile(self, rollout: api.PolicyRollout) -> None:
        if self._read_file(rollout) is None:
            self._write(rollout, Weights(candidate=0))
        key = self._key(rollout)
        router = self._routers.get(key)
        if router is not None and router.alive:
            return
        if router is not None:
            router.stop()
        argv = processes.policy_server_command(
            "route", "--port", str(self.port(rollout)), "--stable", self.workloads.url(rollout, "stable"),
            "--config", str(self.table_path(rollout)), "--watch-config", "--seed", "0",
        )
        self._routers[key] = processes.LocalProcess(f"{rollout.metadata.name}-router", argv, self.workdir / "logs",
                                                    env=self.env)

    def wait_ready(self, rollout: api.PolicyRollout, timeout: float = 60.0) -> None:
        self._routers[self._key(rollout)].wait_http(f"{self.url(rollout)}/healthz", timeout)

    def set_weights(self, rollout: api.PolicyRollout, weights: Weights) -> None:
        try:
            self._write(rollout, weights)
        except OSError as exc:
            raise TrafficError(f"cannot write the routing table {self.table_path(rollout)}: {exc}") from exc

    def get_weights(self, rollout: api.PolicyRollout) -> Weights | None:
        router = self._routers.get(self._key(rollout))
        if router is None:
            return None  # no router yet: nothing routes, as with a missing ConfigMap
        try:
            reply = httpx.get(f"{self.url(rollout)}/router/config", timeout=1.0)
            reply.raise_for_status()
            table = reply.json()["table"]
        except httpx.ConnectError as exc:
            if router.alive:
                return None  # still starting: it applies the table file once it listens
            raise TrafficError(f"the local router exited; see {router.log_path}: {router.tail(500)}") from exc
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise TrafficError(f"cannot read the local router's table at {self.url(rollout)}: {exc}") from exc
        # The router may echo a variant as a URL or a list of URLs: compare the endpoints, not the spelling.
        for variant in ("stable", "candidate"):
            if _as_list(table.get(variant)) == self.workloads.urls(rollout, variant):  # type: ignore[arg-type]
                table[variant] = self._endpoints(rollout, variant)
        return routing.weights_of({"data": {routing.CONFIGMAP_KEY: json.dumps(table)}}, rollout, self._endpoints)

    def finalize(self, rollout: api.PolicyRollout) -> None:
        router = self._routers.pop(self._key(rollout), None)
        if router is not None:
            router.stop()

    def close(self) -> None:
        for router in self._routers.values():
            router.stop()
        self._routers.clear()
