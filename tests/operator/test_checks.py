"""Whole-manifest checks: what the schema cannot say, said before anything starts, with how to fix it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from rollout_operator import api, checks
from rollout_operator.cli import main as cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _manifest(name: str = "pricing-canary.yaml") -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())  # type: ignore[no-any-return]


def _rollout(manifest: dict[str, Any]) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(manifest)


ROLLOUT_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*.yaml") if _manifest(p.name).get("kind") == api.KIND)


def test_the_examples_are_found() -> None:
    assert len(ROLLOUT_EXAMPLES) >= 4


@pytest.mark.parametrize("example", ROLLOUT_EXAMPLES)
def test_every_example_passes(example: str) -> None:
    assert checks.spec_problems(_rollout(_manifest(example))) == []


def test_an_unknown_template_is_named_with_the_closest_one_and_the_library() -> None:
    manifest = _manifest()
    manifest["spec"]["analysis"]["guardrails"] = [{"name": "reward", "template": "reward-ratoi", "condition": "> 0.9"}]
    [problem] = checks.spec_problems(_rollout(manifest))
    assert "spec.analysis.guardrails[0] (reward)" in problem
    assert "unknown template 'reward-ratoi' (did you mean 'reward-ratio'?)" in problem
    assert "error-rate" in problem and "docs/guardrails.md" in problem


def test_shadow_guardrails_are_checked_like_the_live_ones() -> None:
    manifest = _manifest()
    manifest["spec"]["analysis"]["shadowGuardrails"] = [
        {"name": "agree", "template": "shadow-agreemnt", "condition": ">= 0.9"}]
    [problem] = checks.spec_problems(_rollout(manifest))
    assert "spec.analysis.shadowGuardrails[0] (agree)" in problem
    assert "did you mean 'shadow-agreement'?" in problem


def test_template_parameters_are_checked() -> None:
    manifest = _manifest()
    manifest["spec"]["analysis"]["guardrails"] = [
        {"name": "costs", "template": "constraint-violation-rate", "condition": "< 0.1", "params": {"colour": "x"}}]
    [problem] = checks.spec_problems(_rollout(manifest))
    assert "has no parameter colour" in problem


def test_a_query_with_an_unknown_placeholder_is_refused() -> None:
    manifest = _manifest()
    manifest["spec"]["analysis"]["guardrails"] = [
        {"name": "q", "query": "sum(x{rollout='{{ rolout }}'})", "condition": "< 1"}]
    [problem] = checks.spec_problems(_rollout(manifest))
    assert "rolout" in problem


def test_a_gateway_api_rollout_needs_a_gateway() -> None:
    manifest = _manifest()
    manifest["spec"]["traffic"] = {"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": []}}
    problems = checks.spec_problems(_rollout(manifest))
    assert any("parentRefs is empty" in p and "e.g. parentRefs" in p for p in problems)


def test_a_misspelt_field_gets_a_suggestion_at_any_depth() -> None:
    manifest = _manifest()
    manifest["spec"]["analysis"]["gaurdrails"] = manifest["spec"]["analysis"].pop("guardrails")
    bad_step = copy.deepcopy(manifest)
    bad_step["spec"]["steps"][1]["setWieght"] = bad_step["spec"]["steps"][1].pop("setWeight")
    for broken, field, suggestion in [(manifest, "spec.analysis.gaurdrails", "guardrails"),
                                      (bad_step, "spec.steps.1.setWieght", "setWeight")]:
        with pytest.raises(pydantic.ValidationError) as caught:
            _rollout(broken)
        text = checks.format_validation_error(caught.value)
        assert f"{field}: Extra inputs are not permitted (did you mean {suggestion!r}?)" in text


def test_local_artifacts_must_exist_and_relative_paths_say_where_they_are_read(tmp_path: Path) -> None:
    manifest = _manifest("local-pricing.yaml")
    rollout = _rollout(manifest)
    problems = checks.local_artifact_problems(rollout, cwd=tmp_path)
    assert len(problems) == 2
    assert f"read from the current directory, {tmp_path}" in problems[0]
    assert "policy-server example-model" in problems[0]
    (tmp_path / manifest["spec"]["policy"]["artifact"]).mkdir(parents=True)
    (tmp_path / manifest["spec"]["fallback"]["artifact"]).mkdir(parents=True)
    assert checks.local_artifact_problems(rollout, cwd=tmp_path) == []
    manifest["spec"]["policy"]["artifact"] = "s3://bucket/model"
    [remote] = checks.local_artifact_problems(_rollout(manifest), cwd=tmp_path)
    assert "is remote" in remote


def test_policy_rollouts_run_refuses_before_starting_anything(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest("local-pricing.yaml")
    manifest["spec"]["analysis"]["guardrails"][0] = {"name": "g", "template": "no-such-template", "condition": "< 1"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    workdir = tmp_path / "work"
    assert cli.main(["run", "-f", str(path), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "unknown template 'no-such-template'" in err and "does not exist" in err
    assert "Traceback" not in err
    assert all(line.startswith("error: ") for line in err.splitlines())
    assert not workdir.exists(), "nothing was started"


# ----------------------------------------------------------------------------- the operator's policy


def _trust(**environ: str) -> checks.TrustPolicy:
    return checks.TrustPolicy.from_env("http://prometheus.monitoring:9090", environ)


def test_a_rollouts_webhooks_must_be_the_operators_own_or_listed_by_its_admin() -> None:
    manifest = _manifest()
    manifest["spec"]["notifications"] = [{"url": "http://10.0.0.5:8080/internal"}, {"url": "https://hooks.example/a"}]
    rollout = _rollout(manifest)
    own = checks.TrustPolicy.from_env("http://prometheus.monitoring:9090", {}, webhook_urls=["https://hooks.example/a"])
    [problem] = [p for p in checks.spec_problems(rollout, own) if "notifications" in p]
    assert problem.startswith("spec.notifications[0].url 'http://10.0.0.5:8080/internal' is not allowed")
    assert "operator.allowedWebhookUrls" in problem
    listed = _trust(POLICY_ROLLOUTS_ALLOWED_WEBHOOK_URLS="http://10.0.0.5:8080/internal, https://hooks.example/a")
    assert not [p for p in checks.spec_problems(rollout, listed) if "notifications" in p]
    assert _trust().webhooks.urls == (), "by default a rollout may name no webhook of its own"


def test_by_default_the_operator_queries_only_its_own_prometheus_and_runs_no_job() -> None:
    trust = _trust()
    assert trust.prometheus.urls == ("http://prometheus.monitoring:9090",)
    assert trust.jobs.images == () and trust.jobs.service_accounts == ()


def test_the_admin_lists_more_in_the_environment() -> None:
    trust = _trust(**{checks.ENV_PROMETHEUS_URLS: "http://thanos:9090, http://prom-b:9090\n",
                      checks.ENV_JOB_IMAGES: "ghcr.io/acme/policy-server:*",
                      checks.ENV_JOB_SERVICE_ACCOUNTS: "policy-training"})
    assert trust.prometheus.urls == ("http://prometheus.monitoring:9090", "http://thanos:9090", "http://prom-b:9090")
    assert trust.jobs.images == ("ghcr.io/acme/policy-server:*",)
    assert trust.jobs.service_accounts == ("policy-training",)


def test_a_rollout_past_the_policy_has_problems_only_where_the_operator_enforces_it() -> None:
    manifest = _manifest("pricing-retrained.yaml")
    manifest["spec"]["analysis"]["prometheusUrl"] = "http://127.0.0.1:9090"
    manifest["spec"]["training"]["serviceAccountName"] = "deployer"
    rollout = _rollout(manifest)
    problems = checks.spec_problems(rollout, _trust())
    assert [p.split(" ", 1)[0] for p in problems] == [
        "spec.analysis.prometheusUrl", "spec.offlineEvaluation.job.image", "spec.training.image",
        "spec.training.serviceAccountName"]
    assert checks.spec_problems(rollout) == [], "local mode runs as its user: no policy applies"
    allowed = _trust(**{checks.ENV_PROMETHEUS_URLS: "http://127.0.0.1:9090",
                        checks.ENV_JOB_IMAGES: "ghcr.io/acme/*", checks.ENV_JOB_SERVICE_ACCOUNTS: "deployer"})
    assert checks.spec_problems(rollout, allowed) == []
