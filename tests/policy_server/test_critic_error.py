"""Critic-error monitoring: a Q-value policy's prediction for the served action travels in the
signed id to whichever replica accepts the reward, which counts predicted vs realised values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy_server import attribution, metrics
from policy_server.request_ids import RequestIds
from tests.support.critic_policy import AffineQ, true_values, write_q_artifact
from tests.support.policy_server import metric, parse_metrics, running

KEY = attribution.RewardKeys.parse("critic-" * 6)
OBS = [[0.5, -1.0], [2.0, 0.25], [-1.5, 3.0], [0.0, 0.0]]


def _server_metrics(**kwargs: object) -> metrics.ServerMetrics:
    return metrics.ServerMetrics(variant="candidate", name="q", version="v1", actions=["0", "1"], features=[], **kwargs)


# ------------------------------------------------------------------ pure units


def test_value_series_are_pre_initialised_for_the_own_variant_only_when_asked() -> None:
    plain = parse_metrics(_server_metrics().render().decode())
    assert not any(k.startswith("policy_value_") and "variant=" in k for k in plain)
    m = _server_metrics()
    m.init_value("candidate")
    samples = parse_metrics(m.render().decode())
    for what in ("predicted", "realized", "abs_error", "squared_error"):
        for part in ("sum", "count"):
            assert metric(samples, f"policy_value_{what}_{part}", variant="candidate") == 0.0


def test_predicted_vs_realised_arithmetic_by_deciding_variant() -> None:
    m = _server_metrics()
    m.init_value("candidate")
    pairs = [("3.5", 1.0), ("-2", -2.5), ("0.25", 0.75)]
    for predicted, reward in pairs:
        m.record_reward(reward, None, variant="stable")
        m.record_value(predicted, reward, variant="stable")
    m.record_value("nan", 1.0, variant="stable")  # not a prediction: ignored
    m.record_value("oops", 1.0, variant="stable")
    m.record_value("1.0", float("inf"), variant="stable")
    samples = parse_metrics(m.render().decode())
    errors = [float(p) - r for p, r in pairs]
    expected = {
        "predicted": sum(float(p) for p, _ in pairs),
        "realized": sum(r for _, r in pairs),
        "abs_error": sum(abs(e) for e in errors),
        "squared_error": sum(e * e for e in errors),
    }
    for what, total in expected.items():
        assert metric(samples, f"policy_value_{what}_sum", variant="stable") == pytest.approx(total)
        assert metric(samples, f"policy_value_{what}_count", variant="stable") == len(pairs)
        assert metric(samples, f"policy_value_{what}_count", variant="candidate") == 0.0


def test_the_prediction_round_trips_through_a_signed_id_verified_elsewhere() -> None:
    issuer, other = RequestIds(10, KEY), RequestIds(10, KEY)
    issuer.serve("candidate", "v2")
    other.serve("stable", "v1")
    rid = issuer.generate(1_000.0, "v=1.23457")
    found = other.reward(rid, None, 1_001.0).attribution
    assert (found.variant, found.extra("v"), found.decision_time) == ("candidate", "1.23457", 1_000.0)
    claimed = issuer.claim("client-7", 1_000.0)
    rebound = issuer.rebind("client-7", 1_000.0, "v=-4")
    assert other.reward(claimed, None, 1_001.0).attribution.extras == ()
    again = other.reward(rebound, "e2", 1_001.0).attribution
    assert (again.request_id, again.extra("v"), again.client_chosen) == ("client-7", "-4", True)


# ------------------------------------------------------------------ the server


@pytest.mark.integration
def test_act_reports_the_q_value_of_the_served_action_and_signs_it(tmp_path) -> None:
    model = AffineQ(scale=1.5, offset=0.5)
    with running(write_q_artifact(tmp_path / "q", scale=1.5, offset=0.5), reward_keys=KEY) as srv:
        c = srv.client()
        for obs in OBS:
            body = c.act(obs)
            q = model(torch.tensor([obs])).numpy()[0]
            assert body["action"] == int(np.argmax(q))
            assert body["predicted_value"] == pytest.approx(float(q[body["action"]]), rel=1e-6)
            signed = attribution.verify(KEY, body["request_id"]).extra("v")
            assert float(signed) == pytest.approx(body["predicted_value"], rel=1e-5)
        chosen = c.act(OBS[1], request_id="mine-1")
        assert chosen["request_id"] == "mine-1"
        assert float(attribution.verify(KEY, chosen["reward_id"]).extra("v")) == pytest.approx(
            chosen["predicted_value"], rel=1e-5
        )


@pytest.mark.integration
def test_a_reward_accepted_by_another_server_counts_the_prediction_under_the_deciding_variant(tmp_path, models) -> None:
    offset = 2.0
    with (
        running(write_q_artifact(tmp_path / "q", offset=offset), reward_keys=KEY, variant="candidate") as cand,
        running(models(), reward_keys=KEY, variant="stable") as stable,
    ):
        c, s = cand.client(), stable.client()
        rewards = []
        for obs in OBS:
            body = c.act(obs)
            reward = float(true_values(obs)[body["action"]])
            rewards.append(reward)
            status, _ = s.post("/v1/reward", {"request_id": body["request_id"], "reward": reward})
            assert status == 202
        samples = s.metrics()
        n = len(OBS)
        assert metric(samples, "policy_value_abs_error_count", variant="candidate") == n
        assert metric(samples, "policy_value_abs_error_sum", variant="candidate") == pytest.approx(offset * n, rel=1e-5)
        assert metric(samples, "policy_value_realized_sum", variant="candidate") == pytest.approx(sum(rewards))
        assert metric(samples, "policy_value_squared_error_sum", variant="candidate") == pytest.approx(
            offset**2 * n, rel=1e-5
        )
        # the stable (logits) policy predicts nothing: no field, no extras, no series of its own
        plain = s.act([0.0] * 8)
        assert "predicted_value" not in plain and attribution.verify(KEY, plain["request_id"]).extras == ()
        with pytest.raises(KeyError):
            metric(samples, "policy_value_abs_error_count", variant="stable")
        assert metric(c.metrics(), "policy_value_abs_error_count", variant="candidate") == 0.0
