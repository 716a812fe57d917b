"""Rewards at production topology: any server of the rollout accepts and attributes any decision's reward.

Two real servers (stable and candidate, in-thread, real HTTP) share the rollout's key, as every
replica of every variant does. A reward is posted to the server that did NOT decide: it is
accepted, counted under the deciding variant and logged with the decision's attribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policy_server import artifact, attribution
from policy_server.decision_log import read_decisions, read_rewards
from tests.support.policy_server import metric, running

pytestmark = pytest.mark.integration

OBS = [0.3, -1.2, 0.5, 0.0, 1.1, -0.4, 0.9, -0.7]
KEY = attribution.RewardKeys.parse("rollout-key-" + "x" * 32)


def test_a_reward_posted_to_another_variants_replica_is_accepted_and_attributed(models, tmp_path: Path) -> None:
    with (
        running(models(), variant="candidate", reward_keys=KEY, log_dir=str(tmp_path / "c")) as candidate,
        running(models(version="v0"), variant="stable", reward_keys=KEY, log_dir=str(tmp_path / "s")) as stable,
    ):
        decided = candidate.client().act(OBS)
        chosen = candidate.client().act(OBS, request_id="order-7")
        other = stable.client()
        assert other.post("/v1/reward", {"request_id": decided["request_id"], "reward": 2.5})[0] == 202
        assert other.post("/v1/reward", {"request_id": chosen["reward_id"], "reward": 1.0, "costs": {"risk": 0.5}})[
            0
        ] == 202
        status, err = other.post("/v1/reward", {"request_id": "order-7", "reward": 1.0})
        assert status == 404 and "reward_id" in err["error"]  # a bare client id: only its own server knows it
        m = other.metrics()
    assert metric(m, "policy_reward_sum", variant="candidate") == 3.5
    assert metric(m, "policy_reward_count", variant="candidate") == 2
    assert metric(m, "policy_reward_count", variant="stable") == 0
    assert metric(m, "policy_cost_sum", variant="candidate", cost="risk") == 0.5
    rows = {r["request_id"]: r for r in read_rewards(f"file://{tmp_path / 's'}").to_pylist()}
    assert set(rows) == {decided["request_id"], "order-7"}
    row = rows[decided["request_id"]]
    assert (row["variant"], row["policy_version"], row["received_by"]) == ("candidate", "v1", "stable")
    assert row["decision_time"] == pytest.approx(rows["order-7"]["decision_time"], abs=5)


def test_forged_malformed_and_foreign_ids_get_4xx(models) -> None:
    foreign = attribution.IdSigner(attribution.RewardKeys.parse("f" * 40), variant="candidate", policy_version="v1")
    with running(models(), variant="stable", reward_keys=KEY) as srv:
        c = srv.client()
        rid = c.act(OBS)["request_id"]
        payload, tag = rid[3:].split(".")
        tampered = f"r1.{payload}.{tag[:-2]}AA"
        assert c.post("/v1/reward", {"request_id": tampered, "reward": 1})[0] == 404
        assert c.post("/v1/reward", {"request_id": foreign.generate(1e9), "reward": 1})[0] == 404
        assert c.post("/v1/reward", {"request_id": "r1.%%%.%%%", "reward": 1})[0] == 400
        m = c.metrics()
    assert metric(m, "policy_errors_total", variant="stable", reason="unknown_request_id") == 2
    assert metric(m, "policy_reward_count", variant="stable") == 0


def test_several_reward_events_per_decision_and_duplicates(models) -> None:
    with running(models(), variant="stable", reward_keys=KEY) as srv:
        c = srv.client()
        rid = c.act(OBS)["request_id"]
        assert c.post("/v1/reward", {"request_id": rid, "event_id": "click", "reward": 1})[0] == 202
        assert c.post("/v1/reward", {"request_id": rid, "event_id": "buy", "reward": 5})[0] == 202
        status, err = c.post("/v1/reward", {"request_id": rid, "event_id": "buy", "reward": 5})
        assert status == 409 and "'buy'" in err["error"]
        assert metric(c.metrics(), "policy_reward_sum", variant="stable") == 6


def test_a_too_old_decision_is_refused_with_410(models) -> None:
    old = attribution.IdSigner(KEY, variant="stable", policy_version="v1").generate(1_000_000_000.0)
    with running(models(), variant="stable", reward_keys=KEY, max_reward_age_s=3600) as srv:
        status, err = srv.client().post("/v1/reward", {"request_id": old, "reward": 1})
    assert status == 410 and "max-reward-age" in err["error"]


def test_current_action_bounds_max_delta_on_a_replica_that_never_saw_the_entity(tmp_path: Path) -> None:
    """The per-entity guarantee with N replicas: the caller's current action, not the process's memory."""
    softmax = artifact.Exploration(kind="softmax", temperature=5.0)  # every action likely: the entity wants to move
    path = artifact.write_example_model(tmp_path / "m", exploration=softmax, shield={"max_delta": 1}, n_actions=6)
    obs = (4 * np.random.default_rng(3).standard_normal((300, 8))).astype(np.float32).tolist()

    def moves(replicas: list, *, send_current: bool, entity: str) -> list[int]:
        current, moved = None, []
        for i, row in enumerate(obs):
            context = {"entity": entity} | ({"current_action": current} if send_current and current is not None else {})
            served = replicas[i % 2].act(row, context=context)["action"]  # alternate replicas, as a Service does
            if current is not None:
                moved.append(abs(served - current))
            current = served
        return moved

    with running(path, variant="a", reward_keys=KEY) as first, running(path, variant="b", reward_keys=KEY) as second:
        replicas = [first.client(), second.client()]
        guarded = moves(replicas, send_current=True, entity="shelf-9")
        memory_only = moves(replicas, send_current=False, entity="shelf-10")
        status, err = replicas[0].post("/v1/act", {"observation": obs[0], "context": {"current_action": 9}})
    assert max(guarded) <= 1
    assert guarded.count(1) >= 5  # the policy wanted to move: the bound was exercised, not vacuous
    assert max(memory_only) > 1  # each process's memory alone lets the entity jump between replicas
    assert status == 400 and "current_action" in err["error"]


def test_a_shadow_mirror_is_answered_under_the_served_id_and_not_logged_as_served(models, tmp_path: Path) -> None:
    """The router mirrors a served decision to the candidate with `shadow_of`: the candidate must not log it as a
    decision of its own (it was never served; the router logs it as `served_by: shadow`) nor claim the id."""
    with (
        running(models(), variant="stable", reward_keys=KEY) as stable,
        running(models(version="v2"), variant="candidate", reward_keys=KEY, log_dir=str(tmp_path)) as candidate,
    ):
        served = stable.client().act(OBS, request_id="order-9")
        c = candidate.client()
        mirrored = c.post("/v1/act", {"observation": OBS, "shadow_of": served["request_id"]})[1]
        again = c.post("/v1/act", {"observation": OBS, "shadow_of": served["request_id"]})[1]
        own = c.act(OBS)
        status, err = c.post("/v1/act", {"observation": OBS, "request_id": "x", "shadow_of": "y"})
        m = c.metrics()
    assert mirrored["request_id"] == again["request_id"] == "order-9"
    assert status == 400 and "shadow_of" in err["error"]
    assert metric(m, "policy_decisions_total", variant="candidate", action=str(own["action"])) >= 1
    logged = read_decisions(f"file://{tmp_path}").column("request_id").to_pylist()
    assert logged == [own["request_id"]]
