"""Done-when of the action envelope, the GitOps half: the operator's workload builder turns spec.envelope into
the RL variants' server flags (not the fallback's), a widened spec changes the pod template (so the pods roll),
and a server started with the rebuilt flags serves the formerly proposed action."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rollout_operator import api
from rollout_operator.resources import workload

from tests.support.envelope_policy import OBS, write_preferring
from tests.support.policy_server import cli_server


def rollout(candidate: Path, fallback: Path, envelope: dict[str, Any] | None) -> api.PolicyRollout:
    spec: dict[str, Any] = {
        "policy": {"image": "server:1", "artifact": str(candidate), "version": "v2"},
        "fallback": {"image": "server:1", "artifact": str(fallback), "version": "v1"},
        "steps": [{"setWeight": 10}],
        "allowPromotionWithoutAnalysis": True,
    }
    if envelope is not None:
        spec["envelope"] = envelope
    return api.PolicyRollout.model_validate({"metadata": {"name": "pricing", "namespace": "ml"}, "spec": spec})


def server_args(obj: api.PolicyRollout, variant: str, policy: api.PolicySpec) -> list[str]:
    """The container's args, minus what a pod needs and a loopback test does not (serve, host, port)."""
    args = workload.deployment(obj, variant, policy)["spec"]["template"]["spec"]["containers"][0]["args"]
    out, skip = [], False
    for a in args[1:]:
        if skip:
            skip = False
        elif a in ("--host", "--port"):
            skip = True
        else:
            out.append(a)
    return out


def test_envelope_flags_go_to_the_rl_variants_only(tmp_path: Path) -> None:
    obj = rollout(tmp_path / "c", tmp_path / "f", {"actions": [0, 1], "budget": {"limit": 5, "weights": [0, 1]}})
    args = server_args(obj, "candidate", obj.spec.policy)
    env = args[args.index("--envelope") + 1]
    assert json.loads(env) == {"actions": [0, 1], "budget": {"limit": 5.0, "window": 86400.0, "weights": [0.0, 1.0]}}
    assert args[args.index("--envelope-fallback-model") + 1] == str(tmp_path / "f")
    # the stable variant running the fallback (before any promotion) is the known-safe rule: no envelope
    assert "--envelope" not in server_args(obj, "stable", obj.spec.fallback)
    assert "--envelope" not in server_args(rollout(tmp_path / "c", tmp_path / "f", None), "candidate", obj.spec.policy)


@pytest.mark.integration
def test_a_widened_envelope_rolls_the_pods_and_serves_the_formerly_proposed_action(tmp_path: Path) -> None:
    candidate = write_preferring(tmp_path / "cand", [0.0, 0.5, 1.0, 4.0])  # proposes 3
    fallback = write_preferring(tmp_path / "fb", [0.0, 3.0, 0.0, 0.0])
    narrow = rollout(candidate, fallback, {"actions": [0, 1, 2]})
    wide = rollout(candidate, fallback, {"actions": [0, 1, 2, 3]})  # the person's reviewed spec change
    before = workload.deployment(narrow, "candidate", narrow.spec.policy)["spec"]["template"]
    after = workload.deployment(wide, "candidate", wide.spec.policy)["spec"]["template"]
    assert before != after  # a new pod template: the Deployment rolls its pods to the new envelope

    with cli_server(*server_args(narrow, "candidate", narrow.spec.policy)) as srv:
        body = srv.client().act(OBS)
    assert body["action"] == 1 and body["shield"]["reasons"] == ["envelope"]
    with cli_server(*server_args(wide, "candidate", wide.spec.policy)) as srv:
        body = srv.client().act(OBS)
    assert body["action"] == 3 and body["shield"] == {"intervened": False, "reasons": []}
