"""The offline gate's fairness criterion (policy_server/ope/fairness.py): per-group estimates with Bonferroni
intervals, the disparity judged on its upper bound, refusal on thin support; and `policy-server ope` on a
decision log written by a real policy server refusing an unfair candidate and passing a fair one."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from policy_server import attribution, groups
from policy_server.ope import fairness
from policy_server.ope._checks import OPEError
from policy_server.ope.logged import LoggedData
from tests.support import fair_policy
from tests.support.policy_server import running

KEY = attribution.RewardKeys.parse("fair-gate-" * 4)


def _log(actions: list[int], rewards: list[float], regions: list[str]) -> LoggedData:
    n = len(actions)
    return LoggedData(
        observations=np.zeros((n, 2), dtype=np.float32),
        actions=np.array(actions, dtype=np.int64),
        propensities=np.full(n, 0.5),
        rewards=np.array(rewards, dtype=np.float64),
        behavior_dist=np.full((n, 2), 0.5),
        n_actions=2,
        contexts=[json.dumps({"region": r}) for r in regions],
    )


def _judge(data: LoggedData, candidate: np.ndarray, **criterion: object) -> dict:
    crit = fairness.FairnessCriterion(group_key="region", **criterion)  # type: ignore[arg-type]
    labels, spec = fairness.group_labels(data.contexts or [], crit)
    return fairness.evaluate_fairness(data, candidate, labels, spec, crit)


def _t_interval(x: np.ndarray, delta: float) -> tuple[float, float]:
    half = stats.t.ppf(1 - delta, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return x.mean() - half, x.mean() + half


def test_per_group_snips_and_the_difference_bound_match_a_hand_computation() -> None:
    # group a: the candidate's action 0 was logged 3 times (rewards 1, 0.8, 0.6) and action 1 once;
    # group b: action 0 twice (0.2, 0.4), action 1 twice. The candidate always takes action 0 (weight 2).
    data = _log(
        [0, 0, 0, 1, 0, 0, 1, 1],
        [1.0, 0.8, 0.6, 5.0, 0.2, 0.4, 5.0, 5.0],
        ["a", "a", "a", "a", "b", "b", "b", "b"],
    )
    candidate = np.tile([1.0, 0.0], (8, 1))
    got = _judge(data, candidate, max=10.0, min_group_ess=1.0, confidence=0.9)
    delta = 0.1 / 4  # two groups, both sides
    # SNIPS contributions w r / mean(w): a: mean w = 1.5; b: mean w = 1
    xa = np.array([2 * 1.0, 2 * 0.8, 2 * 0.6, 0.0]) / 1.5
    xb = np.array([2 * 0.2, 2 * 0.4, 0.0, 0.0]) / 1.0
    (la, ua), (lb, ub) = _t_interval(xa, delta), _t_interval(xb, delta)
    by = {g["group"]: g for g in got["groups"]}
    assert by["a"]["value"] == pytest.approx(0.8) and by["b"]["value"] == pytest.approx(0.3)
    assert (by["a"]["lower"], by["a"]["upper"]) == (pytest.approx(la, rel=1e-5), pytest.approx(ua, rel=1e-5))
    assert by["a"]["ess"] == pytest.approx(3.0) and by["b"]["ess"] == pytest.approx(2.0)  # Kish: (sum w)^2/sum w^2
    assert got["disparity"] == pytest.approx(0.5)
    assert got["bound"] == pytest.approx(max(ua, ub) - min(la, lb), rel=1e-5)
    assert got["verdict"] == "pass"


def test_action_rate_needs_no_weights_and_a_ratio_bound() -> None:
    data = _log([0, 1] * 4, [0.0] * 8, ["a"] * 4 + ["b"] * 4)
    candidate = np.array([[0.9, 0.1]] * 2 + [[0.7, 0.3]] * 2 + [[0.5, 0.5]] * 4)
    got = _judge(data, candidate, metric="action-rate", action=0, mode="ratio", max=100.0, min_group_ess=1.0)
    by = {g["group"]: g for g in got["groups"]}
    assert by["a"]["value"] == pytest.approx(0.8) and by["b"]["n"] == 4 and by["b"]["ess"] == 4
    assert by["b"]["lower"] == by["b"]["upper"] == pytest.approx(0.5)  # no spread: a point
    assert got["disparity"] == pytest.approx(0.8 / 0.5)
    assert got["bound"] == pytest.approx(by["a"]["upper"] / 0.5, rel=1e-5)


def test_too_little_support_in_one_group_refuses_and_names_it() -> None:
    data = _log([0] * 10 + [0, 1], [1.0] * 12, ["a"] * 10 + ["b"] * 2)
    got = _judge(data, np.tile([1.0, 0.0], (12, 1)), max=0.5, min_group_ess=5.0)
    assert got["verdict"] == "refuse" and "'b' (ESS 1.0, 2 decisions)" in got["reason"]
    lone = _judge(_log([0] * 6, [1.0] * 6, ["a"] * 6), np.tile([1.0, 0.0], (6, 1)), max=0.5, min_group_ess=1.0)
    assert lone["verdict"] == "refuse" and "a disparity needs two" in lone["reason"]


def test_a_disparity_beyond_the_allowed_one_fails_and_the_gate_result_takes_the_worst_verdict() -> None:
    rng = np.random.default_rng(3)
    regions = ["a", "b"] * 200
    actions = rng.integers(0, 2, 400).tolist()
    rewards = [1.0 if a == 0 else 0.0 for a in actions]
    candidate = np.array([[1.0, 0.0] if r == "a" else [0.0, 1.0] for r in regions])  # b gets the bad action
    got = _judge(_log(actions, rewards, regions), candidate, max=0.2)
    assert got["verdict"] == "fail" and got["disparity"] == pytest.approx(1.0)
    assert "'a' 1 vs 'b' 0" in got["reason"] and "exceeds the allowed 0.2" in got["reason"]
    merged = fairness.apply({"verdict": "pass", "reason": "snips: fine"}, got)
    assert merged["verdict"] == "fail" and merged["reason"].startswith("fairness: ")
    kept = fairness.apply({"verdict": "refuse", "reason": "ESS low"}, got)
    assert kept["verdict"] == "refuse" and kept["reason"] == "ESS low"


def test_groups_default_to_the_logs_values_and_bad_criteria_are_one_line() -> None:
    data = _log([0] * 4, [1.0] * 4, ["x", "y", "x", "z=1"])
    labels, spec = fairness.group_labels(data.contexts or [], fairness.FairnessCriterion("region"))
    assert spec.groups == ("x", "y") and labels == ["x", "y", "x", "other"]  # 'z=1' is no group name
    for bad, message in (
        ({"metric": "cost"}, "needs --fairness-cost"),
        ({"metric": "action-rate"}, "needs --fairness-action"),
        ({"mode": "max"}, "difference or ratio"),
        ({"max": -1.0}, ">= 0"),
    ):
        with pytest.raises(OPEError, match=message):
            fairness.FairnessCriterion("region", **bad)  # type: ignore[arg-type]
    with pytest.raises(OPEError, match=r"no logged decision has a usable context\.country"):
        fairness.group_labels(data.contexts or [], fairness.FairnessCriterion("country"))


# ------------------------------------------------------------------ a log written by a real policy server


def _wait_for_segments(log_dir: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(log_dir.rglob("*.parquet")):
        assert time.monotonic() < deadline, f"no Parquet segments under {log_dir}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served_log(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """600 decisions of the uniform explorer, 300 per region, each rewarded over HTTP (with noise)."""
    root = tmp_path_factory.mktemp("fair-log")
    spec = groups.parse(fair_policy.GROUP_KEY, fair_policy.GROUPS)
    log_dir = root / "log"
    rng = np.random.default_rng(7)
    explorer = fair_policy.write(root / "explorer", "explorer")
    with running(explorer, reward_keys=KEY, variant="stable", groups=spec, log_dir=str(log_dir), seed=1) as srv:
        client = srv.client()
        for i in range(600):
            obs, context = fair_policy.request(fair_policy.GROUPS[i % 2], rng)
            body = client.act(obs, context=context)
            reward = fair_policy.reward(body["action"], rng, noise=0.2)
            status, _ = client.post("/v1/reward", {"request_id": body["request_id"], "reward": reward})
            assert status == 202
    _wait_for_segments(log_dir)
    return {
        "log": log_dir,
        "explorer": explorer,
        "fair": fair_policy.write(root / "fair", "fair"),
        "unfair": fair_policy.write(root / "unfair", "unfair"),
    }


def _ope(served_log: dict[str, Path], candidate: str, tmp_path: Path, *extra: str) -> dict:
    from policy_server import cli

    out = tmp_path / f"{candidate}.json"
    args = [
        "ope", "--logs", str(served_log["log"]), "--policy", str(served_log[candidate]), "--baseline", "logged",
        "--estimators", "snips", "--bound", "student_t", "--min-ess", "20", "--min-lower-bound-delta=-10",
        "--fairness-group-key", "region", "--fairness-max", "0.3", "--write-result", str(out), *extra,
    ]  # fmt: skip
    assert cli.main(args) == 0
    return json.loads(out.read_text())


@pytest.mark.integration
def test_the_gate_fails_a_candidate_that_favours_one_group_on_a_served_log(served_log, tmp_path) -> None:
    result = _ope(served_log, "unfair", tmp_path, "--fairness-groups", "a,b")
    assert result["verdict"] == "fail" and result["reason"].startswith("fairness: ")
    fair = result["fairness"]
    by = {g["group"]: g for g in fair["groups"]}
    assert by["a"]["value"] == pytest.approx(1.0, abs=0.1) and by["b"]["value"] == pytest.approx(0.0, abs=0.1)
    assert fair["bound"] > fair["disparity"] > 0.8 and "'a'" in result["reason"] and "'b'" in result["reason"]


@pytest.mark.integration
def test_the_gate_passes_a_fair_candidate_and_refuses_on_thin_group_support(served_log, tmp_path) -> None:
    result = _ope(served_log, "fair", tmp_path)  # groups: the log's own values
    assert result["verdict"] == "pass", result["reason"]
    assert result["fairness"]["verdict"] == "pass" and result["fairness"]["bound"] < 0.3
    assert {g["group"] for g in result["fairness"]["groups"]} == {"a", "b"}
    thin = _ope(served_log, "fair", tmp_path, "--fairness-min-group-ess", "1000")
    assert thin["verdict"] == "refuse" and "minGroupEss 1000" in thin["reason"]
