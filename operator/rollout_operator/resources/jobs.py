"""`batch/v1` Jobs for offline evaluation and training. Pure: no I/O.

Both run the policy-server image and report one compact JSON result through the container's
termination message (`/dev/termination-log`, at most 4 KiB): the kubelet copies it into the
Pod's status, where the operator reads it. The Job therefore needs no Kubernetes credentials
at all (no ServiceAccount token is mounted), and the operator needs only `get/list` on Pods.

Both build their dataset with the reward joiner (`policy-server join`): `spec.rewards` becomes
`--reward-window`, `--reward-function` and `--default-reward` / `--exclude-unrewarded`.

Training with `spec.training.workers > 1` (constrained-cql) is an Indexed Job of that many pods, one
torchrun node each, plus the rollout's headless Service `{rollout}-train-rdzv` (`companions`) whose DNS names the
pods (`<job>-<index>.<service>`): rank 0's pod is the static rendezvous. Every pod runs with `--resume`,
so the pods the Job's backoff restarts continue from the newest checkpoint.

Names are `{rollout}-{kind}-{id}` with `id` from `engine.types.JobRequest`: the same request
always names the same Job, so a Job is created at most once whatever the operator's restarts.
"""

from __future__ import annotations

from typing import Any

from rollout_operator import api
from rollout_operator.engine import types
from rollout_operator.resources import meta

__all__ = [
    "CONTAINER_NAME",
    "LABEL_JOB_ID",
    "LABEL_JOB_KIND",
    "RESULT_PATH",
    "build",
    "companions",
    "job_image",
    "job_name",
    "job_templates",
    "lineage_env",
    "offline_evaluation_job",
    "rendezvous_service_name",
    "reward_args",
    "training_job",
    "training_service",
]

LABEL_JOB_KIND = f"{api.GROUP}/job-kind"
LABEL_JOB_ID = f"{api.GROUP}/job-id"
CONTAINER_NAME = "job"
RESULT_PATH = "/dev/termination-log"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = "nvidia.com/gpu.present"  # set by NVIDIA GPU feature discovery on GPU nodes
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"memory": "4Gi"},
}
RENDEZVOUS_PORT = 29500  # torchrun's static rendezvous (rank 0's pod) of multi-worker training
_NAME_PREFIX_MAX = 40  # rollout part of the name: the Job name becomes a label value (<= 63)


def job_image(rollout: api.PolicyRollout, template: api.JobTemplate) -> str:
    """The image a Job runs: its template's, else the candidate policy's (the policy-server image)."""
    return template.image or rollout.spec.policy.image


def job_templates(rollout: api.PolicyRollout) -> list[tuple[str, api.JobTemplate]]:
    """(spec field, template) of every kind of Job the rollout may run."""
    spec = rollout.spec
    found: list[tuple[str, api.JobTemplate]] = []
    if spec.offline_evaluation is not None:
        found.append(("spec.offlineEvaluation.job", spec.offline_evaluation.job))
    if spec.training is not None:
        found.append(("spec.training", spec.training))
    return found


def job_name(rollout: api.PolicyRollout, request: types.JobRequest) -> str:
    prefix = rollout.metadata.name[:_NAME_PREFIX_MAX].rstrip("-.")
    return f"{prefix}-{request.kind.value}-{request.id}"


def _labels(rollout: api.PolicyRollout, request: types.JobRequest) -> dict[str, str]:
    labels = meta.labels(rollout)
    evaluation = request.kind is types.JobKind.OFFLINE_EVALUATION
    labels["app.kubernetes.io/name"] = "policy-evaluation" if evaluation else "policy-training"
    labels[LABEL_JOB_KIND] = request.kind.value
    labels[LABEL_JOB_ID] = request.id
    return labels


def _resources(template: api.JobTemplate, gpus: int = 0) -> dict[str, dict[str, str]]:
    result = {kind: dict(values) for kind, values in DEFAULT_RESOURCES.items()}
    for kind, values in (template.resources or {}).items():
        result[kind] = dict(values)
    if gpus:
        result.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)
    return result


def _job(
    rollout: api.PolicyRollout,
    request: types.JobRequest,
    template: api.JobTemplate,
    command: list[str],
    args: list[str],
    env: dict[str, str],
    gpus: int = 0,
) -> dict[str, Any]:
    labels = _labels(rollout, request)
    # The root filesystem is read-only: libraries that cache under $HOME (torch, d3rlpy's deps) get /tmp.
    env = {"HOME": "/tmp", **env}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": job_image(rollout, template),
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "args": args,
        "env": [{"name": k, "value": v} for k, v in env.items()]
        + [{"name": e.name, "value": e.value} for e in template.env if e.name not in env],
        "resources": _resources(template, gpus),
        "terminationMessagePath": RESULT_PATH,
        # A crash before the result is written still tells the operator why (the log's tail).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": meta.container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    tolerations = [t.wire() for t in template.tolerations]
    node_selector = dict(template.node_selector)
    if gpus:
        if not any(t.get("key") == GPU_RESOURCE for t in tolerations):
            tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        if not node_selector:
            node_selector = {GPU_NODE_LABEL: "true"}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the Job talks to no API: its result goes out as a file
        "securityContext": meta.pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    spec: dict[str, Any] = {
        "backoffLimit": template.backoff_limit,
        "activeDeadlineSeconds": max(1, int(api.parse_duration(template.active_deadline).total_seconds())),
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if template.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = template.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta.object_meta(rollout, job_name(rollout, request), labels),
        "spec": spec,
    }


def _constraint_argument(constraint: api.CostConstraint) -> str:
    """The `policy-server ope --constraint` value of one cost budget (`policy_server.ope.constraints`)."""
    parts = [f"cost={constraint.cost}"]
    if constraint.max is not None:
        parts.append(f"max={constraint.max!r}")
    else:
        parts.append(f"maxIncrease={constraint.max_increase!r}")
    if constraint.estimators:
        parts.append("estimators=" + "+".join(constraint.estimators))
    if constraint.confidence is not None:
        parts.append(f"confidence={constraint.confidence!r}")
    return ",".join(parts)


def _window_argument(window: str) -> str:
    """A duration in its largest whole unit ("1h30m" -> "90m"): one number and one unit, as the CLIs take it."""
    millis = round(api.parse_duration(window).total_seconds() * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def reward_args(rollout: api.PolicyRollout) -> list[str]:
    """How `policy-server ope`/`train` join rewards to decisions (spec.rewards); nothing when it is unset.

    Unset keeps the CLIs' defaults, which are the same as an empty spec.rewards: no window, the first
    reward, decisions without one left out.
    """
    rewards = rollout.spec.rewards
    if rewards is None:
        return []
    args = [] if rewards.window is None else ["--reward-window", _window_argument(rewards.window)]
    args += ["--reward-function", rewards.function.value]
    if rewards.default is None:
        args.append("--exclude-unrewarded")
    else:  # one argument: a negative default would read as an option
        args.append(f"--default-reward={rewards.default!r}")
    return args


def offline_evaluation_job(rollout: api.PolicyRollout, request: types.JobRequest) -> dict[str, Any]:
    """`policy-server ope` of the candidate against the fallback (or the logged rewards)."""
    spec = rollout.spec.offline_evaluation
    if spec is None:
        raise ValueError(f"PolicyRollout {rollout.metadata.name!r} has no spec.offlineEvaluation")
    policy = rollout.spec.policy
    baseline = rollout.spec.fallback.artifact if spec.baseline == "fallback" else "logged"
    if spec.trajectory is not None:
        args = _trajectory_args(spec, policy.artifact, baseline)
    else:
        args = _bandit_args(spec, policy.artifact, baseline)
    if spec.min_lower_bound_ratio is not None:
        args += ["--min-lower-bound-ratio", repr(spec.min_lower_bound_ratio)]
    if spec.min_lower_bound_delta is not None:
        args += ["--min-lower-bound-delta", repr(spec.min_lower_bound_delta)]
    for constraint in spec.constraints:  # one argument each: a negative budget would read as an option
        args.append(f"--constraint={_constraint_argument(constraint)}")
    args += fairness_args(rollout)
    args += reward_args(rollout)
    env = {"POLICY_ROLLOUT": rollout.metadata.name, "POLICY_VERSION": policy.version}
    return _job(rollout, request, spec.job, ["policy-server"], args, env)


def fairness_args(rollout: api.PolicyRollout) -> list[str]:
    """`policy-server ope --fairness-*` (spec.offlineEvaluation.fairness; groups default to spec.fairness's)."""
    spec = rollout.spec.offline_evaluation
    criterion = None if spec is None else spec.fairness
    if criterion is None:
        return []
    groups = criterion.groups
    if groups is None and rollout.spec.fairness is not None and rollout.spec.fairness.group_key == criterion.group_key:
        groups = rollout.spec.fairness.groups
    args = ["--fairness-group-key", criterion.group_key, "--fairness-metric", criterion.metric,
            "--fairness-mode", criterion.mode, "--fairness-max", repr(criterion.max),
            "--fairness-min-group-ess", repr(criterion.min_group_ess), "--fairness-estimator", criterion.estimator]
    if groups:
        args += ["--fairness-groups", ",".join(groups)]
    if criterion.cost is not None:
        args += ["--fairness-cost", criterion.cost]
    if criterion.action is not None:
        args += ["--fairness-action", str(criterion.action)]
    return args


def _trajectory_args(spec: api.OfflineEvaluationSpec, policy: str, baseline: str) -> list[str]:
    """`policy-server ope --trajectories` (spec.offlineEvaluation.trajectory): the episodes' gate."""
    trajectory = spec.trajectory
    assert trajectory is not None
    return [
        "ope", "--trajectories", "--gamma", repr(trajectory.gamma), "--logs", spec.dataset, "--policy", policy,
        "--baseline", baseline, "--estimators", ",".join(trajectory.estimators), "--confidence",
        repr(spec.confidence), "--agreement-tolerance", repr(trajectory.agreement_tolerance),
        "--min-effective-trajectories", repr(trajectory.min_effective_trajectories),
        "--max-unsupported-mass", repr(spec.max_unsupported_mass),
        "--support-floor", repr(spec.support_floor), "--write-result", RESULT_PATH, "--json",
    ]


def _bandit_args(spec: api.OfflineEvaluationSpec, policy: str, baseline: str) -> list[str]:
    """`policy-server ope` on single decisions: the bandit gate's flags."""
    args = [
        "ope", "--logs", spec.dataset, "--policy", policy, "--baseline", baseline,
        "--estimators", ",".join(spec.estimators), "--confidence", repr(spec.confidence), "--bound", spec.bound,
        "--min-ess", repr(spec.min_ess), "--max-unsupported-mass", repr(spec.max_unsupported_mass),
        "--support-floor", repr(spec.support_floor), "--weight-band", repr(spec.weight_band),
        "--write-result", RESULT_PATH, "--json",
    ]
    if spec.reward_range is not None:  # one argument: a negative lower end would read as an option
        args.append(f"--reward-range={spec.reward_range[0]!r},{spec.reward_range[1]!r}")
    return args


def training_job(rollout: api.PolicyRollout, request: types.JobRequest) -> dict[str, Any]:
    """`policy-server train` (or the user's command) writing `{output}/{version}`."""
    spec = rollout.spec.training
    if spec is None:
        raise ValueError(f"PolicyRollout {rollout.metadata.name!r} has no spec.training")
    version = request.version or request.id
    output = f"{spec.output.rstrip('/')}/{version}"
    env = {
        "POLICY_ROLLOUT": rollout.metadata.name,
        "POLICY_TRAIN_DATASET": spec.dataset,
        "POLICY_TRAIN_OUTPUT": output,
        "POLICY_TRAIN_VERSION": version,
        "POLICY_RESULT_PATH": RESULT_PATH,
        **lineage_env(rollout, spec),
    }
    if spec.command:
        command, args = list(spec.command), list(spec.args)
    else:
        command = ["policy-server"]
        args = [
            "train", "--logs", spec.dataset, "--out", output, "--version", version,
            "--algorithm", spec.algorithm, "--steps", str(spec.steps),
            "--device", "cuda" if spec.gpus else "cpu", "--write-result", RESULT_PATH, *reward_args(rollout),
            *_constrained_args(spec, output), *spec.args,
        ]
    workers = spec.workers if spec.algorithm == "constrained-cql" or spec.command else 1
    if workers > 1 and not spec.command:
        command, args = _torchrun(rollout, request, spec, args)
    job = _job(rollout, request, spec, command, args, env, gpus=spec.gpus)
    if workers > 1:
        _make_indexed(job, workers, rendezvous_service_name(rollout))
    return job


def lineage_env(rollout: api.PolicyRollout, spec: api.TrainingSpec) -> dict[str, str]:
    """What `policy-server train` records as the code of its artifact's lineage: the image this Job runs and,
    when the rollout's `policy.rollouts.io/commit` annotation names it, the commit (else the template's env may)."""
    env = {"POLICY_ROLLOUTS_IMAGE": job_image(rollout, spec)}
    commit = rollout.metadata.annotations.get(api.ANNOTATION_COMMIT)
    if commit:
        env["POLICY_ROLLOUTS_COMMIT"] = commit
    return env


def _constrained_args(spec: api.TrainingSpec, output: str) -> list[str]:
    """Budgets, discount, checkpoints and curves (under the version's output); `--resume` always, so a pod
    the Job's backoff restarts continues its run."""
    if spec.algorithm != "constrained-cql":
        return []
    args = ["--gamma", repr(spec.gamma), "--checkpoint-every", str(spec.checkpoint_every), "--resume",
            "--tensorboard", f"{output}/tensorboard"]
    for budget in spec.cost_budgets:  # one argument each: a name starting with '-' would read as an option
        args += [f"--cost={budget.cost}", f"--cost-budget={budget.max!r}"]
    return args


def _torchrun(rollout: api.PolicyRollout, request: types.JobRequest, spec: api.TrainingSpec,
              train_args: list[str]) -> tuple[list[str], list[str]]:
    """One torchrun node per pod, rank 0's pod the static rendezvous (`<job>-0.<service>`, DNS of the Service)."""
    address = f"{job_name(rollout, request)}-0.{rendezvous_service_name(rollout)}"
    args = [
        "--nnodes", str(spec.workers), "--nproc-per-node", str(max(1, spec.gpus)),
        "--node-rank", "$(JOB_COMPLETION_INDEX)", "--master-addr", address,
        "--master-port", str(RENDEZVOUS_PORT), "-m", "policy_server.cli", *train_args,
    ]
    return ["torchrun"], args


def _make_indexed(job: dict[str, Any], workers: int, service: str) -> None:
    """An Indexed Job of `workers` pods, all at once (a rank waits for every other at the rendezvous)."""
    spec = job["spec"]
    spec.update({"completions": workers, "parallelism": workers, "completionMode": "Indexed"})
    pod = spec["template"]["spec"]
    pod["subdomain"] = service  # pod DNS: <job>-<index>.<service>
    pod["containers"][0]["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]


def rendezvous_service_name(rollout: api.PolicyRollout) -> str:
    return f"{rollout.metadata.name[:_NAME_PREFIX_MAX].rstrip('-.')}-train-rdzv"


def training_service(rollout: api.PolicyRollout) -> dict[str, Any] | None:
    """The headless Service naming multi-worker training pods (`<job>-<index>.<service>`), or None without one.

    One per rollout, shared by its training Jobs (pod hostnames differ by Job), owned by the rollout:
    nothing is left behind when Jobs are deleted after their TTL.
    """
    spec = rollout.spec.training
    if spec is None or spec.workers <= 1 or (spec.algorithm != "constrained-cql" and not spec.command):
        return None
    labels = meta.labels(rollout)
    labels["app.kubernetes.io/name"] = "policy-training"
    selector = {api.LABEL_ROLLOUT: rollout.metadata.name, LABEL_JOB_KIND: types.JobKind.TRAINING.value}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.object_meta(rollout, rendezvous_service_name(rollout), labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # rank 0 is reachable before any readiness
            "selector": selector,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def companions(rollout: api.PolicyRollout, request: types.JobRequest) -> list[dict[str, Any]]:
    """Objects a Job needs before it starts (the headless Service of a multi-worker training Job)."""
    if request.kind is not types.JobKind.TRAINING:
        return []
    service = training_service(rollout)
    return [] if service is None else [service]


def build(rollout: api.PolicyRollout, request: types.JobRequest) -> dict[str, Any]:
    if request.kind is types.JobKind.OFFLINE_EVALUATION:
        return offline_evaluation_job(rollout, request)
    if request.kind is types.JobKind.TRAINING:
        return training_job(rollout, request)
    raise ValueError(f"unknown job kind {request.kind!r}")
