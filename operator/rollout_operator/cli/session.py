"""The plugin's connection to the cluster: kubeconfig like kubectl, and errors that say what to do.

Every API failure becomes a `PluginError` with one line that names the object and the next
command to run (`kubectl policyrollout list`, `policy-rollouts crds | kubectl apply -f -`, the
Role to ask for), so the plugin never prints a traceback for a cluster that is merely not ready.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Any

import kubernetes

from rollout_operator import api, kube
from rollout_operator.errors import RolloutOperatorError

__all__ = ["PluginError", "Session", "new_id", "resolve_kubeconfig"]

JSON = dict[str, Any]


class PluginError(RolloutOperatorError):
    """A failure the user can fix; the message is the whole story (exit status 1)."""


def new_id() -> str:
    """A fresh action id: sortable by time, unique across users acting in the same second."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def resolve_kubeconfig(explicit: str | None) -> Path:
    """--kubeconfig, else the first file of $KUBECONFIG, else ~/.kube/config: kubectl's order."""
    if explicit:
        path = Path(explicit).expanduser()
    elif os.environ.get("KUBECONFIG"):
        path = Path(os.environ["KUBECONFIG"].split(os.pathsep)[0]).expanduser()
    else:
        path = Path("~/.kube/config").expanduser()
    if not path.is_file():
        raise PluginError(f"no kubeconfig at {path}: pass --kubeconfig FILE or set $KUBECONFIG")
    return path


def _context_namespace(path: Path, context: str | None) -> str:
    try:
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=str(path))
    except (kubernetes.config.ConfigException, OSError, ValueError) as e:
        raise PluginError(f"cannot read kubeconfig {path}: {e}; pass --kubeconfig with a valid file") from e
    chosen = active
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), None)
        if chosen is None:
            names = ", ".join(c.get("name", "?") for c in contexts)
            raise PluginError(f"context {context!r} is not in {path} (it has: {names}); pass --context NAME")
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


@dataclasses.dataclass
class Session:
    """A kube client plus the namespace the command acts in."""

    client: kube.Client
    namespace: str

    @classmethod
    def open(cls, kubeconfig: str | None, context: str | None, namespace: str | None) -> Session:
        path = resolve_kubeconfig(kubeconfig)
        ns = namespace or _context_namespace(path, context)
        try:
            client = kube.Client.from_kubeconfig(path, context=context)
        except kube.KubeError as e:
            raise PluginError(str(e)) from e
        return cls(client, ns)

    def close(self) -> None:
        self.client.close()

    # ---- errors

    def explain(self, error: kube.KubeError, verb: str, name: str | None = None,
                namespace: str | None = None) -> PluginError:
        """The one line a user needs for a failed call on policyrollouts."""
        ns = namespace or self.namespace
        where = "all namespaces" if namespace == "" else ns
        if isinstance(error, kube.UnknownKind):
            return PluginError("the PolicyRollout CRD is not installed: policy-rollouts crds | kubectl apply -f -")
        if isinstance(error, kube.NotFound) and name:
            return PluginError(f"policyrollout {name} not found in namespace {ns} (kubectl policyrollout list -n {ns})")
        if isinstance(error, kube.Forbidden):
            return PluginError(f"forbidden: your user cannot {verb} policyrollouts in {where}; "
                               "ask for the policy-rollouts-user role")
        if error.status == 0:
            return PluginError(f"cannot reach the Kubernetes API at {self.client.host}: is the cluster up? "
                               "check --kubeconfig/--context (kubectl cluster-info)")
        return PluginError(str(error))

    # ---- calls

    def get(self, name: str) -> JSON:
        try:
            return self.client.get(api.API_VERSION, api.KIND, name, self.namespace)
        except kube.KubeError as e:
            raise self.explain(e, "get", name) from e

    def list(self, all_namespaces: bool = False) -> list[JSON]:
        try:
            return self.client.list(api.API_VERSION, api.KIND, None if all_namespaces else self.namespace)
        except kube.KubeError as e:
            raise self.explain(e, "list", namespace="" if all_namespaces else None) from e

    def patch(self, name: str, patch: JSON) -> JSON:
        self.get(name)  # a merge patch of a missing object would say less clearly what is wrong
        try:
            return self.client.patch(api.API_VERSION, api.KIND, name, self.namespace, patch)
        except kube.KubeError as e:
            raise self.explain(e, "patch", name) from e

    def annotate(self, name: str, key: str, value: str) -> JSON:
        return self.patch(name, {"metadata": {"annotations": {key: value}}})

    def events(self, name: str) -> tuple[list[JSON], str | None]:
        """Events about the rollout, oldest first, and why there are none if they cannot be read.

        Events are a nicety: a user allowed to read rollouts but not events still gets a status.
        """
        try:
            items = self.client.list("v1", "Event", self.namespace)
        except kube.KubeError as e:
            return [], f"events unavailable: {self.explain(e, 'list events for', name)}"
        mine = [
            e for e in items
            if (e.get("involvedObject") or {}).get("name") == name
            and (e.get("involvedObject") or {}).get("kind") in (api.KIND, None)
        ]
        mine.sort(key=event_time)
        return mine, None


def event_time(event: JSON) -> str:
    """The time an Event last happened (core/v1 or events.k8s.io fields, whichever is set)."""
    return str(
        event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp") or ""
    )
