"""Play the container of the operator's Jobs on the real control plane (kwok runs no containers).

`run_job` runs the very command line the operator put in the Job (`policy-server ope|train ...`)
in this process, with the termination-message path redirected to a temp file; `finish_job`
then terminates the Job's real pod with that file's content as its termination message.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rollout_operator.resources import jobs as job_resources

from policy_server import cli as policy_cli
from tests.support.cluster import ClusterAPI
from tests.support.kube import wait_for


def jobs_of(kube_api: ClusterAPI, rollout: str, kind: str, namespace: str = "default") -> list[dict[str, Any]]:
    return [
        j for j in kube_api.objects("jobs", namespace)
        if j["metadata"].get("labels", {}).get("policy.rollouts.io/rollout") == rollout
        and j["metadata"]["labels"].get(job_resources.LABEL_JOB_KIND) == kind
    ]


def container(job: dict[str, Any]) -> dict[str, Any]:
    [c] = job["spec"]["template"]["spec"]["containers"]
    return c


def run_job(job: dict[str, Any], replace: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the Job's `policy-server` command here; (exit code, termination message)."""
    c = container(job)
    assert c["command"] == ["policy-server"], c["command"]
    args = list(c["args"])
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "termination-log"
        position = args.index("--write-result") + 1
        assert args[position] == c["terminationMessagePath"] == job_resources.RESULT_PATH
        args[position] = str(result)
        for flag, value in (replace or {}).items():
            args[args.index(flag) + 1] = value
        with contextlib.redirect_stdout(io.StringIO()), _lineage_env(c):
            code = policy_cli.main(args)
        return code, result.read_text() if result.exists() else ""


@contextlib.contextmanager
def _lineage_env(c: dict[str, Any]) -> Iterator[None]:
    """The Job's POLICY_ROLLOUTS_* variables (what the trainer records as lineage), set while it runs here."""
    wanted = {e["name"]: e.get("value", "") for e in c.get("env") or [] if e["name"].startswith("POLICY_ROLLOUTS_")}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def finish_job(cluster: ClusterAPI, job: dict[str, Any], exit_code: int, message: str, timeout: float = 60.0) -> None:
    """End the Job's pod with `exit_code` and `message`, as its container would have.

    The real Job controller made the pod, the scheduler bound it and kwok made it Running (kwok
    never ends a Job's pod by itself, see rollout_operator/cluster/kwok-stages.yaml). Here its
    container terminates with the termination message the Job's command wrote; the Job controller
    then counts the pod and sets the Job's Complete or Failed condition itself.
    """
    meta = job["metadata"]
    namespace = meta["namespace"]
    ended: set[str] = set()

    def running_pod() -> dict[str, Any] | None:
        pods = [p for p in cluster.objects("pods", namespace)
                if p["metadata"].get("labels", {}).get("job-name") == meta["name"]]
        return next((p for p in pods if (p.get("status") or {}).get("phase") == "Running"
                     and p["metadata"]["name"] not in ended), None)

    def job_finished() -> bool:
        conditions = ((cluster.get("jobs", namespace, meta["name"]) or {}).get("status") or {}).get("conditions")
        return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions or [])

    # A failing container fails again in every retry the Job's backoffLimit allows.
    deadline = time.monotonic() + timeout
    while not ended or (exit_code != 0 and not job_finished()):
        pod = wait_for(lambda: job_finished() or running_pod(), max(1.0, deadline - time.monotonic()),
                       interval=0.2, what=f"a Running pod of Job {meta['name']}")
        if pod is True:
            break
        _terminate(cluster, job, pod, exit_code, message)
        ended.add(pod["metadata"]["name"])


def _terminate(cluster: ClusterAPI, job: dict[str, Any], pod: dict[str, Any], exit_code: int, message: str) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    c = container(job)
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}],
        "containerStatuses": [{
            "name": c["name"], "ready": False, "restartCount": 0, "image": c["image"], "imageID": c["image"],
            "started": False,
            "state": {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                     "message": message, "startedAt": now, "finishedAt": now}},
        }],
    }
    assert cluster.set_status("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], status)


def wait_for_jobs_reread(kube_api: Any, seen: int, operator: Any, settle: float = 3.0) -> None:
    """A restarted operator has listed the Jobs again (its cache) and had time to act on what it found.

    Reconciles read Jobs from a watch-backed cache, so the restart shows as one list of Jobs; a
    reconcile that would create a second Job does so right after it, within `settle` seconds.
    """
    try:
        wait_for(lambda: any(c.verb == "list" for c in kube_api.calls_to("jobs")[seen:]), 60,
                 what="the restarted operator to list the Jobs")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{operator.log_tail()}") from None
    time.sleep(settle)
