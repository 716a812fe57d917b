"""The action envelope: out-of-envelope proposals are never served, replaced by the fallback's action,
counted, logged with the proposal, and the served propensities stay exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policy_server import artifact, envelope, metrics, policy, shield, worker_metrics
from policy_server.decision_log import read_decisions
from tests.support.envelope_policy import OBS, write_preferring
from tests.support.policy_server import metric, parse_metrics, pipelined_acts, running, start_cli

PREFERS_3 = [0.0, 0.5, 1.0, 4.0]  # greedy: action 3, outside the envelope {0, 1, 2}
FALLBACK_PREFERS_1 = [0.0, 3.0, 0.0, 0.0]


def _policy(path: Path) -> policy.Policy:
    return policy.Policy.from_artifact(artifact.load_artifact(str(path)))


@pytest.mark.integration
def test_out_of_envelope_actions_are_never_served_but_counted_and_logged(tmp_path: Path) -> None:
    candidate = write_preferring(tmp_path / "cand", PREFERS_3)
    fallback = write_preferring(tmp_path / "fb", FALLBACK_PREFERS_1)
    n = 40
    with running(
        candidate,
        variant="candidate",
        log_dir=str(tmp_path / "log"),
        log_flush_interval_s=0.2,
        envelope=json.dumps({"actions": [0, 1, 2]}),
        envelope_fallback_model=str(fallback),
    ) as srv:
        c = srv.client()
        answers = [c.act(OBS, context={"entity": f"e{i % 3}"}) for i in range(n)]
        m = c.metrics()
    for body in answers:
        assert body["action"] == 1 and body["propensity"] == 1.0  # the fallback's greedy action
        assert body["shield"] == {"intervened": True, "reasons": ["envelope"]}
        assert "proposed_action" not in body  # the caller acts on what is served; reviewers read the log
    assert metric(m, "policy_envelope_proposals_total", variant="candidate", proposed="3") == n
    assert metric(m, "policy_envelope_proposals_total", variant="candidate", proposed="0") == 0
    assert metric(m, "policy_shield_interventions_total", variant="candidate", reason="envelope") == n
    rows = read_decisions(str(tmp_path / "log")).to_pylist()
    assert len(rows) == n
    assert all(r["action"] == [1.0] and r["proposed_action"] == [3.0] for r in rows)
    assert all(r["shield_reasons"] == ["envelope"] for r in rows)


@pytest.mark.integration
def test_inside_the_envelope_nothing_changes(tmp_path: Path) -> None:
    candidate = write_preferring(tmp_path / "cand", PREFERS_3)
    with running(candidate, variant="s", envelope=json.dumps({"actions": [3]}), log_dir=str(tmp_path / "log")) as srv:
        body = srv.client().act(OBS)
        m = srv.client().metrics()
    assert body["action"] == 3 and body["shield"] == {"intervened": False, "reasons": []}
    assert metric(m, "policy_envelope_proposals_total", variant="s", proposed="3") == 0
    assert read_decisions(str(tmp_path / "log")).to_pylist()[0]["proposed_action"] is None


def test_served_propensity_is_the_frequency_of_the_served_action(tmp_path: Path) -> None:
    """ε-greedy candidate preferring 3, softmax fallback, envelope {0, 1, 2}: Monte-Carlo frequencies."""
    cand = _policy(write_preferring(tmp_path / "c", PREFERS_3, {"kind": "epsilon_greedy", "epsilon": 0.4}))
    fb = _policy(write_preferring(tmp_path / "f", [0.2, 1.0, -0.5, 2.0], {"kind": "softmax"}))  # some mass on 3
    sh = shield.Shield(cand)
    sh.envelope = envelope.Envelope(envelope.parse_spec('{"actions": [0, 1, 2]}'), cand, fb)
    n = 200_000
    obs = np.tile(np.array([OBS], np.float32), (n, 1))
    res = sh.run(cand.forward(obs), np.random.default_rng(7), masks=[None] * n, entities=[None] * n, obs=obs)
    actions, props = res.decision.actions, res.decision.propensities
    assert set(np.unique(actions)) <= {0, 1, 2}
    for a in (0, 1, 2):
        reported = props[actions == a]
        assert np.ptp(reported) < 1e-12  # one state: one probability per action
        freq = np.mean(actions == a)
        assert abs(freq - reported[0]) < 4 * np.sqrt(reported[0] * (1 - reported[0]) / n), (a, freq, reported[0])
    assert sum(props[actions == a][0] for a in (0, 1, 2)) == pytest.approx(1.0)
    replaced = ~np.isnan(res.proposed[:, 0])
    assert (res.proposed[replaced, 0] == 3).all() and res.proposals == {"3": int(replaced.sum())}


def test_continuous_replaced_action_carries_the_mass_that_left_the_envelope(tmp_path: Path) -> None:
    """Gaussian candidate, no fallback model: the shield's fallback (0) is an atom with the tail mass."""
    path = artifact.write_example_model(
        tmp_path / "m", kind="continuous", n_actions=2, exploration={"kind": "gaussian"}, seed=1
    )
    cand = _policy(path)
    sh = shield.Shield(cand)
    n = 100_000
    obs = np.tile(np.array([[0.3, -1.2, 0.5, 0.0, 1.1, -0.4, 0.9, -0.7]], np.float32), (n, 1))
    mean, std = float(cand.forward(obs[:1])[0, 0]), float(cand.std[0])
    low, high = mean - 0.5 * std, mean + std  # about 45 % of the draws leave the envelope
    spec = envelope.parse_spec(json.dumps({"low": [low, None], "high": [high, None]}))
    sh.envelope = envelope.Envelope(spec, cand)
    res = sh.run(cand.forward(obs), np.random.default_rng(3), masks=[None] * n, entities=[None] * n, obs=obs)
    replaced = np.array(["envelope" in r for r in res.reasons])
    assert 0.05 < replaced.mean() < 0.95
    served = res.decision.actions
    assert (served[:, 0] >= low - 1e-6).all() and (served[:, 0] <= high + 1e-6).all()
    atom = res.decision.propensities[replaced]
    assert np.ptp(atom) < 1e-9 and abs(replaced.mean() - atom[0]) < 4 * np.sqrt(atom[0] * (1 - atom[0]) / n)
    assert set(res.proposals) <= {"dim0_low", "dim0_high"} and sum(res.proposals.values()) == replaced.sum()
    assert set(res.proposals) <= set(envelope.proposal_labels(cand))  # every label exists at zero from the start
    assert envelope.proposal_labels(cand) == ["dim0_low", "dim0_high", "dim1_low", "dim1_high", "budget"]


@pytest.mark.integration
def test_budget_is_exact_across_two_replicas_with_envelope_spent(tmp_path: Path) -> None:
    """Candidate prefers 3 (weight 1), fallback prefers 0 (weight 0), limit 5 per entity per day."""
    candidate = write_preferring(tmp_path / "cand", PREFERS_3)
    fallback = write_preferring(tmp_path / "fb", [3.0, 0.0, 0.0, 0.0])
    env = json.dumps({"budget": {"limit": 5, "window": "24h", "weights": [0, 1, 1, 1]}})
    common = {"envelope": env, "envelope_fallback_model": str(fallback)}
    with running(candidate, variant="a", **common) as r1, running(candidate, variant="b", **common) as r2:
        clients = [r1.client(), r2.client()]
        spent = 0  # the caller's world: what the entity has received today
        for i in range(20):
            body = clients[i % 2].act(OBS, context={"entity": "shop-1", "envelope_spent": spent})
            spent += 0 if body["action"] == 0 else 1
        assert spent == 5  # exact, whichever replica served
        # without envelope_spent each process counts only what it served itself (documented limitation)
        served = [clients[i % 2].act(OBS, context={"entity": "shop-2"})["action"] for i in range(20)]
        assert sum(a != 0 for a in served) == 10
        status, err = clients[0].post("/v1/act", {"observation": OBS, "context": {"envelope_spent": -1}})
    assert status == 400 and "envelope_spent" in err["error"]


@pytest.mark.integration
def test_budget_holds_for_one_entity_asking_many_times_in_one_micro_batch(tmp_path: Path) -> None:
    """Pipelined requests share a micro-batch; each must see the spend of the ones before it."""
    candidate = write_preferring(tmp_path / "cand", PREFERS_3)
    fallback = write_preferring(tmp_path / "fb", [3.0, 0.0, 0.0, 0.0])
    env = json.dumps({"budget": {"limit": 5, "window": "24h", "weights": [0, 1, 1, 1]}})
    with running(candidate, variant="a", envelope=env, envelope_fallback_model=str(fallback)) as srv:
        answers = pipelined_acts(srv.port, [{"observation": OBS, "context": {"entity": "shop-3"}}] * 12)
        m = srv.client().metrics()
    actions = [a["action"] for a in answers]
    assert actions == [3] * 5 + [0] * 7  # in arrival order: the first five fit, the rest are replaced
    assert metric(m, "policy_envelope_proposals_total", variant="a", proposed="3") == 7


@pytest.mark.integration
@pytest.mark.parametrize(
    ("env", "says"),
    [
        ('{"actions": [0, 7]}', "envelope actions [7] are not actions of this policy (0..3)"),
        ('{"low": [0.0]}', "envelope low/high are for continuous actions"),
        ("{actions}", "--envelope is not JSON"),
    ],
)
def test_an_envelope_that_does_not_fit_the_policy_is_refused_at_start(tmp_path: Path, env: str, says: str) -> None:
    candidate = write_preferring(tmp_path / "cand", PREFERS_3)
    proc = start_cli("--model", str(candidate), "--envelope", env)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("policy-server:")]
    assert len(lines) == 1 and says in lines[0], err


def test_proposals_add_up_across_workers() -> None:
    """serve --workers N: /metrics answers the sum of every worker's proposals (worker_metrics.py)."""

    def worker(counts: dict[str, int]) -> tuple[str, bool]:
        m = metrics.ServerMetrics(variant="candidate", name="n", version="1", actions=["0", "1", "2", "3"], features=[])
        m.init_envelope(["0", "1", "2", "3"])
        m.record_proposals(counts)
        return m.render().decode(), True

    merged = parse_metrics(worker_metrics.merge([worker({"3": 4}), worker({"3": 2, "2": 1})]).decode())
    assert metric(merged, "policy_envelope_proposals_total", variant="candidate", proposed="3") == 6
    assert metric(merged, "policy_envelope_proposals_total", variant="candidate", proposed="2") == 1
    assert metric(merged, "policy_envelope_proposals_total", variant="candidate", proposed="0") == 0
