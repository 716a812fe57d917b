"""kopf wiring, and nothing else: kopf says which PolicyRollouts are ours, the controller does the work.

Each rollout gets a kopf daemon that only marks it as ours while it runs (`Controller.adopt`,
`release`): kopf starts it when it sees the rollout and stops it when the rollout is deleted
or a peer with a higher priority takes over, which is exactly when this process may act on it.
The daemon waits in the event loop and holds no thread; the reconciles themselves run on the
controller's work queue (a timer heap and a bounded pool of workers, rollbacks first), reading
watch-backed caches. Watch events of a PolicyRollout (a human's annotation, a spec edit) feed
the cache and make the rollout due at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from rollout_operator import api
from rollout_operator.controller import Controller, OperatorConfig

__all__ = ["OperatorConfig"]

log = logging.getLogger(__name__)


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations under our group; status belongs to the engine alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=api.GROUP)
    settings.posting.level = logging.WARNING  # we post our own, meaningful Events
    settings.watching.server_timeout = 60
    config: OperatorConfig = memo.get("config") or OperatorConfig(kubeconfig=os.environ.get("KUBECONFIG"))
    memo["controller"] = Controller(config, memo.get("metrics")).start()


@kopf.on.cleanup()
def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        controller.queue.stop(timeout=5.0)
        controller.notifier.close(timeout=5.0)  # deliver what is queued (a rollback notice) before exiting


@kopf.on.login()
def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    if os.environ.get("KUBECONFIG") or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs)


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=10.0)
async def own_rollout(stopped: kopf.DaemonStopped, body: kopf.Body, name: str, namespace: str,
                      memo: kopf.Memo, **_: Any) -> None:
    """Ours from start to stop: deleted, paused for a peer, or the operator exiting."""
    controller: Controller = memo["controller"]
    controller.adopt(_plain(body))
    try:
        await stopped.wait()
    finally:
        controller.release(namespace, name)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def _changed(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    """A human's annotation or a spec edit is acted on at once, not at the next timer.

    Async on purpose: it only updates the cache and the queue (short locks), and kopf would run a
    sync handler on its small default executor, once per event of every rollout."""
    obj = event.get("object")
    if isinstance(obj, dict) and event.get("type") in ("ADDED", "MODIFIED", "DELETED", None):
        memo["controller"].rollout_changed(event.get("type") or "MODIFIED", obj)


@kopf.on.delete(api.GROUP, api.VERSION, api.PLURAL)
async def finalize(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Remove traffic objects; Deployments and Services go with the owner references."""
    await asyncio.to_thread(memo["controller"].finalize, _plain(body))


def _plain(body: kopf.Body) -> dict[str, Any]:
    """kopf's Body is a live view; the controller keeps a snapshot."""
    return {key: body[key] for key in body}
