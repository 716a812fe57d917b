"""Follow one ConfigMap through the Kubernetes API and hand each routing table to the router.

Why a plain HTTP watch (httpx) and not kopf or the ``kubernetes`` package: the router pod must
stay small and start fast, and it needs exactly one call — ``GET .../configmaps?fieldSelector=
metadata.name=NAME&watch=true`` — which delivers a change within milliseconds of the operator's
write (a mounted ConfigMap volume takes up to a minute). The watch starts from the
resourceVersion of a first list, ends every ``timeoutSeconds`` and is re-opened; errors back off
(0.2 s doubling to 5 s) and re-list. While the API is unreachable the router keeps serving the
last table (and a restarted router reads it from its ``--config`` file).

With ``--endpointslices`` the router also follows the EndpointSlices of each variant's Service
(label ``kubernetes.io/service-name``) the same way and routes to their ready endpoints itself
(pool.py) instead of the Service's ClusterIP.

Credentials: the pod's service account (in-cluster), or a kubeconfig file (bearer token,
client certificate, CA, insecure-skip-tls-verify). RBAC needed: get/list/watch on that one
ConfigMap (``resourceNames``), see operator/rollout_operator/resources/routing.py, and with
``--endpointslices`` get/list/watch on ``discovery.k8s.io`` ``endpointslices``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from policy_server.errors import PolicyServerError
from policy_server.router import table as table_mod

__all__ = ["ApiConfig", "ConfigMapWatcher", "EndpointSliceWatcher", "KubeConfigError", "ready_endpoints", "service_of"]

log = logging.getLogger("policy_server.router.kubewatch")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(PolicyServerError, ValueError):
    """No usable Kubernetes credentials (the message says where we looked)."""


@dataclass
class ApiConfig:
    server: str
    token: str | None = None
    verify: ssl.SSLContext | bool = True

    @classmethod
    def in_cluster(cls) -> ApiConfig:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host or not (SA_DIR / "token").exists():
            raise KubeConfigError(
                "not running in a pod with a service account (KUBERNETES_SERVICE_HOST or "
                f"{SA_DIR}/token missing): pass --kubeconfig"
            )
        ctx = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
        return cls(f"https://{host}:{port}", (SA_DIR / "token").read_text().strip(), ctx)

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str]) -> ApiConfig:
        import yaml  # only for kubeconfig files

        try:
            doc = yaml.safe_load(Path(path).read_text())
            ctx_name = doc.get("current-context")
            ctx = (
                next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
                if ctx_name
                else doc["contexts"][0]["context"]
            )
            cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
            user = next((u.get("user") or {} for u in doc.get("users") or [] if u["name"] == ctx.get("user")), {})
        except (OSError, yaml.YAMLError, KeyError, IndexError, StopIteration, TypeError, AttributeError) as exc:
            raise KubeConfigError(f"cannot read kubeconfig {path}: {type(exc).__name__}: {exc}") from exc
        server = cluster["server"].rstrip("/")
        verify: ssl.SSLContext | bool = True
        if server.startswith("https://"):
            if cluster.get("insecure-skip-tls-verify"):
                verify = False
            else:
                sslctx = ssl.create_default_context()
                if cluster.get("certificate-authority-data"):
                    sslctx.load_verify_locations(
                        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
                    )
                elif cluster.get("certificate-authority"):
                    sslctx.load_verify_locations(cafile=cluster["certificate-authority"])
                cert, key = _pem(user, "client-certificate"), _pem(user, "client-key")
                if cert and key:
                    sslctx.load_cert_chain(cert, key)
                verify = sslctx
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = Path(user["tokenFile"]).read_text().strip()
        return cls(server, token, verify)


def _pem(user: dict[str, Any], field: str) -> str | None:
    """A file path for a PEM given inline (``*-data``) or by path (ssl needs files)."""
    if user.get(f"{field}-data"):
        fd, path = tempfile.mkstemp(suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(user[f"{field}-data"]))
        return path
    return user.get(field)


class _ListWatch:
    """List, then watch from the list's resourceVersion, forever; errors back off and re-list.

    Subclasses say what to list (``path``, ``params``) and what to do with the objects
    (``on_list`` with every item of a fresh list, ``on_event`` with each watch event).
    """

    what = "objects"
    optional = False  # True: a 403 stops this watch (logged once) instead of retrying forever

    def __init__(
        self, client: httpx.AsyncClient, path: str, params: dict[str, str], *, watch_timeout_s: int = 60
    ) -> None:
        self._client, self._path, self._params = client, path, params
        self.watch_timeout_s = watch_timeout_s
        self.resource_version = ""
        self.connected = asyncio.Event()  # set once the first list succeeded (tests wait on it)
        self.errors = 0

    def on_list(self, items: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """List, then watch, forever (cancel the task to stop)."""
        backoff = 0.2
        while True:
            try:
                if not self.resource_version:
                    await self._list()
                    self.connected.set()
                await self._watch()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network, 5xx, 410 Gone: back off, re-list
                self.errors += 1
                if self.optional and isinstance(exc, PermissionError):
                    log.error("%s; not watching it", exc)
                    return
                self.resource_version = ""
                log.warning("watch of %s failed (%s); retrying in %.1fs", self.what, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _list(self) -> None:
        resp = await self._client.get(self._path, params=self._params)
        _raise_for(resp, self.what)
        body = resp.json()
        self.on_list(body.get("items") or [])
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion") or "0"

    async def _watch(self) -> None:
        params = {
            **self._params,
            "watch": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(self.watch_timeout_s),
            "allowWatchBookmarks": "true",
        }
        async with self._client.stream("GET", self._path, params=params) as resp:
            _raise_for(resp, self.what)
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                event = orjson.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":  # e.g. 410 Gone: our resourceVersion is too old
                    raise RuntimeError(f"watch error: {obj.get('message') or obj}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self.on_event(kind, obj)


def _client(api: ApiConfig, watch_timeout_s: int) -> httpx.AsyncClient:
    headers = {"Accept": "application/json"}
    if api.token:
        headers["Authorization"] = f"Bearer {api.token}"
    return httpx.AsyncClient(
        base_url=api.server,
        headers=headers,
        verify=api.verify,
        timeout=httpx.Timeout(10.0, read=watch_timeout_s + 10.0),
    )


class ConfigMapWatcher(_ListWatch):
    """Calls ``on_table(table, resource_version)`` for every valid version of one ConfigMap."""

    def __init__(
        self,
        api: ApiConfig,
        namespace: str,
        name: str,
        on_table: Callable[[table_mod.RoutingTable, str], None],
        *,
        key: str = table_mod.CONFIGMAP_KEY,
        watch_timeout_s: int = 60,
    ) -> None:
        super().__init__(
            _client(api, watch_timeout_s),
            f"/api/v1/namespaces/{namespace}/configmaps",
            {"fieldSelector": f"metadata.name={name}"},
            watch_timeout_s=watch_timeout_s,
        )
        self.api, self.namespace, self.name, self.key = api, namespace, name, key
        self.what = f"configmap {namespace}/{name}"
        self.on_table = on_table

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await self._client.aclose()

    def on_list(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self._deliver(item)

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            log.warning("configmap %s/%s deleted: keeping the last routing table", self.namespace, self.name)
        else:
            self._deliver(obj)

    def _deliver(self, obj: dict[str, Any]) -> None:
        raw = (obj.get("data") or {}).get(self.key)
        rv = (obj.get("metadata") or {}).get("resourceVersion", "")
        if raw is None:
            log.error(
                "configmap %s/%s has no %r key: keeping the last routing table", self.namespace, self.name, self.key
            )
            return
        try:
            tbl = table_mod.RoutingTable.from_bytes(raw)
        except table_mod.TableError as exc:
            log.error("configmap %s/%s: %s; keeping the last routing table", self.namespace, self.name, exc)
            return
        self.on_table(tbl, rv)


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def service_of(url: str, default_namespace: str) -> tuple[str, str, int] | None:
    """(namespace, Service name, port) of a Service URL, or None when ``url`` names no Service.

    ``http://NAME.NAMESPACE.svc[.cluster.local][:PORT]`` and ``http://NAME[:PORT]`` (the router's
    own namespace) name Services; IP addresses and other host names do not and are used as they are.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    labels = host.split(".")
    if len(labels) == 1 and host and not host.isdigit() and host != "localhost":
        return default_namespace, host, parts.port or 80
    if len(labels) >= 3 and labels[2] == "svc" and labels[0] and labels[1]:
        return labels[1], labels[0], parts.port or 80
    return None


def ready_endpoints(slices: Iterable[dict[str, Any]], port_name: str) -> list[str]:
    """``http://ADDRESS:PORT`` of every ready endpoint of a Service's EndpointSlices, sorted.

    The port is the slice's port named ``port_name`` (or its only port). ``conditions.ready``
    unset counts as ready, as the API defines; a terminating endpoint is not ready.
    """
    out: set[str] = set()
    for sl in slices:
        ports = sl.get("ports") or []
        port = next((p.get("port") for p in ports if p.get("name") == port_name), None)
        if port is None and len(ports) == 1:
            port = ports[0].get("port")
        if not isinstance(port, int):
            continue
        v6 = sl.get("addressType") == "IPv6"
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False or not ep.get("addresses"):
                continue
            addr = ep["addresses"][0]
            out.add(f"http://[{addr}]:{port}" if v6 else f"http://{addr}:{port}")
    return sorted(out)


class _SliceWatch(_ListWatch):
    """The EndpointSlices of one Service; calls ``on_endpoints(url, ready endpoint URLs)`` on every change."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        namespace: str,
        service: str,
        port_name: str,
        on_endpoints: Callable[[str, list[str]], None],
        watch_timeout_s: int,
    ) -> None:
        super().__init__(
            client,
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            {"labelSelector": f"{SERVICE_NAME_LABEL}={service}"},
            watch_timeout_s=watch_timeout_s,
        )
        self.what = f"endpointslices of service {namespace}/{service}"
        self.optional = True  # without the RBAC the router keeps using the Service URL
        self.url, self.port_name, self.on_endpoints = url, port_name, on_endpoints
        self.slices: dict[str, dict[str, Any]] = {}

    def on_list(self, items: list[dict[str, Any]]) -> None:
        self.slices = {(i.get("metadata") or {}).get("name", ""): i for i in items}
        self._deliver()

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        if kind == "DELETED":
            self.slices.pop(name, None)
        else:
            self.slices[name] = obj
        self._deliver()

    def _deliver(self) -> None:
        self.on_endpoints(self.url, ready_endpoints(self.slices.values(), self.port_name))


class EndpointSliceWatcher:
    """Follows the EndpointSlices of every Service the routing table names (one watch per Service).

    ``follow(urls)`` is called with the table's URLs after each table change: new Services are
    watched, dropped ones forgotten (``on_endpoints(url, [])``: the router goes back to the URL).
    RBAC needed: get/list/watch on ``endpointslices`` (group ``discovery.k8s.io``) in the
    Services' namespaces.
    """

    def __init__(
        self,
        api: ApiConfig,
        namespace: str,
        on_endpoints: Callable[[str, list[str]], None],
        port_name: str = "http",
        *,
        watch_timeout_s: int = 60,
    ) -> None:
        self.namespace, self.on_endpoints, self.port_name = namespace, on_endpoints, port_name
        self.watch_timeout_s = watch_timeout_s
        self._client = _client(api, watch_timeout_s)
        self.watches: dict[str, _SliceWatch] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[asyncio.Task[None]] = set()

    def follow(self, urls: Iterable[str]) -> None:
        wanted = {u: svc for u in urls if (svc := service_of(u, self.namespace)) is not None}
        for url in [u for u in self._tasks if u not in wanted]:
            task = self._tasks.pop(url)
            task.cancel()
            self._cancelled.add(task)
            del self.watches[url]
            self.on_endpoints(url, [])
        for url, (ns, name, _port) in wanted.items():
            if url not in self._tasks:
                w = _SliceWatch(self._client, url, ns, name, self.port_name, self.on_endpoints, self.watch_timeout_s)
                self.watches[url] = w
                self._tasks[url] = asyncio.get_running_loop().create_task(w.run())

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._cancelled]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._cancelled.clear()
        await self._client.aclose()


def _raise_for(resp: httpx.Response, what: str) -> None:
    if resp.status_code == 403:
        raise PermissionError(f"forbidden: grant get/list/watch on the router's {what} (see docs/router.md)")
    if resp.status_code >= 400:
        raise RuntimeError(f"Kubernetes API answered {resp.status_code}")
