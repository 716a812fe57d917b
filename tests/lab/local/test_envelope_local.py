"""Local mode enforces spec.envelope like a cluster: the candidate's server gets the operator's envelope flags,
and a widened envelope replaces its process (as a changed pod template rolls the pods) so the formerly
proposed action is served."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from rollout_lab.local import workloads
from rollout_operator import api
from rollout_operator.engine import types

from tests.support.envelope_policy import OBS, write_preferring

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _rollout(candidate: Path, fallback: Path, actions: list[int]) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(
        {
            "metadata": {"name": "enveloped", "namespace": "test", "generation": 1},
            "spec": {
                "policy": {"image": "local", "artifact": str(candidate), "version": "v2"},
                "fallback": {"image": "local", "artifact": str(fallback), "version": "v1"},
                "steps": [{"setWeight": 50}],
                "allowPromotionWithoutAnalysis": True,
                "envelope": {"actions": actions},
            },
        }
    )


def _serves(local: workloads.LocalWorkloads, rollout: api.PolicyRollout, action: int) -> dict:
    """Poll the candidate (bounded) until it serves ``action``; the last answer."""
    deadline = time.monotonic() + 120
    body: dict = {}
    while time.monotonic() < deadline:
        assert not local.failed(), local.failed()[0].tail()
        try:
            reply = httpx.post(f"{local.url(rollout, 'candidate')}/v1/act", json={"observation": OBS}, timeout=5)
            body = reply.json() if reply.status_code == 200 else {}
        except httpx.HTTPError:
            body = {}
        if body.get("action") == action:
            return body
        time.sleep(0.2)
    raise AssertionError(f"the candidate never served {action}; last answer {body}")


def test_a_widened_envelope_replaces_the_local_server(tmp_path: Path) -> None:
    candidate = write_preferring(tmp_path / "cand", [0.0, 0.5, 1.0, 4.0])
    fallback = write_preferring(tmp_path / "fb", [0.0, 3.0, 0.0, 0.0])
    narrow, wide = _rollout(candidate, fallback, [0, 1, 2]), _rollout(candidate, fallback, [0, 1, 2, 3])
    local = workloads.LocalWorkloads(tmp_path / "work")
    try:
        local.ensure(narrow, types.Workloads(stable=narrow.spec.fallback, candidate=narrow.spec.policy))
        body = _serves(local, narrow, 1)
        assert body["shield"]["reasons"] == ["envelope"]
        local.ensure(wide, types.Workloads(stable=wide.spec.fallback, candidate=wide.spec.policy))
        body = _serves(local, wide, 3)
        assert body["shield"] == {"intervened": False, "reasons": []}
    finally:
        local.close()
