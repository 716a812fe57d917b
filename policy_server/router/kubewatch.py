"""Follow one ConfigMap through the Kubernetes API and hand each routing table to the router.

Why a plain HTTP watch (httpx) and not kopf or the ``kubernetes`` package: the router pod must
stay small and start fast, and it needs exactly one call — ``GET .../configmaps?fieldSelector=
metadata.name=NAME&watch=true`` — which delivers a change within milliseconds of the operator's
write (a mounted ConfigMap volume takes up to a minute). The watch starts from the
resourceVersion of a first list, ends every ``timeoutSeconds`` and is re-opened; errors back off
(0.2 s doubling to 5 s) and re-list. While the API is unreachable the router keeps serving the
last table (and a restarted router reads it from its ``--config`` file).

Credentials: the pod's service account (in-cluster), or a kubeconfig file (bearer token,
client certificate, CA, insecure-skip-tls-verify). RBAC needed: get/list/watch on that one
ConfigMap (``resourceNames``), see operator/rollout_operator/resources/routing.py.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from policy_server.errors import PolicyServerError
from policy_server.router import table as table_mod

__all__ = ["ApiConfig", "ConfigMapWatcher", "KubeConfigError"]

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


class ConfigMapWatcher:
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
        self.api, self.namespace, self.name, self.key = api, namespace, name, key
        self.on_table = on_table
        self.watch_timeout_s = watch_timeout_s
        self.resource_version = ""
        self.connected = asyncio.Event()  # set once the first list succeeded (tests wait on it)
        self.errors = 0
        headers = {"Accept": "application/json"}
        if api.token:
            headers["Authorization"] = f"Bearer {api.token}"
        self._client = httpx.AsyncClient(
            base_url=api.server,
            headers=headers,
            verify=api.verify,
            timeout=httpx.Timeout(10.0, read=watch_timeout_s + 10.0),
        )
        self._path = f"/api/v1/namespaces/{namespace}/configmaps"
        self._selector = f"metadata.name={name}"

    async def run(self) -> None:
        """List, then watch, forever (cancel the task to stop)."""
        backoff = 0.2
        try:
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
                    self.resource_version = ""
                    log.warning(
                        "watch of configmap %s/%s failed (%s); retrying in %.1fs",
                        self.namespace,
                        self.name,
                        exc,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            await self._client.aclose()

    async def _list(self) -> None:
        resp = await self._client.get(self._path, params={"fieldSelector": self._selector})
        _raise_for(resp, self.namespace)
        body = resp.json()
        for item in body.get("items") or []:
            self._deliver(item)
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion") or "0"

    async def _watch(self) -> None:
        params = {
            "fieldSelector": self._selector,
            "watch": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(self.watch_timeout_s),
            "allowWatchBookmarks": "true",
        }
        async with self._client.stream("GET", self._path, params=params) as resp:
            _raise_for(resp, self.namespace)
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
                if kind in ("ADDED", "MODIFIED"):
                    self._deliver(obj)
                elif kind == "DELETED":
                    log.warning("configmap %s/%s deleted: keeping the last routing table", self.namespace, self.name)

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


def _raise_for(resp: httpx.Response, namespace: str) -> None:
    if resp.status_code == 403:
        raise PermissionError(f"forbidden: grant get/list/watch on configmaps in {namespace} (see docs/router.md)")
    if resp.status_code >= 400:
        raise RuntimeError(f"Kubernetes API answered {resp.status_code}")
