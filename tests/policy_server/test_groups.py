"""Fairness groups on the policy server: a context key folded into a bounded group, signed into the id beside the
critic's value, counted by group wherever the reward arrives (docs/policy-server.md#fairness-groups)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from policy_server import attribution, group_metrics, groups, worker_metrics
from policy_server.request_ids import RequestIds
from tests.support import fair_policy
from tests.support.critic_policy import write_q_artifact
from tests.support.policy_server import metric, parse_metrics, running

KEY = attribution.RewardKeys.parse("groups-" * 6)
REGION = groups.parse("region", "eu,us,7")


# ------------------------------------------------------------------ folding and configuration


@pytest.mark.parametrize(
    ("context", "group"),
    [
        ({"region": "eu"}, "eu"),
        ({"region": 7}, "7"),  # integers compare as their decimal text
        ({"region": "asia"}, "other"),  # not listed
        ({"region": True}, "other"),  # a bool is not an integer here
        ({"region": 7.0}, "other"),
        ({"region": ["eu"]}, "other"),
        ({"country": "eu"}, "other"),  # missing
        (None, "other"),
    ],
)
def test_a_context_folds_into_a_listed_group_or_other(context: dict | None, group: str) -> None:
    assert REGION.fold(context) == group


@pytest.mark.parametrize(
    ("key", "names", "message"),
    [
        (None, "a,b", "--groups needs --group-key"),
        ("region", None, "--group-key needs --groups"),
        ("region", ",".join(f"g{i}" for i in range(33)), "at most 32"),
        ("region", "eu,eu", "twice"),
        ("region", "eu,other", "not a group name"),
        ("region", "e=u", "not a group name"),
        ("region", "a;b", "not a group name"),
        ("bad key!", "a", "not a context key name"),
    ],
)
def test_a_bad_configuration_is_one_line_saying_what_to_fix(key: str | None, names: str | None, message: str) -> None:
    with pytest.raises(groups.GroupConfigError, match=message) as caught:
        groups.parse(key, names)
    assert "\n" not in str(caught.value)


def test_no_flags_is_no_groups_and_32_groups_are_allowed() -> None:
    assert groups.parse(None, None) is None
    spec = groups.parse("k", [f"g{i}" for i in range(32)])
    assert spec is not None and len(spec.labels) == 33 and spec.labels[-1] == "other"


def test_the_cli_refuses_bad_groups_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    from policy_server import cli

    assert cli.main(["serve", "--model", "/nowhere", "--port", "0", "--group-key", "region"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--group-key needs --groups" in err
    args = argparse.Namespace(group_key="region", groups="eu, us")
    assert groups.from_args(args) == groups.GroupKey("region", ("eu", "us"))


def test_one_extras_string_carries_the_group_and_the_value_and_verifies_elsewhere() -> None:
    assert groups.id_extras(None, None) == ""
    assert groups.id_extras("eu", None) == "g=eu"
    assert groups.id_extras(None, 1.2345678) == "v=1.23457"
    assert groups.id_extras("eu", float("nan")) == "g=eu"
    both = groups.id_extras("eu", -2.5)
    assert both == attribution.encode_extras({"g": "eu", "v": "-2.5"})  # the documented format, built cheaply
    issuer, other = RequestIds(10, KEY), RequestIds(10, KEY)
    issuer.serve("candidate", "v2")
    other.serve("stable", "v1")
    found = other.reward(issuer.generate(1_000.0, both), None, 1_001.0).attribution
    assert (found.variant, found.extra("g"), found.extra("v")) == ("candidate", "eu", "-2.5")
    claimed = issuer.claim("client-1", 1_000.0, groups.id_extras("us", None))
    assert other.reward(claimed, None, 1_001.0).attribution.extra("g") == "us"


# ------------------------------------------------------------------ metrics


def _metrics(actions: list[str] | None = None) -> group_metrics.GroupMetrics:
    return group_metrics.GroupMetrics(REGION, variant="candidate", actions=actions or ["0", "1"], costs=["risk"])


def _render(m: group_metrics.GroupMetrics) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(m)
    return parse_metrics(generate_latest(registry).decode())


def test_decisions_actions_rewards_and_costs_by_group() -> None:
    m = _metrics()
    m.record_batch(["eu", "us", "eu", "other"], np.array([0, 1, 1, 0]))
    m.record_batch(["eu"], np.array([1]))
    m.record_reward("eu", 1.5, {"risk": 0.25}, "stable")
    m.record_reward("eu", -0.5, {"risk": 0.75}, "stable")
    m.record_reward("asia", 2.0, None, "candidate")  # a group this configuration does not list: other
    m.record_reward("us", float("nan"), None, "candidate")  # not a number: ignored
    s = _render(m)
    assert metric(s, "policy_group_decisions_total", variant="candidate", group="eu") == 3
    assert metric(s, "policy_group_decisions_total", variant="candidate", group="7") == 0  # pre-initialised
    assert metric(s, "policy_group_actions_total", group="eu", action="1") == 2
    assert metric(s, "policy_group_actions_total", group="us", action="0") == 0
    assert metric(s, "policy_group_reward_sum", variant="stable", group="eu") == 1.0
    assert metric(s, "policy_group_reward_count", variant="stable", group="eu") == 2
    assert metric(s, "policy_group_reward_sum", variant="candidate", group="other") == 2.0
    assert metric(s, "policy_group_reward_count", variant="candidate", group="us") == 0
    assert metric(s, "policy_group_cost_sum", variant="stable", group="eu", cost="risk") == 1.0
    assert metric(s, "policy_group_cost_count", variant="candidate", group="7", cost="risk") == 0


def test_a_continuous_policy_counts_decisions_by_group_but_no_actions() -> None:
    m = group_metrics.GroupMetrics(REGION, variant="candidate", actions=None)
    m.record_batch(["us", "us"], None)
    s = _render(m)
    assert metric(s, "policy_group_decisions_total", group="us") == 2
    assert not any(k.startswith("policy_group_actions") for k in s)


def test_the_workers_merge_sums_the_group_series() -> None:
    one, two = _metrics(), _metrics()
    one.record_batch(["eu"], np.array([0]))
    two.record_batch(["eu", "eu"], np.array([1, 0]))
    one.record_reward("eu", 1.0, None, "candidate")
    two.record_reward("eu", 3.0, None, "candidate")
    texts = []
    for m in (one, two):
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(m)
        texts.append((generate_latest(registry).decode(), True))
    merged = parse_metrics(worker_metrics.merge(texts).decode())
    assert metric(merged, "policy_group_decisions_total", group="eu") == 3
    assert metric(merged, "policy_group_actions_total", group="eu", action="0") == 2
    assert metric(merged, "policy_group_reward_sum", group="eu") == 4.0
    assert metric(merged, "policy_group_reward_count", group="eu") == 2


# ------------------------------------------------------------------ the server


@pytest.mark.integration
def test_a_reward_posted_to_another_variant_counts_under_the_deciding_variant_and_group(tmp_path) -> None:
    spec = groups.parse(fair_policy.GROUP_KEY, fair_policy.GROUPS)
    rng = np.random.default_rng(0)
    with (
        running(fair_policy.write(tmp_path / "u", "unfair"), reward_keys=KEY, variant="candidate", groups=spec) as c,
        running(fair_policy.write(tmp_path / "f", "fair"), reward_keys=KEY, variant="stable", groups=spec) as s,
    ):
        cand, stable = c.client(), s.client()
        for group in ("a", "b", "b", "nowhere"):
            obs, context = fair_policy.request(group, rng)
            body = cand.act(obs, context=context)
            assert attribution.verify(KEY, body["request_id"]).extra("g") == ("other" if group == "nowhere" else group)
            status, _ = stable.post("/v1/reward", {"request_id": body["request_id"], "reward": 1.0 - body["action"]})
            assert status == 202
        chosen = cand.act([1.0, 0.0], request_id="mine", context={"region": "b"})
        assert attribution.verify(KEY, chosen["reward_id"]).extra("g") == "b"
        plain = stable.act([0.0, 0.0])  # no context: other, and still a group in the id
        assert attribution.verify(KEY, plain["request_id"]).extras == (("g", "other"),)
        got = stable.metrics()
        assert metric(got, "policy_group_reward_sum", variant="candidate", group="a") == 1.0
        assert metric(got, "policy_group_reward_sum", variant="candidate", group="b") == 0.0
        assert metric(got, "policy_group_reward_count", variant="candidate", group="b") == 2
        assert metric(got, "policy_group_reward_count", variant="candidate", group="other") == 1
        own = cand.metrics()
        assert metric(own, "policy_group_decisions_total", variant="candidate", group="b") == 3
        assert metric(own, "policy_group_actions_total", variant="candidate", group="b", action="1") == 3


@pytest.mark.integration
def test_a_value_predicting_policy_signs_its_group_and_its_value_in_one_id(tmp_path) -> None:
    with running(write_q_artifact(tmp_path / "q"), reward_keys=KEY, groups=REGION) as srv:
        body = srv.client().act([0.5, -1.0], context={"region": "us"})
        found = attribution.verify(KEY, body["request_id"])
        assert [k for k, _ in found.extras] == ["g", "v"] and found.extra("g") == "us"
        assert float(found.extra("v")) == pytest.approx(body["predicted_value"], rel=1e-5)
        chosen = srv.client().act([0.5, -1.0], request_id="c-1", context={"region": 7})
        assert attribution.verify(KEY, chosen["reward_id"]).extra("g") == "7"
    with running(write_q_artifact(tmp_path / "q2"), reward_keys=KEY) as srv:  # no groups: the critic's v only
        assert [k for k, _ in attribution.verify(KEY, srv.client().act([0.0, 0.0])["request_id"]).extras] == ["v"]


@pytest.mark.integration
def test_a_continuous_policy_served_with_groups_counts_decisions_and_rewards_by_group(tmp_path, models) -> None:
    with running(models(kind="continuous"), reward_keys=KEY, groups=REGION) as srv:
        c = srv.client()
        body = c.act([0.0] * 8, context={"region": "eu"})
        assert isinstance(body["action"], list)
        status, _ = c.post("/v1/reward", {"request_id": body["request_id"], "reward": 0.5, "costs": {"risk": 2.0}})
        assert status == 202
        got = c.metrics()
    assert metric(got, "policy_group_decisions_total", group="eu") == 1
    assert metric(got, "policy_group_reward_sum", group="eu") == 0.5
    assert metric(got, "policy_group_cost_sum", group="eu", cost="risk") == 2.0
    assert not any(k.startswith("policy_group_actions") for k in got)
