"""Local mode end to end: the engine drives real policy servers, the real router and a real Prometheus.

One rollout is promoted (the router's table follows every step and the stable server ends up
running the candidate's version); one breaks a guardrail and is rolled back, with the router
back at 0% and the guardrail named in status. At production topology (2 replicas per variant
behind the router, feedback delayed past the rollback) every reward the client posts is
accepted and joined, the rolled-back candidate's included.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from rollout_lab.demo import artifacts
from rollout_lab.local import loadgen, processes, rewards, run
from rollout_operator import api

from policy_server import decision_log
from tests.support import requirements

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module", autouse=True)
def _prometheus_installed() -> None:
    """Prometheus runs as a local process here: without it these tests fail, saying how to install it."""
    requirements.prometheus()


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from policy_server.sim import pricing

    root = tmp_path_factory.mktemp("artifacts")
    env = pricing.PricingEnv()
    env.reset(seed=0)
    return {
        "fallback": artifacts.write_fallback(root / "fallback", env, samples=300),
        "candidate": artifacts.write_fallback(root / "candidate", env, samples=300, version="v2", epsilon=0.2),
    }


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory):
    platform = run.LocalPlatform(tmp_path_factory.mktemp("local"), scrape_interval="500ms")
    platform.start()
    try:
        yield platform
    finally:
        platform.close()


STEPS = [{"shadow": {"duration": "6s"}}, {"setWeight": 50}, {"pause": {"duration": "4s"}}]


def _rollout(name: str, policies: dict[str, Path], guardrail: dict, steps: list[dict] = STEPS,
             shadow_guardrails: tuple[dict, ...] = (), progress_deadline: str = "2m", **extra: object
             ) -> api.PolicyRollout:
    return api.PolicyRollout.model_validate({
        "metadata": {"name": name, "namespace": "test", "generation": 1},
        "spec": {
            **extra,
            "policy": {"image": "local", "artifact": str(policies["candidate"]), "version": "v2"},
            "fallback": {"image": "local", "artifact": str(policies["fallback"]), "version": "list-price-v1"},
            "steps": steps,
            "analysis": {"interval": "2s", "guardrails": [guardrail], "shadowGuardrails": list(shadow_guardrails)},
            "progressDeadline": progress_deadline,
        },
    })


def _drive(local: run.LocalPlatform, rollout: api.PolicyRollout, mean_delay_s: float = 0.1, max_delay_s: float = 3.0,
           on_end: Callable[[loadgen.TrafficGenerator], None] | None = None, timeout: float = 150,
           ) -> tuple[run.RunResult, loadgen.TrafficGenerator]:
    from policy_server.sim import pricing

    local.register(rollout)
    env = pricing.PricingEnv(mean_delay_s=mean_delay_s, max_delay_s=max_delay_s)
    env.reset(seed=1)
    gen = loadgen.TrafficGenerator(local.traffic.url(rollout), env, rate=80, drain_s=max_delay_s + 5)
    ended = False

    def on_tick(current: api.PolicyRollout, sample: run.Sample) -> None:
        nonlocal ended
        if not gen.started and sample.actual_weight is not None and local.workloads.observe(current).stable_ready:
            gen.start()
        if on_end is not None and current.status.phase.terminal and not ended:
            ended = True
            on_end(gen)

    try:
        return run.run_rollout(local, rollout, timeout=timeout, tick=0.5, on_tick=on_tick), gen
    finally:
        gen.stop()


def _router_table(local: run.LocalPlatform, rollout: api.PolicyRollout) -> dict:
    return httpx.get(f"{local.traffic.url(rollout)}/router/config", timeout=2).json()["table"]


def test_promotes_through_shadow_and_canary(
    local: run.LocalPlatform, policies: dict[str, Path], tmp_path: Path
) -> None:
    logs = tmp_path / "decision-logs"
    rollout = _rollout("promote", policies, {"name": "errors", "template": "error-rate", "condition": "< 0.05",
                                             "inconclusiveLimit": 5}, decisionLog={"url": str(logs)})
    result, gen = _drive(local, rollout)
    status = result.rollout.status
    assert not result.timed_out
    assert status.phase is api.Phase.PROMOTED, status.message
    phases = [s.phase for s in result.samples]
    assert "Shadow" in phases and "Paused" in phases
    # the router applied the canary weight (read back from the router process itself)
    assert any(s.actual_weight == 50 for s in result.samples)
    assert any(s.shadow for s in result.samples)
    # the guardrail was measured through Prometheus: a number, not an inconclusive None
    errors = next(g for g in status.guardrails if g.name == "errors")
    assert errors.value is not None and errors.verdict is api.Verdict.PASS
    # both variants served simulated customers
    totals = gen.totals()
    assert totals["candidate"].decisions > 0 and totals["stable"].decisions > 0
    # no decision request failed, the promotion's server handover included (serve --reuse-port)
    assert "error" not in totals, f"{totals['error'].errors} /v1/act requests failed"
    # promotion: the stable server now runs the candidate's version
    model = httpx.get(f"{local.workloads.url(rollout, 'stable')}/v1/model", timeout=2).json()
    assert "v2" in json.dumps(model)
    events = [e.reason for e in local.store.events if e.rollout == "promote"]
    assert "RolloutStarted" in events or events  # every decision left an event trail
    assert (local.workdir / "rollouts" / "promote.status.json").exists()
    # spec.decisionLog: each variant logged its decisions under <url>/<variant> (candidate stopped, logs flushed)
    candidate_log = decision_log.read_decisions(str(logs / "candidate"))
    assert candidate_log.num_rows > 0
    assert set(candidate_log.column("variant").to_pylist()) == {"candidate"}
    assert decision_log.read_decisions(str(logs / "stable")).num_rows > 0


def test_rolls_back_on_a_breaking_guardrail(local: run.LocalPlatform, policies: dict[str, Path]) -> None:
    # the candidate explores 20% of the time over 5 prices, so it breaks the margin floor now and then:
    # a zero-tolerance guardrail on the violation rate must roll it back
    # A long pause at 50 %: on a loaded machine the load generator may send few requests in 4 s, and a
    # window without a violation passes; the rollback comes at the first violating window either way.
    steps = [*STEPS[:2], {"pause": {"duration": "40s"}}]
    rollout = _rollout("rollback", policies, {"name": "margin", "template": "constraint-violation-rate",
                                              "params": {"window": "4s"}, "condition": "<= 0",
                                              "failureLimit": 1, "inconclusiveLimit": 10}, steps=steps)
    result, _ = _drive(local, rollout)
    status = result.rollout.status
    assert status.phase is api.Phase.ROLLED_BACK, status.message
    assert "margin" in (status.message or "")
    margin = next(g for g in status.guardrails if g.name == "margin")
    assert margin.verdict is api.Verdict.FAIL and margin.value is not None and margin.value > 0
    assert result.samples[-1].actual_weight == 0
    assert any(s.actual_weight == 50 for s in result.samples)


def _decisions_served(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=2).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "policy_decisions"
               for s in f.samples if s.name == "policy_decisions_total")


def test_with_replicas_delayed_rewards_of_a_rolled_back_candidate_are_accepted_and_joined(
    local: run.LocalPlatform, policies: dict[str, Path]
) -> None:
    # 2 replicas per variant behind the router; outcomes reported 2 s late on average, up to 8 s, so many
    # arrive after the rollback stopped the candidate's processes: any live replica must take them.
    steps = [*STEPS[:2], {"pause": {"duration": "40s"}}]
    rollout = _rollout("replicas", policies, {"name": "margin", "template": "constraint-violation-rate",
                                              "params": {"window": "4s"}, "condition": "<= 0",
                                              "failureLimit": 1, "inconclusiveLimit": 10}, steps=steps)
    rollout.spec.policy.replicas = rollout.spec.fallback.replicas = 2
    at_rollback: dict[str, loadgen.RewardLedger] = {}
    served: list[float] = []

    def on_end(gen: loadgen.TrafficGenerator) -> None:  # the first reconcile that sees the rollback
        served.extend(_decisions_served(url) for url in local.workloads.urls(rollout, "stable"))
        at_rollback.update(gen.reward_ledgers())

    result, gen = _drive(local, rollout, mean_delay_s=2.0, max_delay_s=8.0, on_end=on_end)
    local.stop_rollout(rollout)  # every server flushes its decision log
    assert result.rollout.status.phase is api.Phase.ROLLED_BACK, result.rollout.status.message
    assert len(served) == 2 and all(n > 0 for n in served), f"each stable replica served: {served}"
    ledgers = gen.reward_ledgers()
    counts = rewards.account(ledgers, rewards.joined_request_ids(local.workloads.decision_logs(rollout)))
    assert ledgers["candidate"].accepted > at_rollback["candidate"].accepted, "rewards came in after the rollback"
    for variant, c in counts.items():
        assert c["posted"] > 0 and c["lost"] == 0 and c["joined"] == c["accepted"] == c["posted"], (variant, c)


def test_a_shadow_divergence_rolls_back_before_the_candidate_serves_anyone(
    local: run.LocalPlatform, policies: dict[str, Path]
) -> None:
    # The candidate explores half as much as the fallback: on mirrored requests they often choose differently.
    rollout = _rollout("diverges", policies, {"name": "errors", "template": "error-rate", "condition": "< 0.05"},
                       shadow_guardrails=({"name": "agreement", "template": "shadow-agreement", "condition": ">= 0.99",
                                           "failureLimit": 1, "inconclusiveLimit": 10},))
    result, gen = _drive(local, rollout)
    status = result.rollout.status
    assert status.phase is api.Phase.ROLLED_BACK, status.message
    assert "agreement" in (status.message or "") and status.current_step_index == 0
    agreement = next(g for g in status.guardrails if g.name == "agreement")
    assert agreement.verdict is api.Verdict.FAIL and agreement.value is not None and agreement.value < 0.99
    assert any(s.shadow for s in result.samples), "the candidate was shadowed"
    assert {s.weight for s in result.samples} == {0} and {s.actual_weight for s in result.samples} <= {None, 0}
    assert gen.totals().get("candidate", loadgen.Bucket()).decisions == 0, "no customer was served by it"


def test_a_tampered_artifact_is_refused_before_any_traffic(
    local: run.LocalPlatform, policies: dict[str, Path], tmp_path: Path
) -> None:
    import base64
    import shutil

    from cryptography.hazmat.primitives import serialization

    from policy_server import signing
    from tests.support.policy_server import reseal_manifest

    private, public = signing.generate_keypair(tmp_path / "keys")
    raw = serialization.load_pem_public_key(public.read_bytes()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signed = {name: Path(shutil.copytree(path, tmp_path / name)) for name, path in policies.items()}
    for path in signed.values():
        signing.sign(path, private.read_bytes())
    reseal_manifest(signed["candidate"])  # someone with write access to the bucket rewrote the manifest
    # Generous limits: the refusal ends the run as soon as the candidate exits; on a loaded machine its torch import
    # once took longer than a 2-minute progress deadline, and the rollout failed on the deadline first.
    rollout = _rollout("tampered", signed, {"name": "errors", "template": "error-rate", "condition": "< 0.05"},
                       progress_deadline="10m", artifactVerification={"trustedKeys": [base64.b64encode(raw).decode()]})
    with pytest.raises(processes.ProcessError) as refused:
        _drive(local, rollout, timeout=600)
    assert "tampered-candidate exited" in str(refused.value)
    assert "changed after signing or signed by another key" in str(refused.value)
    local.stop_rollout(rollout)


def test_manifest_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: policy.rollouts.io/v1alpha1\nkind: PolicyRollout\nmetadata: {name: x}\n"
                    "spec: {policy: {image: i, artifact: a, version: v}, fallback: {image: i, artifact: a, "
                    "version: f}, steps: [{setWeight: 200}]}\n")
    with pytest.raises(run.ManifestError, match=r"spec\.steps\.0\.setWeight"):
        run.load_manifest(path)
    other = tmp_path / "other.yaml"
    other.write_text("kind: Deployment\n")
    with pytest.raises(run.ManifestError, match="not a PolicyRollout"):
        run.load_manifest(other)
