"""Whole-manifest checks the CRD schema cannot express, with messages that say how to fix each problem.

A spec that cannot work as written (an unknown guardrail template, a missing template
parameter, a Gateway API rollout without a Gateway, a local artifact that is not there) is a
permanent error: retrying it in the logs helps nobody. `policy-rollouts run` refuses such a
manifest before starting anything, and the operator fails such a rollout at once, in status
and an Event, before it creates anything (`controller.Controller.process`).

The operator also holds a rollout to its `TrustPolicy` here: the Prometheus URLs, Job images
and Job ServiceAccounts its admin allows (docs/security.md). Local mode runs on the user's own
machine with the user's own rights, so it passes none.

Also here: pydantic's validation errors turned into one line per problem, with a "did you
mean" for misspelt field names (shared by local mode, the operator and the CLI).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic

from rollout_operator import api
from rollout_operator.engine import conditions, judges
from rollout_operator.guardrails import allowlist, templates, templating
from rollout_operator.resources import job_policy

__all__ = [
    "ENV_JOB_IMAGES",
    "ENV_JOB_SERVICE_ACCOUNTS",
    "ENV_PROMETHEUS_URLS",
    "ENV_WEBHOOK_URLS",
    "TrustPolicy",
    "did_you_mean",
    "format_validation_error",
    "local_artifact_problems",
    "spec_problems",
]

# The operator's policy comes from its environment (the chart sets these from its values).
ENV_PROMETHEUS_URLS = "POLICY_ROLLOUTS_ALLOWED_PROMETHEUS_URLS"
ENV_JOB_IMAGES = "POLICY_ROLLOUTS_ALLOWED_JOB_IMAGES"
ENV_JOB_SERVICE_ACCOUNTS = "POLICY_ROLLOUTS_ALLOWED_JOB_SERVICE_ACCOUNTS"
ENV_WEBHOOK_URLS = "POLICY_ROLLOUTS_ALLOWED_WEBHOOK_URLS"


@dataclasses.dataclass(frozen=True)
class TrustPolicy:
    """What a rollout's author may make the operator do, beyond what they could do themselves: nothing.

    Set by the operator's admin, never by a rollout: the Prometheus URLs guardrails may query
    (the operator's own `--prometheus-url` and any listed), and the images and ServiceAccounts
    of its Jobs (none unless listed).
    """

    prometheus: allowlist.UrlAllowList
    jobs: job_policy.JobAllowList
    # Webhooks a rollout's spec.notifications may name: the operator's own --notify-url targets and those listed.
    webhooks: allowlist.UrlAllowList = dataclasses.field(default_factory=lambda: allowlist.UrlAllowList(()))

    @classmethod
    def from_env(cls, prometheus_url: str, environ: Mapping[str, str] = os.environ,
                 webhook_urls: Iterable[str] = ()) -> TrustPolicy:
        """The operator's own Prometheus and webhooks plus $POLICY_ROLLOUTS_ALLOWED_* (comma/newline-separated)."""

        def listed(name: str) -> list[str]:
            return [item for item in re.split(r"[,\s]+", environ.get(name, "")) if item]

        return cls(
            prometheus=allowlist.UrlAllowList.of([prometheus_url, *listed(ENV_PROMETHEUS_URLS)]),
            jobs=job_policy.JobAllowList.of(listed(ENV_JOB_IMAGES), listed(ENV_JOB_SERVICE_ACCOUNTS)),
            webhooks=allowlist.UrlAllowList.of([*webhook_urls, *listed(ENV_WEBHOOK_URLS)]),
        )

    def problems(self, rollout: api.PolicyRollout) -> list[str]:
        """Every setting of `rollout` the policy refuses, one sentence each with how to fix it."""
        found = []
        url = rollout.spec.analysis.prometheus_url
        if url is not None and (problem := self.prometheus.problem(url)) is not None:
            found.append(problem)
        for index, notification in enumerate(rollout.spec.notifications):
            refused = self.webhooks.problem(notification.url, f"spec.notifications[{index}].url",
                                            allowlist.WEBHOOK_FIX)
            if refused is not None:
                found.append(refused)
        return found + self.jobs.problems(rollout)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def spec_problems(rollout: api.PolicyRollout, trust: TrustPolicy | None = None) -> list[str]:
    """Every reason `rollout` cannot work as written (or may not, under `trust`), one sentence each."""
    problems: list[str] = trust.problems(rollout) if trust is not None else []
    listed = [("guardrails", index, g) for index, g in enumerate(rollout.spec.analysis.guardrails)]
    listed += [("shadowGuardrails", index, g) for index, g in enumerate(rollout.spec.analysis.shadow_guardrails)]
    for field, index, guardrail in listed:
        where = f"spec.analysis.{field}[{index}] ({guardrail.name})"
        try:
            if guardrail.template is not None:
                if guardrail.template not in templates.TEMPLATES:
                    problems.append(
                        f"{where}: unknown template {guardrail.template!r}"
                        f"{did_you_mean(guardrail.template, templates.TEMPLATES)}; the library has "
                        f"{', '.join(sorted(templates.TEMPLATES))} (see docs/guardrails.md), or write a query"
                    )
                    continue
                templates.render_guardrail(rollout, guardrail.template, guardrail.params)
            elif guardrail.query is not None:
                templating.render(guardrail.query,
                                  templating.guardrail_variables(rollout, "candidate", guardrail.params))
        except templating.TemplateError as exc:
            problems.append(f"{where}: {exc}")
        try:
            conditions.parse_condition(guardrail.condition)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    for key, series in judges.judge_for(rollout.spec).series(rollout.spec).items():
        try:
            templates.render_series(rollout, series.template, series.variant, series.params)
        except templating.TemplateError as exc:
            problems.append(f"spec.analysis.judge ({key}): {exc}")
    traffic = rollout.spec.traffic
    if traffic.provider is api.TrafficProvider.GATEWAY_API and not traffic.gateway_api.parent_refs:
        problems.append("spec.traffic.gatewayAPI.parentRefs is empty: name the Gateway that routes this traffic, "
                        "e.g. parentRefs: [{name: public, namespace: gateway-system}]")
    return problems


def local_artifact_problems(rollout: api.PolicyRollout, cwd: Path | None = None) -> list[str]:
    """Local mode serves artifacts from this machine: each must be a path that exists."""
    base = cwd or Path.cwd()
    problems = []
    for field, spec in (("spec.policy", rollout.spec.policy), ("spec.fallback", rollout.spec.fallback)):
        artifact = spec.artifact
        if "://" in artifact and not artifact.startswith("file://"):
            problems.append(f"{field}.artifact {artifact!r} is remote: local mode serves local artifacts; copy it to "
                            "a directory and name that path")
            continue
        path = Path(artifact.removeprefix("file://"))
        if not (base / path).exists():
            relative = "" if path.is_absolute() else f" (a relative path is read from the current directory, {base})"
            problems.append(
                f"{field}.artifact {artifact!r} does not exist{relative}: write one with `policy-server "
                "example-model --out PATH`, or run `policy-rollouts demo --fast` once for the artifacts the examples "
                "name (demo-out/artifacts/...)"
            )
    return problems


# ----------------------------------------------------------------------------- validation errors


def format_validation_error(error: pydantic.ValidationError, model: type[pydantic.BaseModel] = api.PolicyRollout,
                            ) -> str:
    """'a.b: message; c: message', with a suggestion for each field that is not in the schema."""
    parts = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden" and item["loc"]:
            known = _fields_at(model, item["loc"][:-1])
            message += did_you_mean(str(item["loc"][-1]), known)
        parts.append(f"{location}: {message}")
    return "; ".join(parts)


def _fields_at(model: type[pydantic.BaseModel], path: Sequence[int | str]) -> list[str]:
    """The field names (aliases) the model accepts at `path`, following nested models, lists and optionals."""
    current: Any = model
    for part in path:
        current = _unwrap(current)
        if isinstance(part, int) or current is None:
            continue
        if not (isinstance(current, type) and issubclass(current, pydantic.BaseModel)):
            return []
        field = next((f for name, f in current.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return []
        current = field.annotation
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, pydantic.BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """X from list[X], X | None, Annotated[X, ...]; models pass through."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (list, tuple, Sequence) or origin is types.UnionType or origin is typing.Union:
            args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
            models = [a for a in args if isinstance(a, type) and issubclass(a, pydantic.BaseModel)]
            annotation = models[0] if models else (args[0] if args else None)
        else:
            return annotation
