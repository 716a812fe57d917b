"""`kubectl policyrollout` against the real control plane (kube-apiserver, etcd; tests/support/cluster.py):
every verb, its patches, its output, its errors.

Objects are created as another client would (`kube_api.put`, validated by the server against the CRD)
and their status set as the operator would (`kube_api.set_status`, through the /status subresource);
the plugin runs in-process through `main()` with the admin's kubeconfig, except for `--help`, which
runs the installed console script through kubectl itself. RBAC denials come from the real RBAC
authorizer (ServiceAccounts with too few rights), a missing CRD from deleting ours (then reinstalled).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rollout_operator import api, kube
from rollout_operator.cli import plugin

from tests.support.cluster import ClusterAPI as KubeAPI
from tests.support.cluster import (
    cluster_as_kube_api,  # noqa: F401 - the real control plane
    install_crds,
    service_account_kubeconfig,
)
from tests.support.kube import policy_rollout_manifest

pytestmark = pytest.mark.integration

VERBS = ("list", "get", "status", "promote", "approve", "abort", "retry", "undo", "history", "lineage", "train",
         "report", "proposals")
GUARDRAILS = {"guardrails": [{"name": "error-rate", "query": "max(errors)", "condition": "< 0.05"}]}
CRD = ("apiextensions.k8s.io/v1", "CustomResourceDefinition", f"{api.PLURAL}.{api.GROUP}")


def run(kube_api: KubeAPI, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_as(kube_api.kubeconfig_path, capsys, *args)


def run_as(kubeconfig: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = plugin.main([*args, "--kubeconfig", str(kubeconfig), "--width", "200"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def ml(kube_api: KubeAPI) -> Iterator[str]:
    """Namespace `ml`, created if missing; the PolicyRollouts a test leaves there are deleted after it."""
    kube_api.client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}})
    try:
        yield "ml"
    finally:
        for item in kube_api.client.list(api.API_VERSION, api.KIND, "ml"):
            with contextlib.suppress(kube.NotFound):
                kube_api.client.delete(api.API_VERSION, api.KIND, item["metadata"]["name"], "ml")


def annotations(kube_api: KubeAPI, name: str = "pricing", namespace: str = "default") -> dict[str, str]:
    obj = kube_api.get("PolicyRollout", namespace, name)
    assert obj is not None
    return dict(obj["metadata"].get("annotations") or {})


def paused_status(**extra: Any) -> dict[str, Any]:
    return {
        "phase": "Paused", "currentStepIndex": 1, "canaryWeight": 30, "stableVersion": "v1", "candidateVersion": "v2",
        "startedAt": "2026-01-01T12:00:00Z", "stepStartedAt": "2026-01-01T12:01:00Z",
        "guardrails": [{"name": "error-rate", "value": 0.0123, "verdict": "Pass", "measuredAt": "2026-01-01T12:01:30Z",
                        "consecutiveFailures": 0, "consecutiveInconclusive": 0}],
        "history": [
            {"time": "2026-01-01T12:00:00Z", "phase": "Shadow", "step": 0, "weight": 0, "reason": "CandidateReady",
             "message": "step 1/3 (shadow)"},
            {"time": "2026-01-01T12:01:00Z", "phase": "Paused", "step": 1, "weight": 30, "reason": "StepCompleted",
             "message": "step 2/3 (setWeight)"},
        ],
        "message": "step 2/3 (setWeight): waiting for analysis",
        **extra,
    }


@pytest.fixture()
def rollout(kube_api: KubeAPI) -> dict[str, Any]:
    """`pricing` in `default`: steps shadow 1m, 30%, 100%, one guardrail; Paused at 30%."""
    kube_api.put("PolicyRollout", policy_rollout_manifest(analysis=GUARDRAILS))
    kube_api.set_status("PolicyRollout", "default", "pricing", paused_status())
    client = kube.Client.from_kubeconfig(kube_api.kubeconfig_path)
    try:
        body = client.get(api.API_VERSION, api.KIND, "pricing", "default")
        client.create_event(body, "StepCompleted", "step 2/3 (setWeight): weight 30%")
        client.create_event(body, "GuardrailFailing", "guardrail error-rate measured 0.07, fails < 0.05", "Warning")
    finally:
        client.close()
    return body


# --------------------------------------------------------------------------- help


def test_help_lists_every_verb_through_kubectl(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "kubectl-policyrollout"
    assert script.exists(), "pip install -e . registers the console script"
    env = {**os.environ, "PATH": f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    kubectl = shutil.which("kubectl", path=env["PATH"])
    command = [kubectl, "policyrollout", "--help"] if kubectl else [str(script), "--help"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("positional arguments:")[1]
    for verb in VERBS:
        # argparse puts a long verb on a line of its own, its help below it
        assert re.search(rf"\n    {verb}( |\n)", listed), f"{verb} missing from:\n{result.stdout}"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        plugin.main(["promote"])  # NAME missing
    assert exit_info.value.code == 2
    assert "NAME" in capsys.readouterr().err


# --------------------------------------------------------------------------- reading


def test_list_shows_phase_step_weight_versions(kube_api: KubeAPI, rollout: Any, ml: str, capsys: Any) -> None:
    kube_api.put("PolicyRollout", policy_rollout_manifest(name="ranking", namespace="ml"))
    kube_api.set_status("PolicyRollout", "ml", "ranking", {"phase": "Promoted", "stableVersion": "v2",
                                                            "currentStepIndex": 3})
    code, out, _ = run(kube_api, capsys, "list")
    assert code == 0
    row = next(line for line in out.splitlines() if "pricing" in line)
    for cell in ("Paused", "2/3", "30%", "v1", "v2", "waiting for analysis"):
        assert cell in row, row
    assert "ranking" not in out, "list stays in the context's namespace"

    code, out, _ = run(kube_api, capsys, "list", "-A")
    assert code == 0 and "NAMESPACE" in out
    ranking = next(line for line in out.splitlines() if "ranking" in line)
    assert ranking.split()[:3] == ["ml", "ranking", "Promoted"]

    code, out, _ = run(kube_api, capsys, "list", "-n", "empty")
    assert code == 0 and "No PolicyRollouts in namespace empty" in out


def test_get_prints_a_row_or_the_object(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    code, out, _ = run(kube_api, capsys, "get", "pricing")
    assert code == 0 and "pricing" in out and "Paused" in out
    code, out, _ = run(kube_api, capsys, "get", "pricing", "-o", "yaml")
    obj = yaml.safe_load(out)
    assert obj["status"]["canaryWeight"] == 30 and obj["spec"]["policy"]["version"] == "v2"


def test_status_shows_steps_weight_guardrails_and_events(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    code, out, _ = run(kube_api, capsys, "status", "pricing")
    assert code == 0
    assert "1/3 done, at step 2/3" in out
    assert "✓ 1:shadow 1m" in out and "▶ 2:30%" in out and "3:100%" in out, out
    assert "30% candidate / 70% stable" in out
    guardrail = next(line for line in out.splitlines() if "error-rate" in line and "0.0123" in line)
    assert "< 0.05" in guardrail and "Pass" in guardrail
    assert "StepCompleted" in out and "GuardrailFailing" in out and "measured 0.07" in out
    assert "Offline evaluation: not configured" in out
    assert "time in step" in out


def test_status_shows_the_offline_evaluation_verdict(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    kube_api.set_status("PolicyRollout", "default", "pricing", {"offlineEvaluation": {
        "jobId": "abc", "candidateVersion": "v2", "phase": "Passed", "required": 0.5,
        "estimates": [{"estimator": "snips", "value": 0.61, "lowerBound": 0.55, "verdict": "pass"}],
    }})
    code, out, _ = run(kube_api, capsys, "status", "pricing")
    assert code == 0
    assert "Offline evaluation: Passed; snips=0.61 (lower bound 0.55) pass; required 0.5" in out


def test_status_shows_a_breached_cost_budget(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    kube_api.set_status("PolicyRollout", "default", "pricing", {"offlineEvaluation": {
        "jobId": "abc", "candidateVersion": "v2", "phase": "Failed", "required": 0.5,
        "estimates": [{"estimator": "snips", "value": 0.74, "lowerBound": 0.7, "verdict": "pass"}],
        "constraints": [{"cost": "margin_violation", "estimator": "snips", "value": 0.27, "upperBound": 0.31,
                         "budget": 0.05, "verdict": "fail"}],
    }})
    code, out, _ = run(kube_api, capsys, "status", "pricing")
    assert code == 0
    assert "cost margin_violation snips=0.27 (upper bound 0.31, budget 0.05) fail" in " ".join(out.split())


def test_status_shows_the_fairness_criterion_by_group(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    kube_api.set_status("PolicyRollout", "default", "pricing", {"offlineEvaluation": {
        "jobId": "abc", "candidateVersion": "v2", "phase": "Failed", "required": 0.5,
        "estimates": [{"estimator": "snips", "value": 0.74, "lowerBound": 0.7, "verdict": "pass"}],
        "fairness": {"groupKey": "region", "metric": "reward", "mode": "difference", "bound": 1.09, "max": 0.3,
                     "verdict": "fail", "groups": [{"group": "b", "value": 0.02}, {"group": "a", "value": 0.98}]},
    }})
    code, out, _ = run(kube_api, capsys, "status", "pricing")
    assert code == 0
    assert "fairness reward difference by region (bound 1.09, max 0.3; b=0.02, a=0.98) fail" in " ".join(out.split())


def test_status_watch_follows_the_rollout_until_it_ends(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    def finish() -> None:
        time.sleep(1.5)
        kube_api.set_status("PolicyRollout", "default", "pricing", {
            "phase": "Promoted", "currentStepIndex": 3, "canaryWeight": 0, "stableVersion": "v2"})

    finisher = threading.Thread(target=finish)
    finisher.start()
    try:
        code, out, _ = run(kube_api, capsys, "status", "pricing", "-w", "--interval", "0.2", "--timeout", "30")
    finally:
        finisher.join()
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "pricing: Paused at step 2/3 (30%), weight 30%: step 2/3 (setWeight): waiting for analysis"
    assert lines[1].startswith("pricing: Promoted at step 3/3 (promotion), weight 0%"), "one line per change"
    assert "✓ 3:100%" in out, "then the final panel"


def test_status_watch_redraws_in_place_on_a_terminal(
    kube_api: KubeAPI, rollout: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich treats the captured stdout as a terminal: rich.live runs
    finisher = threading.Timer(1.0, lambda: kube_api.set_status("PolicyRollout", "default", "pricing", {
        "phase": "Aborted", "canaryWeight": 0, "message": "aborted by action x"}))
    finisher.start()
    try:
        code, out, _ = run(kube_api, capsys, "status", "pricing", "-w", "--interval", "0.2", "--timeout", "30")
    finally:
        finisher.cancel()
    assert code == 0
    assert "\x1b[" in out, "cursor movement and colour: a live view, not lines"
    assert out.count("PolicyRollout") >= 2, "redrawn at least once"
    assert "Aborted" in out and "aborted by action x" in out


def test_status_watch_gives_up_after_its_timeout(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    code, _, err = run(kube_api, capsys, "status", "pricing", "-w", "--interval", "0.2", "--timeout", "0.5")
    assert code == 1
    assert "pricing is still Paused after --timeout 0.5s" in err


def test_history_lists_transitions_and_revisions(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    kube_api.set_status("PolicyRollout", "default", "pricing", {"revisions": [
        {"version": "v1", "policy": {"image": "i", "artifact": "s3://p/v1.pt2", "version": "v1"},
         "promotedAt": "2025-12-01T00:00:00Z"}]})
    code, out, _ = run(kube_api, capsys, "history", "pricing")
    assert code == 0
    shadow = next(line for line in out.splitlines() if "CandidateReady" in line)
    assert "Shadow" in shadow and "0%" in shadow
    paused = next(line for line in out.splitlines() if "StepCompleted" in line)
    assert "Paused" in paused and "30%" in paused and " 2 " in paused
    assert "s3://p/v1.pt2" in out


LINEAGE = {"dataset": {"uri": "s3://logs/pricing", "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T06:00:00Z",
                       "sha256": "ab" * 32, "rows": 900},
           "code": {"image": "server:1", "commit": "0123abcd"}, "hyperparameters": {"algorithm": "reward-model"},
           "environment": {"torch": "2.13.0"}, "opeReport": {"uri": "s3://models/v2/ope.json", "verdict": "pass"}}


def test_lineage_prints_each_revisions_provenance(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    gate = {"jobId": "ope-1", "candidateVersion": "v2", "phase": "Passed"}
    kube_api.set_status("PolicyRollout", "default", "pricing", {"revisions": [
        {"version": "v1", "policy": {"image": "i", "artifact": "s3://p/v1", "version": "v1"},
         "promotedAt": "2025-12-01T00:00:00Z"},
        {"version": "v2", "policy": {"image": "i", "artifact": "s3://p/v2", "version": "v2"},
         "promotedAt": "2025-12-02T00:00:00Z", "lineage": LINEAGE, "offlineEvaluation": gate}]})
    code, out, _ = run(kube_api, capsys, "lineage", "pricing")
    assert code == 0
    row = next(line for line in out.splitlines() if "s3://logs/pricing" in line)
    assert "v2" in row and "900" in row and "0123abcd" in row and "Passed" in row
    code, out, _ = run(kube_api, capsys, "lineage", "pricing", "--revision", "2")
    assert code == 0 and yaml.safe_load(out)["lineage"] == LINEAGE  # the server kept every field
    code, out, _ = run(kube_api, capsys, "lineage", "pricing", "--revision", "2", "--json")
    assert code == 0 and json.loads(out)["offlineEvaluation"]["phase"] == "Passed"
    code, _, err = run(kube_api, capsys, "lineage", "pricing", "--revision", "3")
    assert code == 1 and err.count("\n") == 1
    assert "revision 3 is not recorded for pricing (it keeps revisions 1-2)" in err


# --------------------------------------------------------------------------- actions


@pytest.mark.parametrize(
    ("args", "verb", "says"),
    [
        (["promote"], "promote", "step 2/3 (30%) completes now; the rollout moves on to step 3/3"),
        (["promote", "--full"], "promote-full", "the remaining steps are skipped: v2 is promoted"),
        (["approve"], "approve", "the approval at step 2/3 is granted"),
        (["abort"], "abort", "everything goes back to v1"),
        (["retry"], "retry", "starts again from step 1"),
    ],
)
def test_actions_set_the_annotation_with_a_fresh_id(
    kube_api: KubeAPI, rollout: Any, capsys: Any, args: list[str], verb: str, says: str
) -> None:
    code, out, _ = run(kube_api, capsys, *args, "pricing")
    assert code == 0
    value = annotations(kube_api)[api.ANNOTATION_ACTION]
    got_verb, _, first_id = value.partition("/")
    assert got_verb == verb and first_id and "/" not in first_id
    assert f"{verb} requested for policyrollout pricing in default (id {first_id})" in out
    assert says in out
    run(kube_api, capsys, *args, "pricing")
    assert annotations(kube_api)[api.ANNOTATION_ACTION] != value, "every request gets a new id"
    assert kube_api.get("PolicyRollout", "default", "pricing")["status"]["phase"] == "Paused", "status is not touched"


def test_train_sets_the_train_annotation(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    code, out, _ = run(kube_api, capsys, "train", "pricing")
    assert code == 0
    train_id = annotations(kube_api)[api.ANNOTATION_TRAIN]
    assert f"training requested ({train_id})" in out
    assert api.ANNOTATION_ACTION not in annotations(kube_api)


def _revision(version: str) -> dict[str, Any]:
    return {"version": version, "promotedAt": "2026-01-01T12:00:00Z",
            "policy": {"image": "ghcr.io/acme/policy-server:0.1.0", "artifact": f"s3://policies/{version}.pt2",
                       "version": version, "replicas": 1, "port": 8080, "env": []}}


def test_undo_rolls_out_the_previous_revision(kube_api: KubeAPI, capsys: Any) -> None:
    manifest = policy_rollout_manifest()
    manifest["spec"]["policy"].update(version="v4", resources={"limits": {"cpu": "1"}})
    kube_api.put("PolicyRollout", manifest)
    kube_api.set_status("PolicyRollout", "default", "pricing", {
        "phase": "Promoted", "stableVersion": "v3", "revisions": [_revision("v2"), _revision("v3")]})
    # v4 was rolled out after v3 and rolled back; the stable (v3) is what undo goes back from.
    code, out, _ = run(kube_api, capsys, "undo", "pricing")
    assert code == 0
    policy = kube_api.get("PolicyRollout", "default", "pricing")["spec"]["policy"]
    # every field comes from the revision (resources is cleared); `workers`, newer than this revision, is defaulted
    assert policy == {**_revision("v2")["policy"], "workers": 1}
    assert "spec.policy of pricing is back to v2 (promoted 2026-01-01T12:00:00Z)" in out
    assert "replaces stable v3" in out

    code, _, err = run(kube_api, capsys, "undo", "pricing")
    assert code == 1 and "already v2" in err


def test_undo_after_the_first_promotion_goes_back_to_the_fallback(kube_api: KubeAPI, capsys: Any) -> None:
    kube_api.put("PolicyRollout", policy_rollout_manifest())
    kube_api.set_status("PolicyRollout", "default", "pricing", {
        "phase": "Promoted", "stableVersion": "v2", "revisions": [_revision("v2")]})
    code, out, _ = run(kube_api, capsys, "undo", "pricing")
    assert code == 0 and "back to v1 (the fallback" in out
    stored = kube_api.get("PolicyRollout", "default", "pricing")["spec"]
    assert stored["policy"]["version"] == "v1" and stored["policy"]["artifact"] == stored["fallback"]["artifact"]


def test_undo_without_a_promotion_is_refused(kube_api: KubeAPI, rollout: Any, capsys: Any) -> None:
    code, _, err = run(kube_api, capsys, "undo", "pricing")
    assert code == 1
    assert "nothing to undo: pricing has promoted no policy yet (stable is v1)" in err
    assert "kubectl policyrollout abort pricing" in err
    assert kube_api.get("PolicyRollout", "default", "pricing")["spec"]["policy"]["version"] == "v2"

    code, _, err = run(kube_api, capsys, "undo", "pricing", "--to-version", "v9")
    assert code == 1 and "version v9 is not among the previous policies of pricing (v1)" in err


# --------------------------------------------------------------------------- errors


def test_a_missing_rollout_names_the_namespace_and_the_list_command(kube_api: KubeAPI, capsys: Any) -> None:
    for args in (["status", "nope"], ["promote", "nope"], ["undo", "nope"], ["report", "nope", "--out", "x"]):
        code, out, err = run(kube_api, capsys, *args, "-n", "team-a")
        assert code == 1, args
        assert err == "error: policyrollout nope not found in namespace team-a (kubectl policyrollout list -n team-a)\n"
        assert out == ""


@contextlib.contextmanager
def _without_the_crd(kube_api: KubeAPI, timeout: float = 60.0) -> Iterator[None]:
    """The server stops serving PolicyRollouts (our CRD deleted); the CRDs are installed again after."""
    client = kube_api.client
    try:
        client.delete(*CRD)
        deadline = time.monotonic() + timeout
        while client.find(*CRD) is not None:  # deleted once its PolicyRollouts are gone
            assert time.monotonic() < deadline, f"CRD {CRD[2]} not deleted within {timeout}s"
            time.sleep(0.1)
        yield
    finally:
        install_crds(client)  # waits until Established: the next test has its PolicyRollouts again


def test_a_missing_crd_says_how_to_install_it(kube_api: KubeAPI, capsys: Any) -> None:
    with _without_the_crd(kube_api):
        for args in (["list"], ["status", "pricing"], ["abort", "pricing"]):
            code, _, err = run(kube_api, capsys, *args)
            assert code == 1
            assert err == "error: the PolicyRollout CRD is not installed: policy-rollouts crds | kubectl apply -f -\n"


def _service_account(kube_api: KubeAPI, tmp_path: Path, name: str, verbs: list[str] | None = None) -> Path:
    """A kubeconfig for ServiceAccount `name` in default, allowed `verbs` on policyrollouts there (or nothing)."""
    client, namespace = kube_api.client, "default"
    client.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}})
    kubeconfig = service_account_kubeconfig(kube_api.plane, namespace, name, tmp_path / f"{name}.kubeconfig")
    if verbs:
        rbac = "rbac.authorization.k8s.io/v1"
        client.apply({"apiVersion": rbac, "kind": "Role", "metadata": {"name": name, "namespace": namespace},
                      "rules": [{"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": verbs}]})
        client.apply({"apiVersion": rbac, "kind": "RoleBinding", "metadata": {"name": name, "namespace": namespace},
                      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                      "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
        _wait_until_allowed(kubeconfig, namespace)
    return kubeconfig


def _wait_until_allowed(kubeconfig: Path, namespace: str, timeout: float = 30.0) -> None:
    """The RBAC authorizer learns of a new RoleBinding through an informer: wait until it applies."""
    account = kube.Client.from_kubeconfig(kubeconfig)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                account.find(api.API_VERSION, api.KIND, "pricing", namespace)  # a 404 is allowed too
                return
            except kube.Forbidden:
                assert time.monotonic() < deadline, f"the RoleBinding took no effect within {timeout}s"
                time.sleep(0.1)
    finally:
        account.close()


def test_rbac_denials_name_the_verb_and_the_role(kube_api: KubeAPI, rollout: Any, tmp_path: Path,
                                                 capsys: Any) -> None:
    reader = _service_account(kube_api, tmp_path, "reader", verbs=["get"])  # may read the rollout, not patch it
    before = kube_api.get("PolicyRollout", "default", "pricing")
    code, _, err = run_as(reader, capsys, "promote", "pricing")
    assert code == 1
    assert err == ("error: forbidden: your user cannot patch policyrollouts in default; "
                   "ask for the policy-rollouts-user role\n")
    after = kube_api.get("PolicyRollout", "default", "pricing")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], "nothing was written"
    assert api.ANNOTATION_ACTION not in annotations(kube_api)

    nobody = _service_account(kube_api, tmp_path, "nobody")  # no RBAC rights at all
    code, _, err = run_as(nobody, capsys, "status", "pricing")
    assert code == 1 and "forbidden: your user cannot get policyrollouts in default" in err
    code, _, err = run_as(nobody, capsys, "list", "-A")
    assert code == 1 and "forbidden: your user cannot list policyrollouts in all namespaces" in err


def test_an_unreachable_api_says_so(tmp_path: Path, capsys: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket closes
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u", "namespace": "ml"}}],
    }))
    code = plugin.main(["list", "--kubeconfig", str(kubeconfig)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot reach the Kubernetes API at http://127.0.0.1:{port}: is the cluster up?" in err


def test_kubeconfig_errors_say_what_to_pass(kube_api: KubeAPI, tmp_path: Path, capsys: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    code = plugin.main(["list", "--kubeconfig", str(missing)])
    err = capsys.readouterr().err
    assert code == 1 and f"no kubeconfig at {missing}: pass --kubeconfig FILE or set $KUBECONFIG" in err
    code = plugin.main(["list", "--kubeconfig", str(kube_api.kubeconfig_path), "--context", "prod"])
    err = capsys.readouterr().err
    contexts = ", ".join(c["name"] for c in yaml.safe_load(kube_api.kubeconfig_path.read_text())["contexts"])
    assert code == 1 and "context 'prod' is not in" in err and f"(it has: {contexts}); pass --context NAME" in err

    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig_path))  # like kubectl, $KUBECONFIG is honoured
    kube_api.put("PolicyRollout", policy_rollout_manifest())
    assert plugin.main(["get", "pricing"]) == 0
    assert "pricing" in capsys.readouterr().out


def test_namespace_defaults_to_the_contexts(kube_api: KubeAPI, ml: str, tmp_path: Path, capsys: Any) -> None:
    config = yaml.safe_load(kube_api.kubeconfig_path.read_text())
    config["contexts"][0]["context"]["namespace"] = "ml"
    kubeconfig = tmp_path / "kubeconfig"  # a copy: the session's admin kubeconfig stays as it is
    kubeconfig.write_text(yaml.safe_dump(config))
    kube_api.put("PolicyRollout", policy_rollout_manifest(namespace="ml"))
    code, _, _ = run_as(kubeconfig, capsys, "abort", "pricing")
    assert code == 0
    assert annotations(kube_api, namespace="ml")[api.ANNOTATION_ACTION].startswith("abort/")


# --------------------------------------------------------------------------- report without Prometheus


def test_report_from_status_alone(kube_api: KubeAPI, rollout: Any, tmp_path: Path, capsys: Any) -> None:
    kube_api.set_status("PolicyRollout", "default", "pricing", {"offlineEvaluation": {
        "jobId": "abc", "candidateVersion": "v2", "phase": "Passed", "required": 0.5,
        "estimates": [{"estimator": "snips", "value": 0.61, "lowerBound": 0.55, "verdict": "pass"}],
        "fairness": {"groupKey": "region", "metric": "reward", "mode": "difference", "bound": 0.1, "max": 0.3,
                     "verdict": "pass", "groups": [{"group": "north", "n": 300, "value": 0.6}]},
    }})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, out, err = run(kube_api, capsys, "report", "pricing", "--out", str(tmp_path / "r"), "--prometheus-url", dead)
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'r' / 'timeline.png'} and ")
    png = (tmp_path / "r" / "timeline.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    html = (tmp_path / "r" / "report.html").read_text()
    assert "<td>snips</td><td>0.61</td><td>0.55</td>" in html and "Verdict:</b> Passed" in html
    assert "Fairness by group" in html and "<td>north</td><td>300</td>" in html
    assert f"series unavailable from {dead}" in html, "an unreachable Prometheus is reported, not fatal"
    assert '<td>error-rate</td><td>&lt; 0.05</td><td>0.0123</td><td class="Pass">Pass</td>' in html
    assert "GuardrailFailing" in html and "<td>2</td><td>30%</td><td>current</td>" in html


def test_status_of_a_rollout_the_operator_has_not_seen(kube_api: KubeAPI, capsys: Any) -> None:
    kube_api.put("PolicyRollout", policy_rollout_manifest())
    code, out, _ = run(kube_api, capsys, "status", "pricing")
    assert code == 0
    assert "No status yet: the operator has not reconciled this rollout" in out
    assert "▶ 1:shadow 1m" in out and "0% candidate / 100% stable" in out and "Recent events: none" in out
