"""Play the Job controller and the kubelet for the operator's Jobs (the emulator runs no pods).

`run_job` runs the very command line the operator put in the Job (`policy-server ope|train ...`)
in this process, with the termination-message path redirected to a temp file; `finish_job`
then does what a cluster would: a Pod of the Job whose terminated container carries that file's
content as its termination message, and the Job's Complete or Failed condition.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import uuid
from pathlib import Path
from typing import Any

from rollout_operator.resources import jobs as job_resources

from policy_server import cli as policy_cli
from tests.support.kube import KubeAPI


def jobs_of(kube_api: KubeAPI, rollout: str, kind: str, namespace: str = "default") -> list[dict[str, Any]]:
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
        with contextlib.redirect_stdout(io.StringIO()):
            code = policy_cli.main(args)
        return code, result.read_text() if result.exists() else ""


def finish_job(kube_api: KubeAPI, job: dict[str, Any], exit_code: int, message: str) -> None:
    """A terminated Pod of the Job with `message`, then the Job's Complete/Failed condition."""
    meta = job["metadata"]
    namespace = meta["namespace"]
    labels = dict(job["spec"]["template"]["metadata"]["labels"])
    labels["job-name"] = meta["name"]
    kube_api.put("pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{meta['name']}-{uuid.uuid4().hex[:5]}", "namespace": namespace, "labels": labels},
        "spec": job["spec"]["template"]["spec"],
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{
                "name": container(job)["name"], "ready": False, "restartCount": 0, "image": container(job)["image"],
                "state": {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                         "message": message, "finishedAt": "2026-01-01T00:00:00Z"}},
            }],
        },
    })
    if exit_code == 0:
        status = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    else:
        status = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                               "message": "Job has reached the specified backoff limit"}]}
    assert kube_api.set_status("jobs", namespace, meta["name"], status)
