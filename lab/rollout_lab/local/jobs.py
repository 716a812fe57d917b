"""`JobRunner` for local mode: the offline-evaluation and training Jobs as local processes.

The command and arguments come from the very Job the Kubernetes runner would create
(`resources.jobs.build`), so local mode runs the same `policy-server ope` / `train` invocation;
only the result path changes (a file instead of the container's termination message).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rollout_operator import api
from rollout_operator.engine import types
from rollout_operator.resources import jobs as job_resources

from rollout_lab.local import processes

__all__ = ["LocalJobs"]

log = logging.getLogger(__name__)


class LocalJobs:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._jobs: dict[tuple[str, str], tuple[processes.LocalProcess, Path]] = {}

    def _key(self, rollout: api.PolicyRollout) -> str:
        return f"{rollout.metadata.namespace}/{rollout.metadata.name}"

    def observe(self, rollout: api.PolicyRollout) -> dict[str, types.JobObservation]:
        result: dict[str, types.JobObservation] = {}
        for (key, ident), (proc, result_path) in self._jobs.items():
            if key != self._key(rollout):
                continue
            if proc.alive:
                result[ident] = types.JobObservation(types.JobState.RUNNING)
                continue
            parsed = None
            try:
                loaded = json.loads(result_path.read_text())
                parsed = loaded if isinstance(loaded, dict) else None
            except (OSError, ValueError):
                pass
            if proc.proc.returncode == 0:
                result[ident] = types.JobObservation(types.JobState.SUCCEEDED, parsed)
            else:
                result[ident] = types.JobObservation(
                    types.JobState.FAILED, parsed,
                    f"exit code {proc.proc.returncode}; last output: {proc.tail(500)}",
                )
        return result

    def ensure(self, rollout: api.PolicyRollout, requests: tuple[types.JobRequest, ...],
               observed: dict[str, types.JobObservation]) -> None:
        for request in requests:
            key = (self._key(rollout), request.id)
            if request.id in observed or key in self._jobs:
                continue
            job = job_resources.build(rollout, request)
            container = job["spec"]["template"]["spec"]["containers"][0]
            name = job["metadata"]["name"]
            result_path = self.workdir / "jobs" / f"{name}.json"
            result_path.parent.mkdir(parents=True, exist_ok=True)
            command = list(container["command"])
            if command == ["policy-server"]:
                command = processes.policy_server_command()
            args = [str(result_path) if a == job_resources.RESULT_PATH else a for a in container["args"]]
            env = {e["name"]: (str(result_path) if e["value"] == job_resources.RESULT_PATH else e["value"])
                   for e in container["env"]}
            log.info("starting local Job %s: %s", name, " ".join(args))
            self._jobs[key] = (processes.LocalProcess(name, command + args, self.workdir / "logs", env), result_path)

    def close(self) -> None:
        for proc, _ in self._jobs.values():
            proc.stop()
