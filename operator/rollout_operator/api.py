"""The PolicyRollout API: the one source of truth for the CRD schema.

`crds/policyrollout.yaml` is generated from these models (`policy-rollouts crds`), so a
field added here appears in the cluster's schema, the engine and the plugin at once.
Rules that an OpenAPI schema cannot express (one action per step, unique guardrail names,
query xor template, durations that parse) are written as CEL `x-kubernetes-validations`
next to the model they constrain, and mirrored by pydantic validators so that local mode
and the tests reject the same manifests the API server does.
"""

from __future__ import annotations

import enum
import itertools
import re
from datetime import timedelta
from typing import Annotated, Any, Final, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "ANNOTATION_ACTION",
    "ANNOTATION_COMMIT",
    "ANNOTATION_TRAIN",
    "API_VERSION",
    "CONDITION_PATTERN",
    "DURATION_PATTERN",
    "GROUP",
    "HTTP_URL_PATTERN",
    "KIND",
    "LABEL_REWARD_KEY",
    "LABEL_ROLLOUT",
    "LABEL_VARIANT",
    "NO_ANALYSED_LIVE_STEP",
    "OBJECT_NAME_PATTERN",
    "PLURAL",
    "REVISION_LIMIT",
    "REWARD_DEFAULT_AND_EXCLUDE",
    "REWARD_KEEP_WITHOUT_DEFAULT",
    "REWARD_WINDOW_ZERO",
    "SHORT_NAMES",
    "SINGULAR",
    "STEPS_GO_DOWN",
    "VERSION",
    "WITHOUT_PROMOTION_RULES",
    "AnalysisSpec",
    "ApprovalStep",
    "CodeLineage",
    "Condition",
    "DatasetLineage",
    "DecisionLogSpec",
    "Duration",
    "EnvVar",
    "EnvironmentLineage",
    "EstimateStatus",
    "FallbackSpec",
    "GatewayAPISpec",
    "Guardrail",
    "GuardrailCondition",
    "GuardrailStatus",
    "HistoryEntry",
    "HttpUrl",
    "JobTemplate",
    "JudgeKind",
    "JudgeMetric",
    "JudgeSpec",
    "JudgeStatus",
    "Lineage",
    "LineagePart",
    "Model",
    "NotificationEvent",
    "NotificationFormat",
    "NotificationSpec",
    "OPEEstimator",
    "OPEReportLineage",
    "ObjectMeta",
    "OfflineEvaluationSpec",
    "OfflineEvaluationStatus",
    "ParentRef",
    "PauseStep",
    "Phase",
    "PolicyRollout",
    "PolicyRolloutSpec",
    "PolicyRolloutStatus",
    "PolicySpec",
    "Revision",
    "RewardFunction",
    "RewardKeySecretRef",
    "RewardsSpec",
    "ShadowStep",
    "StatusModel",
    "Step",
    "Toleration",
    "TrafficProvider",
    "TrafficSpec",
    "TrainingCostBudget",
    "TrainingJobStatus",
    "TrainingSpec",
    "Verdict",
    "has_analysed_live_step",
    "parse_duration",
    "weights_go_down",
]

GROUP: Final = "policy.rollouts.io"
VERSION: Final = "v1alpha1"
# GROUP/VERSION spelled out, so that its type is the Literal `PolicyRollout.api_version` requires.
API_VERSION: Final = "policy.rollouts.io/v1alpha1"
KIND: Final = "PolicyRollout"
PLURAL = "policyrollouts"
SINGULAR = "policyrollout"
SHORT_NAMES = ["prl"]

LABEL_ROLLOUT = f"{GROUP}/rollout"
LABEL_VARIANT = f"{GROUP}/variant"
# On a Secret named by spec.rewardKeySecret: its owner consents to its use as a rollout's reward key.
LABEL_REWARD_KEY = f"{GROUP}/reward-key"
# A human (or `kubectl policyrollout`) asks for an action by setting this annotation to
# "<verb>/<unique id>". The operator applies each id once and remembers it in
# status.lastActionId, so the annotation can stay in place and replays are harmless.
ANNOTATION_ACTION = f"{GROUP}/action"
# `kubectl policyrollout train` sets this to a unique id; the training controller starts one
# Job per new id (and remembers it), the same once-per-id contract as ANNOTATION_ACTION.
ANNOTATION_TRAIN = f"{GROUP}/train"
# The source commit of the training code (a GitOps tool can stamp it): the training Job passes it on as
# POLICY_ROLLOUTS_COMMIT, which `policy-server train` records in the artifact's lineage.
ANNOTATION_COMMIT = f"{GROUP}/commit"
# How many promoted policies status.revisions keeps (what `kubectl policyrollout undo` can go back to).
REVISION_LIMIT = 10

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# A comparison with a literal whose digits and exponent are bounded, so that the threshold is always a
# finite number (`< 1e999` would be +Inf, a guardrail that can never fail).
CONDITION_PATTERN = (
    r"^\s*(<=|>=|==|!=|<|>)\s*[-+]?([0-9]{1,20}(\.[0-9]{0,20})?|\.[0-9]{1,20})([eE][-+]?[0-9]{1,2})?\s*$"
)
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes object name (RFC 1123 subdomain), as the API server checks metadata.name.
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Where the operator sends HTTP requests: http or https, a host, nothing else (no file://, no gopher://).
HTTP_URL_PATTERN = r"^https?://[^\s/?#@]+(/\S*)?$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration ("30s", "1m30s", "250ms"), the form Kubernetes users write."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use a number with a unit, e.g. '30s', '5m', '1h30m'")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


def _check_duration(text: str) -> str:
    parse_duration(text)
    return text


def _check_condition(text: str) -> str:
    if not re.fullmatch(CONDITION_PATTERN, text):
        raise ValueError(
            f"invalid guardrail condition {text!r}: write an operator (<, <=, >, >=, ==, !=) and a finite number "
            "of at most 20 digits before and after the point and a 2-digit exponent, e.g. '< 0.01' or '>= 1.5e-3'"
        )
    return text


def _check_http_url(text: str) -> str:
    if not re.fullmatch(HTTP_URL_PATTERN, text):
        raise ValueError(f"invalid URL {text!r}: write an http:// or https:// URL with a host, "
                         "e.g. 'http://prometheus-operated.monitoring:9090'")
    return text


Duration = Annotated[
    str,
    pydantic.AfterValidator(_check_duration),
    # The pattern goes in json_schema_extra: as Field(pattern=...) after the validator it is
    # enforced but left out of the JSON schema (and so the CRD); parse_duration checks it here.
    Field(json_schema_extra={"pattern": DURATION_PATTERN, "example": "5m"}),
]
GuardrailCondition = Annotated[
    str, pydantic.AfterValidator(_check_condition), Field(json_schema_extra={"pattern": CONDITION_PATTERN})
]
HttpUrl = Annotated[
    str,
    pydantic.AfterValidator(_check_http_url),
    Field(max_length=2048, json_schema_extra={"pattern": HTTP_URL_PATTERN}),
]
# Enum fields take their string values: the models are otherwise strict (below), and a strict enum
# field would accept only Python enum members, never the strings a manifest holds.
_LAX = pydantic.Strict(False)


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def _validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class Model(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields refused.

    Strict types and finite numbers, as the API server checks the CRD's schema: `setWeight: "50"`,
    `autoRollout: "yes"` or an infinite bound is refused here too, not converted, so local mode
    and the operator accept exactly what `kubectl apply` does.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the Kubernetes API stores it (camelCase, no unset fields)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------- spec


class EnvVar(Model):
    """An environment variable of a container, as in a Pod spec (a literal value)."""

    name: str = Field(min_length=1)
    value: str = ""


class DatasetLineage(Model):
    """What the policy learned from: the data's URI, partitions or decision time range, a content hash, rows."""

    uri: str = Field(min_length=1)
    partitions: list[str] | None = Field(default=None, max_length=1000)
    from_: str | None = Field(default=None, alias="from", description="Earliest decision time (ISO 8601).")
    to: str | None = Field(default=None, description="Latest decision time (ISO 8601).")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    hash_of: str | None = Field(default=None, description="What sha256 covers.")
    rows: int | None = Field(default=None, ge=0)


class CodeLineage(Model):
    """The training code: the image it ran (a ref or a digest) and the source commit."""

    image: str | None = None
    commit: str | None = None


class EnvironmentLineage(Model):
    """The simulator or environment (id and version) and the library versions it was trained with."""

    simulator: str | None = None
    simulator_version: str | None = None
    python: str | None = None
    torch: str | None = None
    policy_server: str | None = None


class OPEReportLineage(Model):
    """The offline evaluation the artifact passed: where the report is and its headline."""

    uri: str | None = None
    estimator: str | None = None
    estimate: float | None = None
    lower_bound: float | None = None
    baseline_value: float | None = None
    verdict: str | None = None


class Lineage(Model):
    """Where a policy artifact came from: the `lineage` block of its manifest (docs/offline-gate-and-training.md)."""

    dataset: DatasetLineage | None = None
    code: CodeLineage | None = None
    hyperparameters: dict[str, Any] | None = Field(default=None, description="The training arguments.")
    environment: EnvironmentLineage | None = None
    ope_report: OPEReportLineage | None = None


class LineagePart(enum.StrEnum):
    """A part of a lineage a rollout can require (`spec.requireLineage`)."""

    DATASET = "dataset"
    CODE = "code"
    HYPERPARAMETERS = "hyperparameters"
    ENVIRONMENT = "environment"
    OPE_REPORT = "opeReport"


class PolicySpec(Model):
    """A servable policy: the policy-server image and the artifact it loads."""

    image: str = Field(min_length=1, description="Container image running `policy-server serve`.")
    artifact: str = Field(min_length=1, description="Path or fsspec URL of the policy artifact.")
    version: str = Field(min_length=1, max_length=63, description="Version label of this policy.")
    replicas: int = Field(
        default=1, ge=1, le=1000, description="Pods of this policy; at least 1 (a policy with no pods serves nothing)."
    )
    workers: int = Field(
        default=1, ge=1, le=64,
        description="Server processes per pod (`policy-server serve --workers`), sharing the port; size the pod's "
        "CPU to match.",
    )
    port: int = Field(default=8080, ge=1, le=65535)
    resources: dict[str, dict[str, str]] | None = Field(
        default=None, description="Container resources (requests/limits), as in a Pod spec."
    )
    env: list[EnvVar] = Field(default_factory=list)
    lineage: Lineage | None = Field(
        default=None,
        description="Where a hand-provided artifact came from (a trained version's lineage comes from its training "
        "Job): kept in status.revisions, checked against spec.requireLineage.",
    )


class FallbackSpec(PolicySpec):
    """The policy that serves when the candidate does not: today's trusted policy."""


class TrafficProvider(enum.StrEnum):
    """What moves the traffic: the policy router, Gateway API HTTPRoute weights or an Istio VirtualService."""

    ROUTER = "router"
    GATEWAY_API = "gatewayAPI"
    ISTIO = "istio"


class ParentRef(Model):
    """A Gateway the HTTPRoute attaches to (Gateway API `parentRefs`)."""

    name: str = Field(min_length=1)
    namespace: str | None = None
    section_name: str | None = None


class GatewayAPISpec(Model):
    """The gatewayAPI provider: the Gateways the HTTPRoute attaches to and the hostnames it serves."""

    parent_refs: list[ParentRef] = Field(default_factory=list)
    hostnames: list[str] = Field(default_factory=list)


class TrafficSpec(Model):
    """How requests reach the variants: the traffic provider and its settings."""

    provider: Annotated[TrafficProvider, _LAX] = TrafficProvider.ROUTER
    sticky_key: str | None = Field(default=None, description="Header whose value keeps a caller on one variant.")
    gateway_api: GatewayAPISpec = Field(default_factory=GatewayAPISpec, alias="gatewayAPI")
    hosts: list[str] = Field(default_factory=list, description="Istio VirtualService hosts.")


class ShadowStep(Model):
    """Mirror requests to the candidate for `duration`; only the stable variant's answers are returned."""

    duration: Duration


class PauseStep(Model):
    """Hold the current weight for `duration`, or until `promote` when no duration is given."""

    duration: Duration | None = Field(default=None, description="Omit to wait for `promote`.")


class ApprovalStep(Model):
    """Wait until a human approves (`kubectl policyrollout approve`)."""

    # `approval: {}` takes no fields. An object schema without properties makes the API server
    # prune unknown fields silently (`approval: {by: alice}` would be stored as `{}` and read as
    # a gate anyone may open), so unknown fields are kept and then refused by maxProperties.
    model_config = ConfigDict(json_schema_extra={"maxProperties": 0, "x-kubernetes-preserve-unknown-fields": True})


class Step(Model):
    """One step of the rollout: exactly one of shadow, setWeight, pause, approval."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "[has(self.shadow), has(self.setWeight), has(self.pause), has(self.approval)].filter(x, x).size() == 1",
                "each step must set exactly one of shadow, setWeight, pause, approval",
            )
        )
    )

    shadow: ShadowStep | None = None
    set_weight: int | None = Field(default=None, ge=0, le=100)
    pause: PauseStep | None = None
    approval: ApprovalStep | None = None

    @pydantic.model_validator(mode="after")
    def _one_action(self) -> Step:
        chosen = [n for n in ("shadow", "set_weight", "pause", "approval") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError("each step must set exactly one of shadow, setWeight, pause, approval")
        return self

    @property
    def kind(self) -> str:
        for name in ("shadow", "set_weight", "pause", "approval"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated step has no action")


class Guardrail(Model):
    """A number the candidate must keep within `condition`: a PromQL `query` or a built-in `template`."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "has(self.query) != has(self.template)",
                "set exactly one of query or template",
            )
        )
    )

    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    query: str | None = Field(default=None, min_length=1, description="PromQL returning one number.")
    template: str | None = Field(default=None, min_length=1, description="Name of a built-in guardrail template.")
    params: dict[str, str] = Field(default_factory=dict, description="Parameters of the template.")
    condition: GuardrailCondition = Field(
        description="Pass condition on the value, e.g. '< 0.01' or '>= 0.95' (a finite number).",
    )
    failure_limit: int = Field(default=1, ge=1, le=100, description="Consecutive failures that roll back.")
    inconclusive_limit: int = Field(
        default=3, ge=1, le=100, description="Consecutive inconclusive measurements that roll back."
    )

    @pydantic.model_validator(mode="after")
    def _query_xor_template(self) -> Guardrail:
        if (self.query is None) == (self.template is None):
            raise ValueError("set exactly one of query or template")
        return self


class JudgeKind(enum.StrEnum):
    """How the analysis turns measurements into roll back / hold / advance (see engine/judges)."""

    THRESHOLD = "threshold"
    SEQUENTIAL = "sequential"


class JudgeMetric(enum.StrEnum):
    """What the sequential judge compares between the variants: the reward, or a named cost."""

    REWARD = "reward"
    COST = "cost"


class JudgeSpec(Model):
    """The analysis judge: `threshold` (per-guardrail conditions only) or `sequential`.

    The sequential judge keeps judging every guardrail like `threshold` and, on top, compares the
    candidate's mean reward (or a cost) with the stable variant's using an always-valid normal
    mixture SPRT, so it may look after every interval without inflating the false-rollback rate.
    """

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!has(self.metric) || self.metric != 'cost' || has(self.cost)",
                "metric 'cost' needs the cost's name in judge.cost (the `cost` label of policy_cost_sum)",
            )
        )
    )

    kind: Annotated[JudgeKind, _LAX] = JudgeKind.THRESHOLD
    alpha: float = Field(
        default=0.05,
        ge=0.0001,
        le=0.49,
        description="Sequential: largest chance of rolling back a candidate that is no worse.",
    )
    min_detectable_effect: float = Field(
        default=0.05,
        ge=0.001,
        le=1,
        description="Sequential: relative regression (0.05 = 5% of the stable mean) the test is tuned to detect; "
        "also the non-inferiority margin for advancing early.",
    )
    metric: Annotated[JudgeMetric, _LAX] = Field(
        default=JudgeMetric.REWARD, description="Sequential: compare reward or a cost."
    )
    cost: str | None = Field(default=None, min_length=1, description="Sequential, metric cost: the cost's name.")
    reward_std_dev: float | None = Field(
        default=None,
        ge=1e-9,
        description="Sequential: known bound on one decision's reward (or cost) standard deviation; omit to "
        "leave it unknown (a scale-invariant t-mixture, which needs no estimate of it).",
    )
    min_intervals: int = Field(default=3, ge=2, le=1000, description="Sequential: intervals before any decision.")
    min_samples: int = Field(default=30, ge=1, description="Sequential: rewards per variant before any decision.")
    allow_early_advance: bool = Field(
        default=False,
        description="Sequential: end a timed pause early once the candidate is shown no worse than the margin.",
    )
    inconclusive_limit: int = Field(
        default=3, ge=1, le=100, description="Sequential: consecutive intervals without usable sums that roll back."
    )
    batch_intervals: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Sequential: consecutive intervals averaged into one batch mean before the test, so interval "
        "means that are autocorrelated within a variant (sticky callers) do not fake evidence; decisions come at "
        "batch ends. Default 20 with traffic.stickyKey, else 1.",
    )

    @pydantic.model_validator(mode="after")
    def _cost_named(self) -> JudgeSpec:
        if self.metric is JudgeMetric.COST and self.cost is None:
            raise ValueError("metric 'cost' needs the cost's name in judge.cost (the `cost` label of policy_cost_sum)")
        return self


class AnalysisSpec(Model):
    """Guardrail analysis: how often to measure, where, what, and how the measurements are judged."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!has(self.guardrails) || self.guardrails.all(g, self.guardrails.exists_one(h, h.name == g.name))",
                "guardrail names must be unique",
                ".guardrails",
            ),
            _cel(
                "!has(self.shadowGuardrails) || self.shadowGuardrails.all(g, "
                "self.shadowGuardrails.exists_one(h, h.name == g.name) && "
                "(!has(self.guardrails) || !self.guardrails.exists(h, h.name == g.name)))",
                "guardrail names must be unique across guardrails and shadowGuardrails",
                ".shadowGuardrails",
            ),
        )
    )

    interval: Duration = "1m"
    prometheus_url: HttpUrl | None = Field(
        default=None,
        description="Prometheus base URL (http or https); defaults to the operator's --prometheus-url. The "
        "operator's policy limits which URLs a rollout may name (docs/security.md).",
    )
    guardrails: list[Guardrail] = Field(default_factory=list, max_length=32)
    shadow_guardrails: list[Guardrail] = Field(
        default_factory=list, max_length=32,
        description="Judged during shadow steps, on the candidate's would-be decisions (templates shadow-*), with "
        "failureLimit and inconclusiveLimit: a breach rolls back before the candidate serves anyone, and a shadow "
        "step ends only after they pass.",
    )
    judge: JudgeSpec = Field(default_factory=JudgeSpec, description="How measurements are judged.")

    @pydantic.model_validator(mode="after")
    def _unique_names(self) -> AnalysisSpec:
        names = [g.name for g in [*self.guardrails, *self.shadow_guardrails]]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"guardrail names must be unique across guardrails and shadowGuardrails: "
                             f"{', '.join(duplicates)} repeated")
        return self


class NotificationEvent(enum.StrEnum):
    """What a notification target subscribes to."""

    PHASE = "phase"  # every phase transition
    ROLLBACK = "rollback"  # a rollback starts (also a phase transition)
    APPROVAL = "approval"  # the rollout waits for a human (approval step, pause without duration)


class NotificationFormat(enum.StrEnum):
    """The body a notification target receives: the operator's JSON, or a Slack message."""

    JSON = "json"
    SLACK = "slack"


class NotificationSpec(Model):
    """A webhook told about this rollout, besides the operator's global ones (--notify-url)."""

    url: str = Field(pattern=r"^https?://", max_length=2048, description="Webhook URL (http or https).")
    format: Annotated[NotificationFormat, _LAX] = Field(default=NotificationFormat.JSON, description="json or slack.")
    events: list[Annotated[NotificationEvent, _LAX]] = Field(
        default_factory=lambda: list(NotificationEvent), min_length=1, description="Events to send."
    )


class Toleration(Model):
    """A Pod toleration (as in a Pod spec): lets Job pods onto tainted (e.g. GPU) nodes."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class JobTemplate(Model):
    """Settings of a `batch/v1` Job the operator runs (offline evaluation or training)."""

    image: str | None = Field(default=None, description="Container image; defaults to spec.policy.image.")
    service_account_name: str | None = None
    resources: dict[str, dict[str, str]] | None = Field(
        default=None, description="Container resources (requests/limits), as in a Pod spec."
    )
    env: list[EnvVar] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    backoff_limit: int = Field(default=1, ge=0, le=20, description="Pod retries before the Job fails.")
    active_deadline: Duration = Field(default="1h", description="Longest the Job may run before it fails.")
    ttl_seconds_after_finished: int | None = Field(
        default=86400, ge=0, description="Delete the finished Job (and its pods) after this long."
    )


class OPEEstimator(enum.StrEnum):
    """An off-policy estimator of the candidate's value on logged decisions."""

    IPS = "ips"
    SNIPS = "snips"
    DM = "dm"
    DR = "dr"
    SNDR = "sndr"


class CostConstraint(Model):
    """A budget on one cost posted with the rewards (`costs: {name: value}` on /v1/reward).

    The gate estimates the candidate's expected cost with its estimators and fails it when the cost's upper
    confidence bound exceeds the budget: absolute (`max`) or over the baseline on the same logs (`maxIncrease`).
    A cost missing from the logged rewards cannot be estimated: the gate refuses.
    """

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel("has(self.max) != has(self.maxIncrease)", "set exactly one of max and maxIncrease"),
        )
    )

    cost: str = Field(min_length=1, max_length=63, description="The cost's name, as posted with the rewards.")
    max: float | None = Field(default=None, description="Budget: the most the candidate's mean cost may be.")
    max_increase: float | None = Field(
        default=None, description="Budget relative to the baseline: the most the mean cost may exceed its value by."
    )
    estimators: list[Annotated[OPEEstimator, _LAX]] | None = Field(
        default=None, min_length=1, max_length=5, description="Estimators for this cost; default the gate's."
    )
    confidence: float | None = Field(
        default=None, ge=0.5, le=0.9999, description="Confidence of the upper bound; default the gate's."
    )

    @pydantic.model_validator(mode="after")
    def _one_budget(self) -> CostConstraint:
        if (self.max is None) == (self.max_increase is None):
            raise ValueError(f"constraint on cost {self.cost!r}: set exactly one of max and maxIncrease")
        return self


class TrajectoryEstimator(enum.StrEnum):
    """An off-policy estimator of the candidate's discounted return on logged episodes (docs/ope.md)."""

    PDIS = "pdis"
    WPDIS = "wpdis"
    DR = "dr"
    FQE = "fqe"


class TrajectoryEvaluation(Model):
    """Judge the candidate on logged episodes (`context.episode_id`/`step` on /v1/act) instead of single decisions.

    The Job runs `policy-server ope --trajectories`: PDIS, weighted PDIS, per-decision doubly robust and fitted-Q
    evaluation with bootstrap bounds by trajectory, for the reward and every constraint's cost. It refuses on
    unsupported actions (`supportFloor`, `maxUnsupportedMass`), on too few effective trajectories, and when the
    estimators disagree beyond `agreementTolerance`.
    """

    gamma: float = Field(ge=0.0, le=1.0, description="Discount of the return (1: the undiscounted episode return).")
    estimators: list[Annotated[TrajectoryEstimator, _LAX]] = Field(
        default_factory=lambda: list(TrajectoryEstimator), min_length=1, max_length=4,
        description="Estimators of the discounted return; each must pass, and they must agree.",
    )
    agreement_tolerance: float = Field(
        default=0.2, ge=0.0,
        description="Refuse when max - min of the estimates exceeds this times the largest |estimate| (relative); "
        "a large value (e.g. 1e9) turns the check off.",
    )
    min_effective_trajectories: float = Field(
        default=30.0, ge=1.0, description="Refuse below this Kish effective number of trajectories."
    )


GROUP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}$"  # policy_server.groups.NAME_PATTERN
GROUP_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$"  # policy_server.groups.KEY_PATTERN
MAX_FAIRNESS_GROUPS = 32


GROUPS_DISTINCT = "groups must be distinct and must not list 'other' (it holds every unlisted value)"
_GROUPS_RULE = "!self.groups.exists(g, g == 'other') && self.groups.all(g, self.groups.filter(x, x == g).size() == 1)"


def _distinct_groups(groups: list[str] | None) -> list[str] | None:
    if groups is not None and ("other" in groups or len(set(groups)) != len(groups)):
        raise ValueError(GROUPS_DISTINCT)
    return groups


class FairnessSpec(Model):
    """Fairness groups of the live servers: each decision's group is the request-context value `groupKey`.

    Every variant's server gets `--group-key`/`--groups`: it exports decisions, actions, rewards and costs by
    group (`policy_group_*`, docs/metrics.md) for the `group-disparity` guardrail. The list bounds label
    cardinality: values not listed (or missing) count as `other`.
    """

    model_config = ConfigDict(json_schema_extra=_validations(_cel(_GROUPS_RULE, GROUPS_DISTINCT, ".groups")))

    group_key: str = Field(pattern=GROUP_KEY_PATTERN, description="Request-context key holding the group.")
    groups: Annotated[list[Annotated[str, Field(pattern=GROUP_NAME_PATTERN, max_length=40)]], pydantic.AfterValidator(
        _distinct_groups)] = Field(
        min_length=1, max_length=MAX_FAIRNESS_GROUPS,
        description="The groups worth a label of their own (at most 32); other values fold into `other`.",
    )


class FairnessCriterion(Model):
    """The offline gate's fairness criterion: the candidate's reward (or cost, or action rate) may not differ
    between groups by more than `max` (docs/ope.md#fairness).

    Each group's value is estimated on its own logged decisions with a confidence interval; the disparity is
    judged on its upper bound (largest upper bound minus smallest lower bound, or their ratio). A group whose
    effective sample size is below `minGroupEss` refuses the candidate: too little support never passes.
    """

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel("self.metric != 'cost' || has(self.cost)", "metric cost needs cost (the cost's name)"),
            _cel("self.metric != 'action-rate' || has(self.action)", "metric action-rate needs action (its index)"),
            _cel(f"!has(self.groups) || ({_GROUPS_RULE})", GROUPS_DISTINCT, ".groups"),
        )
    )

    group_key: str = Field(pattern=GROUP_KEY_PATTERN, description="Request-context key holding the group.")
    groups: Annotated[list[Annotated[str, Field(pattern=GROUP_NAME_PATTERN, max_length=40)]], pydantic.AfterValidator(
        _distinct_groups)] | None = Field(
        default=None, min_length=1, max_length=MAX_FAIRNESS_GROUPS,
        description="Groups to judge (the rest count as `other`); default spec.fairness.groups, else the log's "
        "most frequent values.",
    )
    metric: Literal["reward", "cost", "action-rate"] = Field(default="reward", description="What is compared.")
    cost: str | None = Field(default=None, min_length=1, max_length=63, description="metric cost: the cost's name.")
    action: int | None = Field(default=None, ge=0, description="metric action-rate: the action's index.")
    mode: Literal["difference", "ratio"] = Field(default="difference", description="max - min, or max / min.")
    max: float = Field(ge=0, description="The largest disparity bound allowed.")
    min_group_ess: float = Field(
        default=30.0, ge=1.0, description="Refuse when a group's effective sample size is below this."
    )
    estimator: Annotated[OPEEstimator, _LAX] = Field(
        default=OPEEstimator.SNIPS, description="Estimator of each group's reward or cost."
    )

    @pydantic.model_validator(mode="after")
    def _needs(self) -> FairnessCriterion:
        if self.metric == "cost" and self.cost is None:
            raise ValueError("metric cost needs cost (the cost's name)")
        if self.metric == "action-rate" and self.action is None:
            raise ValueError("metric action-rate needs action (its index)")
        return self


class OfflineEvaluationSpec(Model):
    """Off-policy evaluation of the candidate on logged decisions, before it gets any traffic.

    The operator runs `policy-server ope` as a Job; every listed estimator must pass the gate
    (its lower confidence bound clears the required level) or the rollout fails with the reason.
    """

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!(has(self.minLowerBoundRatio) && has(self.minLowerBoundDelta))",
                "set at most one of minLowerBoundRatio and minLowerBoundDelta",
            ),
            _cel(
                "!has(self.rewardRange) || self.rewardRange[0] < self.rewardRange[1]",
                "rewardRange must be [lo, hi] with lo < hi",
            ),
            _cel(
                "!(has(self.trajectory) && has(self.fairness))",
                "offlineEvaluation.fairness judges single decisions: remove it or trajectory",
            ),
        )
    )

    dataset: str = Field(min_length=1, description="Decision log URL (the policy server's Parquet log).")
    estimators: list[Annotated[OPEEstimator, _LAX]] = Field(
        default_factory=lambda: [OPEEstimator.SNIPS, OPEEstimator.DR], min_length=1, max_length=5
    )
    baseline: Literal["fallback", "logged"] = Field(
        default="fallback",
        description="Compare with the fallback policy evaluated on the same logs, or with the logged rewards.",
    )
    min_lower_bound_ratio: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="Required lower bound as a fraction of the baseline's value (e.g. 0.98); default 1.",
    )
    min_lower_bound_delta: float | None = Field(
        default=None, description="Required lower bound as the baseline's value plus this (may be negative)."
    )
    confidence: float = Field(default=0.95, ge=0.5, le=0.9999, description="Confidence of the lower bound.")
    bound: Literal["bernstein", "student_t", "bootstrap", "bootstrap_t"] = Field(
        default="bernstein",
        description="Lower bound: bernstein holds for any data within the reward range (loose); student_t, bootstrap "
        "and bootstrap_t are approximate and undercover with heavy importance weights (docs/ope.md).",
    )
    reward_range: list[float] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="[lo, hi]: a priori range of one reward, for the Bernstein bound; default the logged min and max.",
    )
    min_ess: float = Field(default=100.0, ge=1.0, description="Refuse below this effective sample size.")
    max_unsupported_mass: float = Field(default=0.01, ge=0.0, le=1.0)
    support_floor: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Actions logged with probability below this x 1/K count as unsupported (0: only never-taken ones).",
    )
    weight_band: float = Field(
        default=0.1,
        ge=0.0,
        le=0.99,
        description="Refuse when the mean importance weight is clearly outside 1 +- this (0 turns the check off).",
    )
    constraints: list[CostConstraint] = Field(
        default_factory=list, max_length=8,
        description="Budgets on logged costs: each is a criterion of the gate beside the reward (docs/ope.md).",
    )
    trajectory: TrajectoryEvaluation | None = Field(
        default=None,
        description="Evaluate logged episodes with trajectory estimators; estimators, bound, rewardRange, minEss and "
        "weightBand above are then unused (docs/offline-gate-and-training.md).",
    )
    fairness: FairnessCriterion | None = Field(
        default=None, description="Refuse or fail a candidate whose value differs too much between groups."
    )
    job: JobTemplate = Field(default_factory=JobTemplate)

    @pydantic.model_validator(mode="after")
    def _one_margin(self) -> OfflineEvaluationSpec:
        if self.trajectory is not None and self.fairness is not None:
            raise ValueError("offlineEvaluation.fairness judges single decisions: remove it or trajectory")
        if self.trajectory is not None and any(c.estimators for c in self.constraints):
            raise ValueError("with offlineEvaluation.trajectory, constraints use trajectory.estimators: "
                             "remove constraints[].estimators")
        if self.min_lower_bound_ratio is not None and self.min_lower_bound_delta is not None:
            raise ValueError("set at most one of minLowerBoundRatio and minLowerBoundDelta")
        if self.reward_range is not None and not self.reward_range[0] < self.reward_range[1]:
            raise ValueError(f"rewardRange must be [lo, hi] with lo < hi, got {self.reward_range}")
        return self


CRON_PATTERN = r"^\S+( \S+){4}$"


def _check_cron(text: str) -> str:
    from croniter import croniter

    if not croniter.is_valid(text) or len(text.split()) != 5:
        raise ValueError(f"invalid schedule {text!r}: use a 5-field cron expression, e.g. '0 3 * * *'")
    return text


class TrainingCostBudget(Model):
    """A cost budget `constrained-cql` trains within (`policy-server train --cost NAME --cost-budget MAX`)."""

    cost: str = Field(min_length=1, max_length=63, description="The cost's name, as posted with the rewards.")
    max: float = Field(ge=0, description="Expected discounted cost per episode (discount spec.training.gamma).")


class TrainingSpec(JobTemplate):
    """Retraining as GPU Jobs: on a cron schedule and on demand (the `policy.rollouts.io/train` annotation)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "(self.algorithm == 'constrained-cql' || has(self.command)) || "
                "((!has(self.workers) || self.workers == 1) && "
                "(!has(self.costBudgets) || size(self.costBudgets) == 0))",
                "workers > 1 and costBudgets need algorithm constrained-cql",
            ),
        )
    )

    dataset: str = Field(min_length=1, description="Decision log URL to train on.")
    output: str = Field(min_length=1, description="Base URL of artifacts; each Job writes {output}/{version}.")
    algorithm: Literal["reward-model", "discrete-cql", "discrete-bc", "constrained-cql"] = Field(
        default="reward-model",
        description="constrained-cql: offline RL on trajectories within costBudgets (checkpoints, resume, workers).",
    )
    steps: int = Field(default=2000, ge=1, le=10_000_000, description="Gradient steps.")
    command: list[str] | None = Field(default=None, description="Replace `policy-server train ...` entirely.")
    args: list[str] = Field(default_factory=list, description="Extra arguments for the training command.")
    gpus: int = Field(
        default=0, ge=0, le=16,
        description="nvidia.com/gpu limit per worker; > 0 trains on CUDA with one torchrun process per GPU.",
    )
    workers: int = Field(
        default=1, ge=1, le=64,
        description="constrained-cql: > 1 runs an Indexed Job of this many pods (torchrun, data-parallel) and a "
        "headless Service for their rendezvous.",
    )
    checkpoint_every: int = Field(
        default=500, ge=0, le=10_000_000,
        description="constrained-cql: checkpoint every N steps under {output}/{version}/checkpoints (0: never); "
        "a restarted pod resumes from the newest.",
    )
    gamma: float = Field(default=0.99, ge=0, le=1, description="constrained-cql: discount of returns and budgets.")
    cost_budgets: list[TrainingCostBudget] = Field(
        default_factory=list, max_length=8, description="constrained-cql: cost budgets the policy is trained within."
    )

    @pydantic.model_validator(mode="after")
    def _constrained_only(self) -> TrainingSpec:
        if self.algorithm != "constrained-cql" and self.command is None and (self.workers > 1 or self.cost_budgets):
            raise ValueError("workers > 1 and costBudgets need algorithm constrained-cql")
        return self
    schedule: Annotated[str, pydantic.AfterValidator(_check_cron)] | None = Field(
        default=None, json_schema_extra={"pattern": CRON_PATTERN}, description="Cron schedule (UTC)."
    )
    auto_rollout: bool = Field(default=False, description="Roll out each trained version as the next candidate.")
    history_limit: int = Field(default=10, ge=1, le=100, description="Training Jobs kept in status.")


class DecisionLogSpec(Model):
    """Where the rollout's policy servers and router write their decision logs (Parquet, docs/decision-log.md)."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^\S+$",
        description=(
            "Directory or fsspec URL (s3://bucket/prefix, gs://..., or a path on a mounted volume). Each variant "
            "writes under <url>/<variant> (stable, candidate) and the router under <url>/router; replicas of one "
            "variant share a directory (segment names carry a writer id). Storage credentials: each server uses its "
            "policy's env, the router the fallback's."
        ),
    )


class RewardKeySecretRef(Model):
    """A Secret of the rollout's namespace holding the reward key (instead of the one the operator makes).

    The Secret must carry the label ``policy.rollouts.io/reward-key: "true"``: whoever labels it
    consents to its use as a reward key, so a rollout's author cannot have any Secret of the
    namespace put into pods running an image of their choice.
    """

    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN, description="The Secret's name.")
    key: str = Field(
        default="key", min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
        description="The data key holding the comma-separated reward key(s).",
    )


class RewardFunction(enum.StrEnum):
    """How several rewards of one decision become one (`policy-server join --reward-function`)."""

    SUM = "sum"
    FIRST = "first"
    LAST = "last"
    MEAN = "mean"
    MAX = "max"


REWARD_WINDOW_ZERO = "rewards.window must be longer than 0, e.g. '1h' (leave it out for an unbounded window)"
REWARD_DEFAULT_AND_EXCLUDE = "set rewards.default or rewards.excludeUnrewarded: true, not both"
REWARD_KEEP_WITHOUT_DEFAULT = (
    "rewards.excludeUnrewarded: false needs rewards.default, the reward a decision without one gets"
)


class RewardsSpec(Model):
    """How the offline-evaluation and training Jobs join rewards to decisions (`policy-server join`).

    A reward is an observation that arrives after its decision, at any replica; the Jobs pair them by
    request id. A reward later than `window` after its decision is counted as late and not joined;
    several rewards of one decision become one through `function`; a decision without a reward gets
    `default`, or is left out of the dataset (`excludeUnrewarded`, the default).
    """

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel("!has(self.window) || self.window.matches('[1-9]')", REWARD_WINDOW_ZERO, ".window"),
            _cel("!(has(self.default) && has(self.excludeUnrewarded) && self.excludeUnrewarded)",
                 REWARD_DEFAULT_AND_EXCLUDE),
            _cel("!has(self.excludeUnrewarded) || self.excludeUnrewarded || has(self.default)",
                 REWARD_KEEP_WITHOUT_DEFAULT),
        )
    )

    window: Duration | None = Field(
        default=None, description="Longest a reward may follow its decision and still be joined (e.g. '1h'); "
        "unset: no limit.",
    )
    function: Annotated[RewardFunction, _LAX] = Field(
        default=RewardFunction.FIRST, description="sum, first, last, mean or max of several rewards of one decision."
    )
    default: float | None = Field(default=None, description="The reward of a decision that got none in its window.")
    exclude_unrewarded: bool | None = Field(
        default=None, description="Leave decisions without a reward out of the dataset; the default unless "
        "`default` is set.",
    )

    @pydantic.field_validator("window")
    @classmethod
    def _window_positive(cls, window: str | None) -> str | None:
        if window is not None and parse_duration(window) <= timedelta(0):
            raise ValueError(REWARD_WINDOW_ZERO)
        return window

    @pydantic.model_validator(mode="after")
    def _default_or_exclude(self) -> RewardsSpec:
        if self.default is not None and self.exclude_unrewarded:
            raise ValueError(REWARD_DEFAULT_AND_EXCLUDE)
        if self.exclude_unrewarded is False and self.default is None:
            raise ValueError(REWARD_KEEP_WITHOUT_DEFAULT)
        return self

    @property
    def excludes_unrewarded(self) -> bool:
        """Whether decisions without a reward are dropped (no default reward given)."""
        return self.default is None


STEPS_GO_DOWN = (
    "setWeight goes down from one step to a later one: order the steps by weight (a rollback is the operator's "
    "job, not a step), or set spec.allowWeightDecrease: true to step down on purpose"
)
NO_ANALYSED_LIVE_STEP = (
    "no step gives the candidate live traffic under analysis, so it would be promoted without one measurement: "
    "add a setWeight step above 0 and a guardrail (spec.analysis.guardrails) or the sequential judge, or set "
    "spec.allowPromotionWithoutAnalysis: true"
)


# Validation context for a rollout stored before the promotion rules (STEPS_GO_DOWN,
# NO_ANALYSED_LIVE_STEP) existed and already moving traffic: read it without them, so the operator
# can finish or roll it back instead of stranding its traffic (controller.Controller.process).
WITHOUT_PROMOTION_RULES: Final = {"promotion_rules": False}


def weights_go_down(steps: list[Step]) -> bool:
    """Whether a later setWeight is lower than an earlier one."""
    weights = [s.set_weight for s in steps if s.set_weight is not None]
    return any(later < earlier for earlier, later in itertools.pairwise(weights))


def has_analysed_live_step(steps: list[Step], analysis: AnalysisSpec) -> bool:
    """Whether promotion needs at least one passing analysis at a weight above 0.

    A setWeight step above 0 ends only once the analysis passed there (engine.progress); shadow,
    pauses and approvals measure nothing that gates promotion, and with no guardrails and the
    threshold judge there is nothing to measure.
    """
    live = any(s.set_weight is not None and s.set_weight > 0 for s in steps)
    measured = bool(analysis.guardrails) or analysis.judge.kind is not JudgeKind.THRESHOLD
    return live and measured


class ArtifactVerification(Model):
    """Artifacts must be signed by one of these Ed25519 keys (`policy-server keygen` / `sign`).

    Every policy server of the rollout (candidate and fallback) checks its artifact's signature on
    the exact manifest bytes it parses and refuses to start, with one line, on a missing, foreign or
    broken signature: a tampered bucket never serves. Public keys are not secrets: they live in the
    spec, so GitOps reviews and audits them.
    """

    trusted_keys: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$")]] = Field(
        min_length=1, max_length=8, description="Base64 of each trusted key's 32 raw public-key bytes."
    )


class EnvelopeBudget(Model):
    """An entity's cumulative weighted actions within ``window`` may not exceed ``limit``."""

    limit: float = Field(ge=0, description="Most weighted actions an entity may receive within the window.")
    window: Duration = Field(default="24h", description="The window the spend is summed over, e.g. 24h.")
    weights: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None,
        max_length=1024,
        description="Weight of each discrete action (one per action). Unset: the sum of |a| (continuous actions).",
    )


class Envelope(Model):
    """Actions the RL variants may serve without a person; any other is replaced by the fallback's (a proposal).

    Widen it here, through GitOps: the servers roll to the new envelope (docs/policy-server.md#action-envelope).
    """

    actions: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, min_length=1, max_length=1024, description="Allowed action indices (discrete actions)."
    )
    low: list[float] | None = Field(
        default=None, min_length=1, max_length=64, description="Lower bound per action dimension (continuous)."
    )
    high: list[float] | None = Field(
        default=None, min_length=1, max_length=64, description="Upper bound per action dimension (continuous)."
    )
    budget: EnvelopeBudget | None = Field(default=None, description="A per-entity budget of weighted actions.")

    @pydantic.model_validator(mode="after")
    def _not_empty(self) -> Envelope:
        if self.actions is None and self.low is None and self.high is None and self.budget is None:
            raise ValueError("envelope is empty; set actions (discrete), low/high (continuous) and/or budget")
        return self


class PolicyRolloutSpec(Model):
    """What to roll out, what to fall back to, and how: traffic, steps, guardrails, gates, training."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "(has(self.allowWeightDecrease) && self.allowWeightDecrease) || "
                "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()",
                STEPS_GO_DOWN,
                ".steps",
            ),
            _cel(
                "(has(self.allowPromotionWithoutAnalysis) && self.allowPromotionWithoutAnalysis) || "
                "(self.steps.exists(s, has(s.setWeight) && s.setWeight > 0) && has(self.analysis) && "
                "((has(self.analysis.guardrails) && size(self.analysis.guardrails) > 0) || "
                "(has(self.analysis.judge) && has(self.analysis.judge.kind) && "
                "self.analysis.judge.kind != 'threshold')))",
                NO_ANALYSED_LIVE_STEP,
                ".steps",
            ),
        )
    )

    policy: PolicySpec = Field(description="The candidate policy.")
    fallback: FallbackSpec = Field(description="The trusted policy that serves when the candidate does not.")
    traffic: TrafficSpec = Field(default_factory=TrafficSpec)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    allow_weight_decrease: bool = Field(
        default=False, description="Allow a setWeight lower than an earlier one (a planned step down)."
    )
    allow_promotion_without_analysis: bool = Field(
        default=False,
        description="Allow promotion although no setWeight step above 0 is analysed (no guardrails, or no live "
        "step): for a trusted re-deploy only.",
    )
    # After analysis and the allow* fields: the steps' validator reads them.
    steps: list[Step] = Field(min_length=1, max_length=64)
    progress_deadline: Duration = Field(
        default="30m", description="Longest a step may run without passing before the rollout rolls back."
    )
    offline_evaluation: OfflineEvaluationSpec | None = Field(
        default=None, description="Off-policy evaluation gate run as a Job before any traffic."
    )
    training: TrainingSpec | None = Field(default=None, description="Retraining Jobs (scheduled and on demand).")
    notifications: list[NotificationSpec] = Field(
        default_factory=list, max_length=16, description="Webhooks told about phase changes, rollbacks, approvals."
    )
    artifact_verification: ArtifactVerification | None = Field(
        default=None, description="Serve only artifacts signed by a trusted key (docs/security.md)."
    )
    decision_log: DecisionLogSpec | None = Field(
        default=None,
        description=(
            "Log every decision and reward of this rollout's servers and router, for off-policy evaluation and "
            "retraining. Unset: the pods log nothing."
        ),
    )
    rewards: RewardsSpec | None = Field(
        default=None,
        description="How the offline-evaluation and training Jobs join rewards to decisions (reward window, "
        "reward function, default reward). Unset: no window, the first reward, unrewarded decisions left out.",
    )
    require_lineage: list[Annotated[LineagePart, _LAX]] = Field(
        default_factory=list, max_length=5,
        description="Lineage parts a candidate must have (dataset, code, hyperparameters, environment, opeReport); "
        "one without them fails before any traffic.",
    )
    envelope: Envelope | None = Field(
        default=None,
        description="Serve only actions inside this envelope on the RL variants; others are replaced by the "
        "fallback's action and recorded as proposals (kubectl policyrollout proposals).",
    )
    fairness: FairnessSpec | None = Field(
        default=None,
        description="Fairness groups: every variant's server exports its metrics by group (group-disparity guardrail).",
    )
    reward_key_secret: RewardKeySecretRef | None = Field(
        default=None,
        description="The Secret holding the key that signs request ids (POLICY_SERVER_REWARD_KEY, docs/security.md). "
        "Unset: the operator makes <rollout>-reward-key once and never overwrites it.",
    )

    @pydantic.field_validator("steps")
    @classmethod
    def _steps_promote_on_evidence(cls, steps: list[Step], info: pydantic.ValidationInfo) -> list[Step]:
        if (info.context or {}).get("promotion_rules", True) is False:
            return steps
        if not info.data.get("allow_weight_decrease", True) and weights_go_down(steps):
            raise ValueError(STEPS_GO_DOWN)
        analysis = info.data.get("analysis")  # absent when it failed validation itself: that error is reported
        if (not info.data.get("allow_promotion_without_analysis", True) and analysis is not None
                and not has_analysed_live_step(steps, analysis)):
            raise ValueError(NO_ANALYSED_LIVE_STEP)
        return steps


# ------------------------------------------------------------------------- status


class StatusModel(Model):
    """Base of what the operator writes: read back as written, lax, so a value the engine computed
    (an unbounded confidence bound) never makes its own status unreadable. Manifests stay strict."""

    model_config = ConfigDict(strict=False, allow_inf_nan=True)


class Phase(enum.StrEnum):
    """Where a rollout is; Promoted, RolledBack, Aborted and Failed are terminal."""

    PENDING = "Pending"
    OFFLINE_EVALUATION = "OfflineEvaluation"
    SHADOW = "Shadow"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    AWAITING_APPROVAL = "AwaitingApproval"
    PROMOTED = "Promoted"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED}


class Verdict(enum.StrEnum):
    """A measurement judged against its guardrail's condition; Inconclusive when there is no number."""

    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


class GuardrailStatus(StatusModel):
    """A guardrail's latest measurement and verdict, and its runs of consecutive failures and inconclusives."""

    name: str
    value: float | None = None
    verdict: Annotated[Verdict, _LAX] | None = None
    message: str | None = None
    consecutive_failures: int = 0
    consecutive_inconclusive: int = 0
    measured_at: str | None = None


class JudgeStatus(StatusModel):
    """A judge's running state, persisted so an operator restart replays the same decision.

    Sums are over the intervals analysed so far (deltas of the Prometheus counters), so the
    statistic depends only on status and the next measurement, never on wall time.
    """

    model_config = ConfigDict(extra="ignore")

    kind: str
    intervals: int = 0
    last_raw: dict[str, float] = Field(default_factory=dict, description="Latest counter values read, by series.")
    candidate_sum: float = 0.0
    candidate_count: float = 0.0
    stable_sum: float = 0.0
    stable_count: float = 0.0
    weight_sum: float = Field(default=0.0, description="Sum of weights w = 1/(1/n_c + 1/n_s), closed batches.")
    weighted_diff_sum: float = 0.0
    weighted_diff_sq_sum: float = 0.0
    batch_intervals: int = Field(default=1, description="Intervals per batch mean, fixed at the first reading.")
    batches: int = Field(default=0, description="Closed batches in the sums above (the test's sample size).")
    open_intervals: int = Field(default=0, description="Intervals in the batch still open.")
    open_weight: float = Field(default=0.0, description="Sum of w over the open batch's intervals.")
    open_weighted_diff: float = Field(default=0.0, description="Sum of w d over the open batch's intervals.")
    mixture_scale: float | None = Field(
        default=None, description="Known sigma: tau, the normal mixture's standard deviation; fixed once chosen."
    )
    mixture_precision: float | None = Field(
        default=None, description="Unknown sigma: rho, the t-mixture's prior precision of effect/sigma; fixed once."
    )
    estimate: float | None = Field(default=None, description="Candidate minus stable mean, better-is-positive.")
    lower: float | None = None
    upper: float | None = None
    margin: float | None = None
    decision: str | None = None
    consecutive_inconclusive: int = 0
    message: str | None = None


class Condition(StatusModel):
    """A kstatus-compatible condition (Ready / Progressing / Degraded)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None


class HistoryEntry(StatusModel):
    """A phase transition: when, into which phase, at which step and weight, and why."""

    time: str
    phase: Annotated[Phase, _LAX]
    step: int | None = None
    weight: int | None = None
    reason: str
    message: str = ""


class Revision(StatusModel):
    """A policy that was promoted: what `undo` can roll out again, where it came from and the gate it passed."""

    version: str
    policy: PolicySpec
    promoted_at: str
    lineage: Lineage | None = Field(default=None, description="The artifact's lineage (spec or training Job).")
    offline_evaluation: OfflineEvaluationStatus | None = Field(
        default=None, description="The offline gate's result for this version, if it ran."
    )


class EstimateStatus(StatusModel):
    """One estimator's result in the offline evaluation."""

    estimator: str
    value: float | None = None
    lower_bound: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    verdict: str | None = None


class ConstraintStatus(StatusModel):
    """One estimator's verdict on one cost budget of the offline gate."""

    cost: str
    estimator: str | None = None
    value: float | None = None
    upper_bound: float | None = None
    budget: float | None = None
    baseline_value: float | None = None
    verdict: str | None = None


class FairnessGroupStatus(StatusModel):
    """One group's estimate in the offline gate's fairness criterion."""

    group: str
    n: int | None = None
    ess: float | None = None
    value: float | None = None
    lower: float | None = None
    upper: float | None = None


class FairnessStatus(StatusModel):
    """The offline gate's fairness criterion, as judged."""

    group_key: str
    metric: str | None = None
    mode: str | None = None
    disparity: float | None = None
    bound: float | None = Field(default=None, description="Upper confidence bound of the disparity.")
    max: float | None = None
    verdict: str | None = None
    groups: list[FairnessGroupStatus] = Field(default_factory=list)


class OfflineEvaluationStatus(StatusModel):
    """The offline gate of the current candidate: its Job and, once done, what it found."""

    job_id: str
    candidate_version: str
    phase: Literal["Running", "Passed", "Failed", "Refused", "Error"] = "Running"
    started_at: str | None = None
    completed_at: str | None = None
    baseline: str | None = None
    baseline_value: float | None = None
    required: float | None = None
    estimates: list[EstimateStatus] = Field(default_factory=list)
    constraints: list[ConstraintStatus] = Field(default_factory=list, description="Cost budgets, as judged.")
    fairness: FairnessStatus | None = Field(default=None, description="The fairness criterion, as judged.")
    ess: float | None = None
    n: int | None = None
    unsupported_mass: float | None = None
    mean_weight: float | None = Field(default=None, description="Mean importance weight (1 under full support).")
    bound: str | None = Field(default=None, description="The lower bound the verdict used.")
    message: str | None = None


class TrainingJobStatus(StatusModel):
    """A training Job: what triggered it, its phase and, once it succeeded, the version it produced."""

    job_id: str
    trigger: str = Field(description="manual/<id> or schedule/<slot time>.")
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    created_at: str | None = None
    completed_at: str | None = None
    artifact: str | None = None
    version: str | None = None
    estimate: float | None = None
    baseline_value: float | None = None
    verdict: str | None = None
    message: str | None = None
    lineage: Lineage | None = Field(default=None, description="The trained artifact's lineage, as the Job reported.")


class PolicyRolloutStatus(StatusModel):
    """What the operator observed and decided: all it needs to resume where it was after a restart."""

    model_config = ConfigDict(extra="ignore")  # tolerate fields kopf or older versions wrote

    phase: Annotated[Phase, _LAX] = Phase.PENDING
    current_step_index: int = 0
    canary_weight: int = 0
    shadow: bool = False
    stable_version: str | None = None
    candidate_version: str | None = None
    stable_policy: PolicySpec | None = Field(
        default=None, description="What the stable variant runs: the fallback until a candidate is promoted."
    )
    started_at: str | None = None
    step_started_at: str | None = None
    live_since: str | None = None
    last_analysis_at: str | None = None
    guardrails: list[GuardrailStatus] = Field(default_factory=list)
    judge: JudgeStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)
    revisions: list[Revision] = Field(
        default_factory=list, max_length=REVISION_LIMIT, description="Promoted policies, oldest first."
    )
    observed_generation: int | None = None
    last_action_id: str | None = None
    message: str | None = None
    offline_evaluation: OfflineEvaluationStatus | None = None
    training_jobs: list[TrainingJobStatus] = Field(default_factory=list)
    last_train_id: str | None = None
    last_scheduled_at: str | None = Field(default=None, description="The latest training schedule slot handled.")


class ObjectMeta(BaseModel):
    """The object metadata the operator reads; other metadata fields are kept as they are."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=253, pattern=OBJECT_NAME_PATTERN)
    namespace: str = "default"
    generation: int | None = None
    uid: str | None = None
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class PolicyRollout(Model):
    """A whole PolicyRollout object, as read from the API or a manifest."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["policy.rollouts.io/v1alpha1"] = API_VERSION
    kind: Literal["PolicyRollout"] = KIND
    metadata: ObjectMeta
    spec: PolicyRolloutSpec
    status: PolicyRolloutStatus = Field(default_factory=PolicyRolloutStatus)
