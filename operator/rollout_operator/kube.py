"""A thin, sync Kubernetes client for the operator's plug-ins: apply, get, list, delete, status, events.

Everything is plain dicts in, plain dicts out, for any apiVersion/kind the server serves
(discovered through `kubernetes.dynamic`), so builders stay pure and plug-ins stay small.
The client is always built from an explicit kubeconfig path or the in-cluster config: the
`kubernetes` package reads `$KUBECONFIG` only once, at import, which surprises tests and CLIs.

Errors::

    KubeError                 any failed call (status, reason, message)
    ├── NotFound              404: the object does not exist
    │   └── UnknownKind       the server does not serve this apiVersion/kind (CRD not installed?)
    ├── Conflict              409: already exists, or modified since it was read
    ├── Forbidden             403: RBAC does not allow the call
    └── Invalid               422 / 400: the server rejected the object's content
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import ssl
import tempfile
import threading
import uuid
import warnings
import weakref
from typing import Any

import kubernetes
import urllib3
import yaml
from kubernetes.dynamic import exceptions as dyn_errors

from rollout_operator.errors import RolloutOperatorError

__all__ = ["Client", "Conflict", "Forbidden", "Invalid", "KubeError", "NotFound", "UnknownKind"]

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"


class KubeError(RolloutOperatorError):
    """A Kubernetes API call failed; `status` is the HTTP status (0 if the server was not reached)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotFound(KubeError):
    pass


class UnknownKind(NotFound):
    pass


class Conflict(KubeError):
    pass


class Forbidden(KubeError):
    pass


class Invalid(KubeError):
    pass


_BY_STATUS: dict[int, type[KubeError]] = {400: Invalid, 403: Forbidden, 404: NotFound, 409: Conflict, 422: Invalid}


def _describe(kind: str, name: str | None, namespace: str | None) -> str:
    where = f" in namespace {namespace!r}" if namespace else ""
    return f"{kind} {name!r}{where}" if name else f"{kind}{where}"


def _wrap(error: Exception, action: str, what: str) -> KubeError:
    """Turn a client exception into our hierarchy with a message that says what to do."""
    if isinstance(error, KubeError):
        return error
    if isinstance(error, dyn_errors.ResourceNotFoundError):
        return UnknownKind(
            f"cannot {action} {what}: the API server does not serve this kind ({error}); "
            "install its CustomResourceDefinition or fix apiVersion/kind",
            status=404, reason="UnknownKind",
        )
    if isinstance(error, kubernetes.client.ApiException):
        status = int(error.status or 0)
        detail = ""
        body = getattr(error, "body", None)
        if body:
            try:
                parsed = json.loads(body)
                detail = parsed.get("message", "") if isinstance(parsed, dict) else ""
            except ValueError:
                detail = str(body)[:300]
        detail = detail or str(error.reason or "")
        hint = {
            403: " (grant the operator's ServiceAccount this verb in its Role)",
            409: " (it exists already or changed since it was read: read it again and retry)",
            422: " (fix the object's fields named above)",
        }.get(status, "")
        cls = _BY_STATUS.get(status, KubeError)
        return cls(f"cannot {action} {what}: HTTP {status} {detail}{hint}", status=status,
                   reason=str(error.reason or ""))
    if isinstance(error, urllib3.exceptions.HTTPError | OSError):
        return KubeError(
            f"cannot {action} {what}: the Kubernetes API is unreachable ({error}); check the kubeconfig's "
            "server address or the in-cluster network", status=0, reason="Unreachable",
        )
    return KubeError(f"cannot {action} {what}: {error}")


def _cause(error: BaseException, timeout: float) -> str:
    """The root of a connection failure in a few words ("connection refused"), not urllib3's repr chain."""
    chain: list[BaseException] = []
    pending: list[object] = [error]
    while pending:
        current = pending.pop(0)
        if not isinstance(current, BaseException) or any(current is seen for seen in chain):
            continue
        chain.append(current)
        pending += [getattr(current, "reason", None), current.__cause__, current.__context__]
    for e in chain:
        if isinstance(e, urllib3.exceptions.SSLError | ssl.SSLError):
            return f"TLS failed ({' '.join(str(e).split())[:200]}; check the server's scheme and certificate-authority)"
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror[:1].lower() + e.strerror[1:]
    if any(isinstance(e, TimeoutError | urllib3.exceptions.TimeoutError) for e in chain):
        return f"no answer within {timeout:g} s"
    return " ".join(str(error).split())[:200]


def _covers(current: Any, desired: Any) -> bool:
    """Whether `current` already holds everything `desired` sets.

    Fields the server adds (defaults like a container's terminationMessagePath, status, metadata
    it manages) do not count as differences, so a reconcile of an unchanged object writes nothing.
    Lists must match element by element, in order, with the same length.
    """
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(
            (value is None and key not in current) or (key in current and _covers(current[key], value))
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (isinstance(current, list) and len(current) == len(desired)
                and all(_covers(c, d) for c, d in zip(current, desired, strict=True)))
    return bool(current == desired)


class Client:
    """Create-or-patch and friends over `kubernetes.dynamic.DynamicClient`.

    **Usage**::

        kube = Client.from_kubeconfig("/path/kubeconfig")   # or Client.in_cluster()
        stored = kube.apply(deployment_dict)
        kube.patch_status("policy.rollouts.io/v1alpha1", "PolicyRollout", "r", "ns", {"phase": "Shadow"})
    """

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client
        # A private discovery cache: the default one is shared through /tmp by every process
        # talking to the same host:port, and goes stale when a test server reuses a port.
        fd, self._cache_file = tempfile.mkstemp(prefix="policy-rollouts-discovery-", suffix=".json")
        os.close(fd)
        os.unlink(self._cache_file)
        weakref.finalize(self, _remove, self._cache_file)
        self._dynamic: kubernetes.dynamic.DynamicClient | None = None
        self._dynamic_lock = threading.Lock()  # kopf runs sync handlers in several threads

    # ---- construction

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str], context: str | None = None) -> Client:
        """Build from an explicit kubeconfig file (never from `$KUBECONFIG` read at import)."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_kube_config(config_file=os.fspath(path), context=context,
                                               client_configuration=configuration)
        except (kubernetes.config.ConfigException, OSError, yaml.YAMLError) as e:
            raise KubeError(f"cannot load kubeconfig {os.fspath(path)!r}: {e}; pass --kubeconfig with a valid "
                            "file") from e
        return cls(kubernetes.client.ApiClient(configuration))

    @classmethod
    def in_cluster(cls) -> Client:
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException as e:
            raise KubeError(f"not running in a cluster ({e}); pass --kubeconfig to run outside one") from e
        return cls(kubernetes.client.ApiClient(configuration))

    @classmethod
    def from_config(cls, kubeconfig: str | os.PathLike[str] | None = None) -> Client:
        """The kubeconfig if given, else the in-cluster service account."""
        return cls.from_kubeconfig(kubeconfig) if kubeconfig else cls.in_cluster()

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    def server_version(self, timeout: float = 5.0) -> str:
        """The API server's version from one `GET /version`, not retried: "is the server there?".

        Raises `KubeError` with reason "Unreachable" (status 0) when nothing answers within
        `timeout` seconds, its message naming the server and the cause in a few words
        ("connection refused"), or the HTTP error when the server answers with one (401: it
        refused the kubeconfig's credentials).
        """
        configuration = copy.deepcopy(self.api_client.configuration)
        configuration.retries = False  # one attempt: the caller decides whether to wait and retry
        with kubernetes.client.ApiClient(configuration) as probe, warnings.catch_warnings():
            # insecure-skip-tls-verify is the kubeconfig's choice; kopf warns about it soon enough
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            try:
                info = kubernetes.client.VersionApi(probe).get_code(_request_timeout=(timeout, timeout))
            except kubernetes.client.ApiException as e:
                if e.status:
                    raise _wrap(e, "read the version of the Kubernetes API server at", self.host) from e
                raise KubeError(f"cannot reach the Kubernetes API server at {self.host}: {_cause(e, timeout)}",
                                status=0, reason="Unreachable") from e  # status 0: the client's wrapped TLS error
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise KubeError(f"cannot reach the Kubernetes API server at {self.host}: {_cause(e, timeout)}",
                                status=0, reason="Unreachable") from e
        return str(info.git_version)

    @property
    def dynamic(self) -> kubernetes.dynamic.DynamicClient:
        with self._dynamic_lock:
            if self._dynamic is None:
                try:
                    self._dynamic = kubernetes.dynamic.DynamicClient(self.api_client, cache_file=self._cache_file)
                except Exception as e:
                    raise _wrap(e, "discover the API of", self.host) from e
            return self._dynamic

    def close(self) -> None:
        self.api_client.close()
        _remove(self._cache_file)

    def _resource(self, api_version: str, kind: str) -> Any:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except Exception as e:
            raise _wrap(e, "find", f"{kind} ({api_version})") from e

    # ---- calls

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> JSON:
        """The stored object; raises NotFound if there is none."""
        resource = self._resource(api_version, kind)
        try:
            return resource.get(name=name, namespace=namespace).to_dict()  # type: ignore[no-any-return]
        except Exception as e:
            raise _wrap(e, "get", _describe(kind, name, namespace)) from e

    def find(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> JSON | None:
        """The stored object, or None if there is none."""
        try:
            return self.get(api_version, kind, name, namespace)
        except UnknownKind:
            raise
        except NotFound:
            return None

    def list(
        self, api_version: str, kind: str, namespace: str | None = None, selector: str | dict[str, str] | None = None
    ) -> list[JSON]:
        """Objects of a kind (in one namespace, or all), optionally filtered by a label selector."""
        if isinstance(selector, dict):
            selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        resource = self._resource(api_version, kind)
        try:
            result = resource.get(namespace=namespace, label_selector=selector or None).to_dict()
        except Exception as e:
            raise _wrap(e, "list", _describe(kind, None, namespace)) from e
        return list(result.get("items") or [])

    def create(self, obj: JSON) -> JSON:
        api_version, kind, name, namespace = _identity(obj, generated_name_ok=True)
        resource = self._resource(api_version, kind)
        try:
            return resource.create(body=obj, namespace=namespace).to_dict()  # type: ignore[no-any-return]
        except Exception as e:
            raise _wrap(e, "create", _describe(kind, name, namespace)) from e

    def patch(self, api_version: str, kind: str, name: str, namespace: str | None, patch: JSON) -> JSON:
        """A JSON merge patch (RFC 7386): dicts merge, lists replace, null deletes."""
        resource = self._resource(api_version, kind)
        try:
            return resource.patch(  # type: ignore[no-any-return]
                body=patch, name=name, namespace=namespace, content_type=MERGE_PATCH
            ).to_dict()
        except Exception as e:
            raise _wrap(e, "patch", _describe(kind, name, namespace)) from e

    def apply(self, obj: JSON) -> JSON:
        """Create the object, or merge-patch it if it exists and differs; return what is stored.

        Idempotent: applying the same object twice sends one create and no patch. Fields the
        caller stops setting are not removed (a merge patch cannot know them): set them to None.
        `status` is never applied (it belongs to the object's controller: use patch_status).
        """
        api_version, kind, name, namespace = _identity(obj)
        desired = {k: v for k, v in obj.items() if k != "status"}
        desired["metadata"] = {k: v for k, v in obj["metadata"].items() if k not in _SERVER_FIELDS}
        current = self.find(api_version, kind, name, namespace)
        if current is None:
            try:
                return self.create(desired)
            except Conflict:  # it exists after all (created meanwhile, or not in a cache yet): patch it
                return self.patch(api_version, kind, name, namespace, desired)
        if _covers(current, desired):
            return current
        return self.patch(api_version, kind, name, namespace, desired)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete (background propagation); False if it was already gone."""
        resource = self._resource(api_version, kind)
        try:
            resource.delete(name=name, namespace=namespace, body={"propagationPolicy": "Background"})
        except Exception as e:
            wrapped = _wrap(e, "delete", _describe(kind, name, namespace))
            if type(wrapped) is NotFound:
                return False
            raise wrapped from e
        return True

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str | None, status: JSON) -> JSON:
        """Merge-patch the `/status` subresource (where the object's controller reports)."""
        resource = self._resource(api_version, kind)
        try:
            subresource = resource.subresources["status"]
        except KeyError as e:
            raise UnknownKind(f"{kind} ({api_version}) has no status subresource: enable it in its CRD",
                              status=404, reason="UnknownKind") from e
        try:
            return subresource.patch(  # type: ignore[no-any-return]
                body={"status": status}, name=name, namespace=namespace, content_type=MERGE_PATCH
            ).to_dict()
        except Exception as e:
            raise _wrap(e, "patch the status of", _describe(kind, name, namespace)) from e

    def create_event(
        self,
        involved: JSON,
        reason: str,
        message: str,
        type: str = "Normal",
        component: str = "policy-rollouts",
    ) -> JSON:
        """Record a core/v1 Event about `involved` (what `kubectl describe` shows)."""
        meta = involved.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": f"{component}-{uuid.uuid4().hex[:8]}",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        event["involvedObject"] = {k: v for k, v in event["involvedObject"].items() if v is not None}
        return self.create(event)


_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "deletionTimestamp",
                  "selfLink")


def _identity(obj: JSON, generated_name_ok: bool = False) -> tuple[str, str, str, str | None]:
    try:
        meta = obj["metadata"]
        name = meta["generateName"] if generated_name_ok and not meta.get("name") else meta["name"]
        return obj["apiVersion"], obj["kind"], name, meta.get("namespace")
    except (KeyError, TypeError) as e:
        raise Invalid(f"object needs apiVersion, kind and metadata.name (missing {e})", status=400,
                      reason="BadRequest") from e


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
