"""Local workloads at production topology: `replicas` server processes per variant, one reward key for all.

Real `policy-server serve` processes on loopback: each replica of a variant answers decisions on
its own port (the router's list of endpoints), the variant is ready only when all are, and every
process carries the run's `POLICY_SERVER_REWARD_KEY`, so any of them verifies any decision's id.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from rollout_lab.demo import artifacts
from rollout_lab.local import workloads
from rollout_operator import api
from rollout_operator.engine import types

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

KEY = "test-reward-key-shared-by-the-run"


def _rollout(artifact: Path, replicas: int) -> api.PolicyRollout:
    policy = {"image": "local", "artifact": str(artifact), "version": "list-price-v1", "replicas": replicas}
    return api.PolicyRollout.model_validate({
        "metadata": {"name": "replicated", "namespace": "test", "generation": 1},
        "spec": {"policy": {**policy, "version": "v2"}, "fallback": policy, "steps": [{"setWeight": 50}],
                 "allowPromotionWithoutAnalysis": True},
    })


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_each_replica_serves_on_its_own_port_with_the_runs_reward_key_and_is_replaced_without_a_gap(
    tmp_path: Path,
) -> None:
    from policy_server.sim import pricing

    env = pricing.PricingEnv()
    env.reset(seed=0)
    artifact = artifacts.write_fallback(tmp_path / "fallback", env, samples=200)
    newer = artifacts.write_fallback(tmp_path / "candidate", env, samples=200, version="v2", epsilon=0.2)
    rollout = _rollout(artifact, replicas=2)
    local = workloads.LocalWorkloads(tmp_path / "work", env={"POLICY_SERVER_REWARD_KEY": KEY})
    try:
        local.ensure(rollout, types.Workloads(stable=rollout.spec.fallback, candidate=None))
        urls = local.urls(rollout, "stable")
        assert len(urls) == len(set(urls)) == 2
        assert urls[0] == local.url(rollout, "stable") and not set(urls) & set(local.urls(rollout, "candidate"))
        deadline = time.monotonic() + 120
        while not local.observe(rollout).stable_ready and time.monotonic() < deadline:
            assert not local.failed(), local.failed()[0].tail()
            time.sleep(0.2)
        state = local.observe(rollout)
        assert state.stable_ready and state.stable_running_version == "list-price-v1"
        for url in urls:
            reply = httpx.post(f"{url}/v1/act", json={"observation": env.next_customer().tolist()}, timeout=5)
            assert reply.status_code == 200, reply.text
            assert reply.json()["variant"] == "stable"
        procs = [s.process for s in local._slots.values() if s.process is not None]
        assert len(procs) == 2
        assert {_environ(p.proc.pid)["POLICY_SERVER_REWARD_KEY"] for p in procs} == {KEY}
        assert {p.name for p in procs} == {"replicated-stable", "replicated-stable-1"}

        # A promotion: both replicas are replaced, each port answering throughout, ready once both run v2.
        promoted = rollout.spec.policy.model_copy(update={"artifact": str(newer)})
        local.ensure(rollout, types.Workloads(stable=promoted, candidate=None))
        answered = []
        deadline = time.monotonic() + 120
        while not local.observe(rollout).stable_ready and time.monotonic() < deadline:
            assert not local.failed(), local.failed()[0].tail()
            for url in urls:
                obs = env.next_customer().tolist()
                answered.append(httpx.post(f"{url}/v1/act", json={"observation": obs}, timeout=5).status_code)
            time.sleep(0.1)
        assert local.observe(rollout).stable_running_version == "v2"
        assert answered and set(answered) == {200}, "no request failed during the handover"
        for url in local.urls(rollout, "stable"):
            assert "v2" in httpx.get(f"{url}/v1/model", timeout=5).text
        assert [_environ(s.process.proc.pid)["POLICY_SERVER_REWARD_KEY"] for s in local._slots.values()
                if s.process is not None] == [KEY, KEY]
    finally:
        local.close()
    assert all(not s.process for s in local._slots.values()), "every replica stopped"


def test_a_variant_uses_the_replicas_of_the_policy_it_runs(tmp_path: Path) -> None:
    rollout = _rollout(tmp_path / "unused", replicas=1).model_copy(deep=True)
    rollout.spec.policy.replicas = 3
    local = workloads.LocalWorkloads(tmp_path / "work")
    assert len(local.urls(rollout, "stable")) == 1, "stable runs the fallback's replicas"
    assert len(local.urls(rollout, "candidate")) == 3
    # every port either variant may need is known up front (Prometheus scrapes them from the start)
    assert len(local.ports(rollout, "stable")) == len(local.ports(rollout, "candidate")) == 3
    assert len({*local.ports(rollout, "stable"), *local.ports(rollout, "candidate")}) == 6
