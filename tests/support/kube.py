"""A Kubernetes API for tests: the real `kmock` emulator over real HTTP, with its gaps filled.

kmock 0.8's `KubernetesEmulator` stores objects, serves discovery, list, watch, create, patch
and delete, and runs finalizers. It is not a full API server: the subclass below fills the
gaps that break kopf, the `kubernetes` client and kubectl (see ../shared/NOTES.md), one
override per gap, each with a comment. The server runs in its own thread with its own event
loop, so sync code (the `kubernetes` client) and kopf (in another thread) can both talk to it.

Fixtures (registered in tests/conftest.py):

- `kube_api` -> `KubeAPI`: `.url`, `.kubeconfig_path` (no auth, context namespace `default`),
  `.emulator` (the `FidelityEmulator`), `.calls` (list of `ApiCall(verb, group, version, resource,
  subresource, namespace)`, RBAC verbs), `.calls_to(plural)`, `.objects(kind_or_plural, ns=None)`,
  `.get(kind_or_plural, ns, name)`, `.put(kind_or_plural, obj)`, `.set_status(kind, ns, name, status)`.
- `fake_deployment_controller` -> `FakeDeploymentController` (`.unready`: names kept at 0 ready).

Helpers: `KopfThread(kube_api, registry, namespaces=[...], memo=...)` (a context manager running
kopf), `wait_for(predicate, timeout, what=...)`, `policy_rollout_manifest(name, namespace, ...)`.

Usage::

    def test_x(kube_api):
        client = kube.Client.from_kubeconfig(kube_api.kubeconfig_path)
        client.apply(policy_rollout_manifest("pricing"))
        assert kube_api.get("PolicyRollout", "default", "pricing")["metadata"]["generation"] == 1
        assert ApiCall("create", "policy.rollouts.io", "v1alpha1", "policyrollouts", None, "default") in kube_api.calls
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import datetime
import itertools
import json
import re
import secrets
import string
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import pytest
import yaml
from kmock._internal import k8s as kmock_k8s
from kmock._internal import parsing
from rollout_operator import api, kube

# --------------------------------------------------------------------------- path parsing

_original_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """Gap: kmock reads `/api/v1/namespaces[/NAME]` as a namespace prefix and crashes (500).

    On a real server those paths address the cluster-scoped `namespaces` resource
    (`kopf run --namespace` and `kubectl get ns` list it). Everything else parses as before.
    """
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 5:
        name = parts[3] if len(parts) > 3 else None
        sub = parts[4] if len(parts) > 4 else None
        if sub in (None, "status", "finalize"):
            return parsing.ParsedPath(group="", version="v1", plural="namespaces", name=name, subresource=sub)
    return _original_parse_path(path)


# kmock parses every request through this module-level function; there is no hook to override it
# per handler class, so it is replaced here (idempotently: the wrapper delegates to the original).
parsing.parse_path = _parse_path


# --------------------------------------------------------------------------- helpers


@dataclasses.dataclass(frozen=True)
class ApiCall:
    """One resource request as RBAC sees it: verb + group/version/resource[/subresource] + namespace."""

    verb: str
    group: str
    version: str
    resource: str
    subresource: str | None
    namespace: str | None
    # Who called (tests separate their own requests from the operator's); not part of equality.
    user_agent: str = dataclasses.field(default="", compare=False)
    user: str = dataclasses.field(default="", compare=False)  # the authenticated user (real API server only)
    status: int = dataclasses.field(default=0, compare=False)  # the response code (real API server only)
    name: str | None = dataclasses.field(default=None, compare=False)  # the object's name (real API server only)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes; lists replace)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _merge_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `old` into `new` (what kmock's own merge then applies)."""
    diff: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        diff[key] = None
    for key, value in new.items():
        if key not in old:
            diff[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = _merge_diff(old[key], value)
            if sub:
                diff[key] = sub
        elif value != old[key]:
            diff[key] = copy.deepcopy(value)
    return diff


_SELECTOR_TERM = re.compile(r"^\s*([^!=\s]+)\s*(==|=|!=)\s*(\S*)\s*$")
_SET_TERM = re.compile(r"^\s*([^!=\s]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    """Split on commas that are not inside `in (a,b)` parentheses."""
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t for t in terms if t.strip()]


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Evaluate a Kubernetes label selector string (`a=b,c!=d,e,!f,g in (x,y)`)."""
    for term in _split_selector(selector):
        term = term.strip()
        if m := _SET_TERM.match(term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (op == "in") != (labels.get(key) in values):
                return False
        elif m := _SELECTOR_TERM.match(term):
            key, op, value = m.groups()
            if (op == "!=") == (labels.get(key) == value):
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field_selector_matches(selector: str, obj: dict[str, Any]) -> bool:
    """Only `metadata.name` and `metadata.namespace`, the fields every resource supports."""
    meta = obj.get("metadata", {})
    fields = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}
    for term in _split_selector(selector):
        m = _SELECTOR_TERM.match(term)
        if not m or m.group(1) not in fields:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message=f"field selector {term!r} is not supported by the emulator"
            )
        if (m.group(2) == "!=") == (fields[m.group(1)] == m.group(3)):
            return False
    return True


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rewrite(request: kmock.Request, **changes: Any) -> kmock.Request:
    """Change a (frozen) request in place: kmock routes a request only if it is the very object it recorded."""
    for name, value in changes.items():
        object.__setattr__(request, name, value)
    return request


def _invalid(message: str, status: int = 422, reason: str = "Invalid") -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


# --------------------------------------------------------------------------- the emulator

_current_request: contextvars.ContextVar[kmock.Request | None] = contextvars.ContextVar("request", default=None)


@attrs.define(kw_only=True)
class FidelityEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the API-server behaviour that clients rely on."""

    calls: list[ApiCall] = attrs.field(factory=list, init=False)
    _resource_version: int = attrs.field(default=0, init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Gap: kmock serves /version but not /version/, which the `kubernetes` client's VersionApi
        # asks for (`policy-rollouts operator` checks the server with it before starting kopf).
        self.fallback["get /version/"] << self._serve_server_version

    def next_resource_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        for known in self.resources:
            if known == resource:
                return self.resources[known]  # type: ignore[return-value]
        return None

    def _has_status(self, resource: kmock.resource) -> bool:
        info = self._info(resource)
        return info is not None and "status" in info.subresources

    # ---- request recording (for RBAC checks) and the write path

    def _record(self, request: kmock.Request) -> None:
        res = request.resource
        if res is None or not res.plural or (request.action is None and request.method != kmock.method.PUT):
            return
        verb = {
            kmock.action.LIST: "list",
            kmock.action.WATCH: "watch",
            kmock.action.FETCH: "get",
            kmock.action.CREATE: "create",
            kmock.action.UPDATE: "patch",
            kmock.action.DELETE: "delete",
        }.get(request.action, "update")  # type: ignore[arg-type]
        self.calls.append(ApiCall(verb, res.group or "", res.version or "", res.plural, request.subresource,
                                  request.namespace, request.headers.get("User-Agent", "")))

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # Gap: kmock's 404/409 say "Object Not Found" and how to fix a kmock test; a real server
        # says `deployments.apps "web" not found` with reason NotFound / AlreadyExists.
        request = _current_request.get()
        if request is not None and request.resource is not None and isinstance(
            exc, kmock.KubernetesNotFoundError | kmock_k8s.KubernetesObjectConflictError
        ):
            res = request.resource
            body = request.data if isinstance(request.data, dict) else {}
            name = request.name or (body.get("metadata") or {}).get("name")
            qualified = f"{res.plural}.{res.group}" if res.group else str(res.plural)
            conflict = isinstance(exc, kmock_k8s.KubernetesObjectConflictError)
            status = 409 if conflict else 404
            reason = "AlreadyExists" if conflict else "NotFound"
            message = f'{qualified} "{name}" already exists' if conflict else f'{qualified} "{name}" not found'
            if isinstance(exc, kmock.KubernetesResourceNotFoundError):
                message = f"the server could not find the requested resource ({qualified})"
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": status,
                "reason": reason, "message": message,
                "details": {"name": name, "group": res.group, "kind": res.plural},
            }, status=status)
        return await super()._render_error(exc)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        _current_request.set(request)  # each request runs in its own task: the var is per request
        self._record(request)
        # Gap: kmock knows no PUT (replace); a real server replaces the whole object.
        is_put = request.method == kmock.method.PUT and request.name is not None
        mutating = request.action in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE) or is_put
        if request.resource is None or not mutating:
            return await super()._handle(request)
        # Writes are serialised: the stamping below reads the stored object, then kmock writes it.
        async with self._write_lock:
            if request.action == kmock.action.CREATE:
                request = self._prepare_create(request)
            elif request.action == kmock.action.DELETE:
                self._prepare_delete(request)
            else:
                prepared = self._prepare_update(request)
                if isinstance(prepared, dict):  # a no-op write: no new version, no watch event
                    return aiohttp.web.json_response(prepared)
                request = prepared
            return await super()._handle(request)

    def _prepare_create(self, request: kmock.Request) -> kmock.Request:
        if not isinstance(request.data, dict):
            raise _invalid("the request body must be a JSON object", 400, "BadRequest")
        data = copy.deepcopy(request.data)
        meta = data.setdefault("metadata", {})
        # Gap: kmock ignores generateName (kopf's Events collide with 409 after the first one).
        if not meta.get("name") and meta.get("generateName"):
            alphabet = string.ascii_lowercase + string.digits
            meta["name"] = meta["generateName"] + "".join(secrets.choice(alphabet) for _ in range(5))
        if not meta.get("name"):
            raise _invalid("metadata.name: Required value: name or generateName is required")
        if request.namespace:
            if meta.get("namespace", request.namespace) != request.namespace:
                raise _invalid("the namespace of the object does not match the namespace in the URL", 400,
                               "BadRequest")
            meta["namespace"] = request.namespace  # the server fills it from the URL
        # Gap: kmock stamps no uid/creationTimestamp/resourceVersion/generation; kopf's finalizer
        # patch tests resourceVersion and the engine compares generation with observedGeneration.
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = self.next_resource_version()
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        # A resource with a status subresource ignores status on create, as a real server does.
        if request.resource is not None and self._has_status(request.resource):
            data.pop("status", None)
        return _rewrite(request, data=data)

    def _stored(self, request: kmock.Request) -> Any:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects:
            return None
        obj = self.objects[key]  # type: ignore[index]
        return None if obj.deleted else obj

    def _prepare_delete(self, request: kmock.Request) -> None:
        obj = self._stored(request)
        # kmock marks objects with finalizers by setting deletionTimestamp; that is a new version.
        if obj is not None and obj.get("metadata", {}).get("finalizers") and not obj["metadata"].get(
            "deletionTimestamp"
        ):
            meta = dict(obj.last.raw["metadata"])
            meta["resourceVersion"] = self.next_resource_version()
            obj["metadata"] = meta

    def _prepare_update(self, request: kmock.Request) -> kmock.Request | dict[str, Any]:
        obj = self._stored(request)
        if obj is None:
            return request  # kmock answers 404 itself
        old: dict[str, Any] = copy.deepcopy(obj.raw)
        old_meta = old.get("metadata", {})
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        data = request.data
        if request.method == kmock.method.PUT:
            if not isinstance(data, dict):
                raise _invalid("the request body must be a JSON object", 400, "BadRequest")
            self._check_version(data, old_meta)
            new = copy.deepcopy(data)
        elif content_type == "application/json-patch+json":
            # Gap: kmock answers a failed JSON-patch `test` (or a bad path) with 500; a real
            # server answers 422, which kopf and clients treat as "someone else changed it".
            try:
                new = jsonpatch.apply_patch(old, data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise _invalid(f"the JSON patch could not be applied: {e}") from e
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            # Strategic merge is treated as a merge patch: lists are replaced, not merged by key.
            if not isinstance(data, dict):
                raise _invalid("a merge patch must be a JSON object", 400, "BadRequest")
            self._check_version(data, old_meta)
            new = _merge_patch(old, data)
        else:
            raise _invalid(f"patch content type {content_type!r} is not supported by the emulator (use a JSON "
                           "merge patch or a JSON patch)", 415, "UnsupportedMediaType")
        if not isinstance(new, dict):
            raise _invalid("the patched object is not a JSON object")

        # A status subresource splits the object: /status writes only status, the main path never does.
        if request.resource is not None and self._has_status(request.resource):
            if request.subresource == "status":
                new = {**old, "status": new["status"]} if "status" in new else {k: v for k, v in old.items()
                                                                                    if k != "status"}
            else:
                new = {k: v for k, v in new.items() if k != "status"}
                if "status" in old:
                    new["status"] = old["status"]

        new = copy.deepcopy(new)  # the branches above may share sub-dicts with `old`
        meta = new.setdefault("metadata", {})
        for immutable in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion", "generation",
                          "deletionTimestamp"):
            if immutable in old_meta:
                meta[immutable] = old_meta[immutable]
            else:
                meta.pop(immutable, None)
        if new == old:
            return old
        meta["resourceVersion"] = self.next_resource_version()
        # generation counts changes of anything but metadata and status (as for CRDs and Deployments).
        def body(o: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}
        if body(new) != body(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return _rewrite(request, data=_merge_diff(old, new), action=kmock.action.UPDATE)

    @staticmethod
    def _check_version(data: dict[str, Any], old_meta: dict[str, Any]) -> None:
        wanted = (data.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != old_meta.get("resourceVersion"):
            raise _invalid(
                f"the object has been modified (resourceVersion {wanted} != {old_meta.get('resourceVersion')});"
                " read it again and retry", 409, "Conflict")

    # ---- reading

    async def _serve_version(self, request: kmock.Request) -> Any:
        result = await super()._serve_version(request)
        # Gap: /api/v1 reports groupVersion "/v1", so kubectl and discovery clients see no core resources.
        result["groupVersion"] = result["groupVersion"].lstrip("/")
        return result

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        result["items"] = [obj for obj in result["items"] if self._selected(request, obj)]
        # Gap: lists carry no kind/apiVersion (kubectl fails) and a fake resourceVersion.
        info = self._info(request.resource) if request.resource else None
        res = request.resource
        result["apiVersion"] = f"{res.group}/{res.version}".lstrip("/") if res else "v1"
        result["kind"] = f"{info.kind}List" if info and info.kind else "List"
        result["metadata"] = {"resourceVersion": str(self._resource_version)}
        return result

    def _selected(self, request: kmock.Request, obj: dict[str, Any]) -> bool:
        # Gap: kmock ignores labelSelector/fieldSelector and returns every object.
        labels = obj.get("metadata", {}).get("labels") or {}
        if (sel := request.params.get("labelSelector")) and not label_selector_matches(sel, labels):
            return False
        return not ((sel := request.params.get("fieldSelector")) and not _field_selector_matches(sel, obj))

    def _serve_watch(self, request: kmock.Request) -> Any:  # type: ignore[override]
        # Gaps: (1) watch streams go out as application/octet-stream (kubectl -w refuses them);
        # (2) kmock snapshots the objects, then subscribes to its event bus after sending them, so
        # a write in between is lost (kopf then waits forever on a stale object); (3) no
        # `resourceVersion` (events after a list) and no selectors. Here the bus is marked under
        # the writers' lock together with the snapshot, so nothing falls in between.
        resource = request.resource
        assert resource is not None

        def wanted(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return (
                (request.namespace is None or meta.get("namespace") == request.namespace)
                and (request.name is None or meta.get("name") == request.name)
                and self._selected(request, obj)
            )

        async def events() -> AsyncIterator[Any]:
            yield b""  # send the headers now: clients wait for them before the first event
            bus = self._buses[resource]
            since = int(request.params.get("resourceVersion") or 0)
            async with self._lock:
                mark = await bus.mark()
                snapshot = [copy.deepcopy(o.raw) for (r, _, _), o in self.objects.items() if r == resource
                            and not o.deleted]
            try:
                for obj in snapshot:
                    if wanted(obj) and int(obj.get("metadata", {}).get("resourceVersion") or 0) > since:
                        yield {"type": "MODIFIED" if since else "ADDED", "object": obj}
                # `timeoutSeconds` ends the stream as a real server does (clients then re-list/re-watch).
                timeout = float(request.params["timeoutSeconds"]) if request.params.get("timeoutSeconds") else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        async for event in bus.stream(since=mark):
                            if wanted(event.get("object", {})):
                                yield event
            finally:
                await bus.unmark(mark)

        return kmock.Response(headers={"Content-Type": "application/json"}, payload=events())

    # ---- direct access for tests and fake controllers (call in the server's loop)

    async def write_status(self, key: tuple[Any, str | None, str], status: dict[str, Any]) -> bool:
        """Merge `status` into a stored object as a controller would; True if it changed."""
        async with self._write_lock:
            if key not in self.objects or self.objects[key].deleted:  # type: ignore[index]
                return False
            obj = self.objects[key]  # type: ignore[index]
            old = copy.deepcopy(obj.raw)
            new = copy.deepcopy(_merge_patch(old, {"status": status}))  # unshare metadata with `old`
            if new == old:
                return False
            new["metadata"]["resourceVersion"] = self.next_resource_version()
            async with self._lock:
                obj.patch(_merge_diff(old, new))
                await self._buses[key[0]].put({"type": "MODIFIED", "object": obj.raw})
            return True


# --------------------------------------------------------------------------- resources

POLICYROLLOUTS = f"{api.GROUP}/{api.VERSION}/{api.PLURAL}"
HTTPROUTES = "gateway.networking.k8s.io/v1/httproutes"
VIRTUALSERVICES = "networking.istio.io/v1/virtualservices"
_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def register_resources(emulator: kmock.KubernetesEmulator) -> None:
    """Builtins plus the custom resources the operator reads or writes."""
    with warnings.catch_warnings():  # kmock 0.8 uses the deprecated importlib.resources.read_binary
        warnings.simplefilter("ignore", DeprecationWarning)
        emulator.resources.load_bundled()
    emulator.resources[POLICYROLLOUTS] = kmock.ResourceInfo(
        kind=api.KIND, singular=api.SINGULAR, shortnames=set(api.SHORT_NAMES), namespaced=True, verbs=_VERBS,
        subresources={"status"},
    )
    emulator.resources[HTTPROUTES] = kmock.ResourceInfo(
        kind="HTTPRoute", singular="httproute", namespaced=True, verbs=_VERBS, subresources={"status"},
        categories={"gateway-api"},
    )
    emulator.resources[VIRTUALSERVICES] = kmock.ResourceInfo(
        kind="VirtualService", singular="virtualservice", shortnames={"vs"}, namespaced=True, verbs=_VERBS,
        subresources={"status"}, categories={"istio-io", "networking-istio-io"},
    )


# --------------------------------------------------------------------------- the server thread


class KubeAPI:
    """A running emulator: `.url`, `.kubeconfig_path`, `.emulator`, `.calls`, `objects()`, `get()`.

    The emulator lives in its own thread and event loop; `objects()`/`get()` take consistent
    snapshots there. Use `.emulator` directly only for reads that tolerate a concurrent write.
    """

    def __init__(self, kubeconfig_dir: Path) -> None:
        self._kubeconfig_dir = kubeconfig_dir
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self.emulator: FidelityEmulator
        self.url = ""
        self.kubeconfig_path = kubeconfig_dir / "kubeconfig.yaml"

    # ---- lifecycle

    def start(self, timeout: float = 15.0) -> KubeAPI:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the Kubernetes emulator did not start within {timeout}s")
        if self._error is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from self._error
        self._write_kubeconfig()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to start() rather than lost in the thread
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.emulator = FidelityEmulator()
        register_resources(self.emulator)
        # A fresh cluster has a `default` namespace.
        self.emulator.objects["v1/namespaces", None, "default"] = {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "uid": str(uuid.uuid4()), "creationTimestamp": _now(),
                         "resourceVersion": self.emulator.next_resource_version()},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        }
        async with self.emulator, kmock.Server(self.emulator, host="127.0.0.1") as server:
            self.url = f"http://127.0.0.1:{server.port}"
            self._ready.set()
            await self._stop.wait()

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                          "namespace": "default"}}],
        }
        self.kubeconfig_path.write_text(yaml.safe_dump(config))

    # ---- thread-safe access

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine in the emulator's loop and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def resource(self, what: str) -> kmock.resource:
        """Resolve `Deployment`, `deployments`, `apps/v1/deployments` or `v1/pods` to a resource."""
        candidates = []
        for res in self.emulator.resources:
            info = self.emulator.resources[res]
            full = f"{res.group}/{res.version}/{res.plural}".lstrip("/")
            if what in (res.plural, full, info.kind) or (info.kind or "").lower() == what.lower():
                candidates.append(res)
        if not candidates:
            raise KeyError(f"unknown resource {what!r}: register it in tests/support/kube.py register_resources()")
        # Prefer the group the operator uses (apps/v1 deployments over extensions, etc.): the first
        # GA version wins, which is what a bare `kubectl get <kind>` picks.
        candidates.sort(key=lambda r: (r.version != "v1", r.group not in ("", "apps"), r.group))
        return candidates[0]

    def objects(self, what: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Deep copies of the live objects of a kind/plural, in one namespace or all."""
        res = self.resource(what)

        async def snapshot() -> list[dict[str, Any]]:
            async with self.emulator._lock:
                return [
                    copy.deepcopy(obj.raw)
                    for (r, ns, _), obj in self.emulator.objects.items()
                    if r == res and not obj.deleted and (namespace is None or ns == namespace)
                ]

        return self.run(snapshot())

    def get(self, what: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        for obj in self.objects(what, namespace):
            if obj.get("metadata", {}).get("name") == name:
                return obj
        return None

    def put(self, what: str, obj: dict[str, Any]) -> None:
        """Store an object as if some other client had created it (stamped like a create)."""
        res = self.resource(what)
        meta = obj.setdefault("metadata", {})

        async def store() -> None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = self.emulator.next_resource_version()
            async with self.emulator._lock:
                self.emulator.objects[res, meta.get("namespace"), meta["name"]] = copy.deepcopy(obj)
                raw = self.emulator.objects[res, meta.get("namespace"), meta["name"]].raw
                await self.emulator._buses[res].put({"type": "ADDED", "object": raw})

        self.run(store())

    def set_status(self, what: str, namespace: str | None, name: str, status: dict[str, Any]) -> bool:
        """Merge a status into a stored object as a controller would (bumps resourceVersion, emits MODIFIED)."""
        return self.run(self.emulator.write_status((self.resource(what), namespace, name), status))

    @property
    def calls(self) -> list[ApiCall]:
        """Every resource request so far, in order (discovery excluded)."""
        return list(self.emulator.calls)

    def calls_to(self, resource: str) -> list[ApiCall]:
        return [c for c in self.calls if c.resource == resource]


class FakeDeploymentController:
    """Marks Deployments ready, because the emulator runs no controllers (no ReplicaSets, no Pods).

    Every `interval` it sets `status.observedGeneration`, `replicas`, `readyReplicas`,
    `availableReplicas` and `updatedReplicas` = `spec.replicas`, except for Deployments named in
    `.unready` (to test waiting for readiness).
    """

    def __init__(self, kube_api: KubeAPI, interval: float = 0.1) -> None:
        self.kube_api = kube_api
        self.interval = interval
        self.unready: set[str] = set()
        self._task: asyncio.Future[None] | None = None

    def _desired(self, dep: dict[str, Any]) -> dict[str, Any]:
        replicas = int(dep.get("spec", {}).get("replicas", 1))
        ready = 0 if dep["metadata"]["name"] in self.unready else replicas
        return {
            "observedGeneration": dep["metadata"].get("generation", 1),
            "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": ready, "availableReplicas": ready,
        }

    async def _loop(self) -> None:
        emulator = self.kube_api.emulator
        res = self.kube_api.resource("apps/v1/deployments")
        while True:
            async with emulator._lock:
                deps = [(k, copy.deepcopy(o.raw)) for k, o in emulator.objects.items() if k[0] == res and not o.deleted]
            for key, dep in deps:
                await emulator.write_status(key, self._desired(dep))
            await asyncio.sleep(self.interval)

    def start(self) -> FakeDeploymentController:
        assert self.kube_api._loop is not None

        async def spawn() -> asyncio.Future[None]:
            return asyncio.ensure_future(self._loop())

        self._task = self.kube_api.run(spawn())
        return self

    def stop(self) -> None:
        if self._task is not None and self.kube_api._loop is not None and not self.kube_api._loop.is_closed():
            self.kube_api._loop.call_soon_threadsafe(self._task.cancel)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture()
def kube_api(tmp_path: Path) -> Iterator[KubeAPI]:
    """A fresh emulated Kubernetes API on a loopback port, stopped after the test."""
    server = KubeAPI(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def client(kube_api: KubeAPI) -> Iterator[kube.Client]:
    """The operator's own client (`rollout_operator.kube.Client`) pointed at the emulator."""
    c = kube.Client.from_kubeconfig(kube_api.kubeconfig_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture()
def fake_deployment_controller(kube_api: KubeAPI) -> Iterator[FakeDeploymentController]:
    controller = FakeDeploymentController(kube_api).start()
    try:
        yield controller
    finally:
        controller.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll until `predicate()` is truthy; return its value or fail with what was awaited."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def dump(obj: Any) -> str:
    """Pretty JSON for assertion messages."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def policy_rollout_manifest(
    name: str = "pricing",
    namespace: str = "default",
    provider: str = "gatewayAPI",
    **spec_overrides: Any,
) -> dict[str, Any]:
    """A small valid PolicyRollout manifest (wire form), for tests that create one in the emulator."""
    spec: dict[str, Any] = {
        "policy": {"image": "ghcr.io/acme/policy-server:0.1.0", "artifact": "s3://policies/v2.pt2",
                   "version": "v2", "replicas": 2, "port": 8080, "env": [{"name": "LOG_LEVEL", "value": "info"}]},
        "fallback": {"image": "ghcr.io/acme/policy-server:0.1.0", "artifact": "s3://policies/v1.pt2",
                     "version": "v1", "replicas": 2},
        "traffic": {"provider": provider, "gatewayAPI": {
            "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}],
            "hostnames": ["pricing.example.com"]}},
        "steps": [{"shadow": {"duration": "1m"}}, {"setWeight": 30}, {"setWeight": 100}],
    }
    spec.update(spec_overrides)
    # Without guardrails a rollout must opt out of analysis explicitly (api.NO_ANALYSED_LIVE_STEP).
    spec.setdefault("allowPromotionWithoutAnalysis", not (spec.get("analysis") or {}).get("guardrails"))
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


_LOGIN_PRIORITY = itertools.count()


class KopfThread:
    """Run a kopf operator against a `KubeAPI` in its own thread (kopf must own its event loop).

    Usage::

        registry = kopf.OperatorRegistry()

        @kopf.on.create(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
        def created(patch, **_): patch.status["phase"] = "Seen"

        with KopfThread(kube_api, registry, namespaces=["default"]):
            ...  # create objects, wait_for(...) their status

    A login handler pointing at the emulator is added to `registry` with the highest priority,
    so handlers registered in kopf's global registry (which also holds kopf's default logins)
    talk to the emulator too. `memo` is passed to every handler as `memo`.
    """

    def __init__(
        self,
        kube_api: KubeAPI,
        registry: Any = None,
        namespaces: list[str] | None = None,
        memo: Any = None,
        settings: Any = None,
        startup_timeout: float = 20.0,
    ) -> None:
        import kopf

        self.kube_api = kube_api
        self.registry = registry if registry is not None else kopf.get_default_registry()
        self.namespaces = namespaces
        self.memo = memo
        self.settings = settings
        self.startup_timeout = startup_timeout
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)

        url = kube_api.url
        # Login handlers stay in a reused registry (kopf's global one) after their test ends; the
        # newest one must win over those pointing at stopped emulators, hence a rising priority.
        priority = 1_000_000 + next(_LOGIN_PRIORITY)

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, default_namespace="default", priority=priority)

        kopf.on.login(registry=self.registry, id=f"kube-emulator-{kube_api.kubeconfig_path}")(login)

    def _run(self) -> None:
        import kopf

        try:
            asyncio.run(kopf.operator(
                registry=self.registry,
                settings=self.settings,
                standalone=True,
                clusterwide=self.namespaces is None,
                namespaces=self.namespaces or (),
                memo=self.memo,
                stop_flag=self._stop,
                ready_flag=self._ready,
            ))
        except BaseException as e:  # surfaced by __enter__/__exit__
            self.error = e
            self._ready.set()

    def __enter__(self) -> KopfThread:
        self._thread.start()
        if not self._ready.wait(self.startup_timeout):
            self._stop.set()
            raise RuntimeError(f"kopf did not become ready within {self.startup_timeout}s")
        if self.error is not None:
            raise RuntimeError("kopf failed to start") from self.error
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._thread.is_alive():
            raise RuntimeError("kopf did not stop within 30s")
