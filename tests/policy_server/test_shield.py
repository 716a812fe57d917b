"""Safety shield: each reason triggered over HTTP and counted in /metrics; pure unit checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from policy_server import artifact, policy, shield
from tests.support.policy_server import metric, pipelined_acts, running, write_custom_artifact

OBS = [0.3, -1.2, 0.5, 0.0, 1.1, -0.4, 0.9, -0.7]
GREEDY = {"kind": "greedy"}


def _local(path: Path) -> policy.Policy:
    return policy.Policy.from_artifact(artifact.load_artifact(str(path)))


def _greedy_action(path: Path, obs: list[float]) -> int:
    return int(np.argmax(_local(path).forward(np.array([obs], np.float32))[0]))


@pytest.mark.integration
def test_action_mask_artifact_and_request(models, tmp_path: Path) -> None:
    free = _greedy_action(models(exploration=GREEDY), OBS)
    mask = [a != free for a in range(4)]
    path = artifact.write_example_model(tmp_path / "m", exploration=GREEDY, shield={"action_mask": mask})
    with running(path, variant="s") as srv:
        c = srv.client()
        body = c.act(OBS)
        assert body["action"] != free and mask[body["action"]]
        assert body["shield"] == {"intervened": True, "reasons": ["action_mask"]}
        assert body["propensity"] == 1.0  # greedy over the allowed actions
        only = next(a for a in range(4) if mask[a] and a != body["action"])
        body = c.act(OBS, context={"action_mask": [a == only for a in range(4)]})
        assert body["action"] == only and body["shield"]["reasons"] == ["action_mask"]
        status, err = c.post("/v1/act", {"observation": OBS, "context": {"action_mask": [a == free for a in range(4)]}})
        assert status == 400 and "allows no action" in err["error"]
        m = c.metrics()
    assert metric(m, "policy_shield_interventions_total", variant="s", reason="action_mask") == 2


@pytest.mark.integration
def test_softmax_mask_renormalises_propensity(models) -> None:
    path = models(exploration={"kind": "softmax"})
    raw = _local(path).forward(np.array([OBS], np.float32)).astype(np.float64)[0]
    allowed = [True, False, True, False]
    with running(path, seed=0) as srv:
        c = srv.client()
        for _ in range(30):
            body = c.act(OBS, context={"action_mask": allowed})
            a = body["action"]
            assert a in (0, 2)
            assert body["propensity"] == pytest.approx(np.exp(raw[a]) / (np.exp(raw[0]) + np.exp(raw[2])), rel=1e-6)


@pytest.mark.integration
def test_bounds_clip_continuous(tmp_path: Path) -> None:
    path = artifact.write_example_model(
        tmp_path / "m",
        kind="continuous",
        n_actions=3,
        exploration=GREEDY,
        shield={"low": [-0.01] * 3, "high": [0.01] * 3},
    )
    mean = _local(path).forward(np.array([OBS], np.float32))[0]
    assert np.any(np.abs(mean) > 0.01)  # the example model's mean leaves the shield's box
    with running(path, variant="s") as srv:
        c = srv.client()
        body = c.act(OBS)
        assert np.allclose(body["action"], np.clip(mean, -0.01, 0.01), atol=1e-6)
        assert body["shield"]["reasons"] == ["bounds"] and body["propensity"] == 1.0
        m = c.metrics()
    assert metric(m, "policy_shield_interventions_total", variant="s", reason="bounds") == 1


@pytest.mark.integration
def test_max_delta_per_entity(tmp_path: Path) -> None:
    path = artifact.write_example_model(tmp_path / "m", exploration=GREEDY, shield={"max_delta": 0})
    local = _local(path)
    obs = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    greedy = np.argmax(local.forward(obs), axis=1)
    first, second = obs[0].tolist(), obs[int(np.nonzero(greedy != greedy[0])[0][0])].tolist()
    with running(path, variant="s") as srv:
        c = srv.client()
        a1 = c.act(first, context={"entity": "user-1"})
        assert a1["action"] == greedy[0] and not a1["shield"]["intervened"]
        a2 = c.act(second, context={"entity": "user-1"})
        assert a2["action"] == a1["action"] and a2["shield"]["reasons"] == ["max_delta"]
        other = c.act(second, context={"entity": 42})  # another entity is not held back
        assert other["action"] != a1["action"] and not other["shield"]["intervened"]
        m = c.metrics()
    assert metric(m, "policy_shield_interventions_total", variant="s", reason="max_delta") == 1


@pytest.mark.integration
def test_max_delta_holds_between_two_decisions_in_one_micro_batch(tmp_path: Path) -> None:
    """Pipelined requests share a micro-batch; the second must be bounded by the first, not by the state before."""
    path = artifact.write_example_model(tmp_path / "m", exploration=GREEDY, shield={"max_delta": 0})
    obs = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    greedy = np.argmax(_local(path).forward(obs), axis=1)
    first, second = obs[0].tolist(), obs[int(np.nonzero(greedy != greedy[0])[0][0])].tolist()
    payloads = [{"observation": o, "context": {"entity": "user-1"}} for o in (first, second)]
    with running(path, variant="s") as srv:
        answers = pipelined_acts(srv.port, payloads)
    assert [a["action"] for a in answers] == [greedy[0], greedy[0]]
    assert answers[1]["shield"]["reasons"] == ["max_delta"]


class _NanWhenLarge(torch.nn.Module):
    """Logits, except NaN for rows whose first feature is > 100 (a broken model region)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return torch.where(x[:, :1] > 100, torch.full_like(y, float("nan")), y)


@pytest.mark.integration
def test_non_finite_output_falls_back(tmp_path: Path) -> None:
    manifest = {
        "observation": {"shape": [8]},
        "action": {"type": "discrete", "n": 4},
        "output": "logits",
        "exploration": {"kind": "softmax"},
        "shield": {"fallback_action": 2},
    }
    path = write_custom_artifact(tmp_path / "nan", _NanWhenLarge(), manifest)
    with running(path, variant="s") as srv:
        c = srv.client()
        body = c.act([1000.0, *OBS[1:]])
        assert body == {**body, "action": 2, "propensity": 1.0}
        assert body["shield"]["reasons"] == ["non_finite_output"]
        assert c.act(OBS)["shield"]["intervened"] is False
        m = c.metrics()
    assert metric(m, "policy_shield_interventions_total", variant="s", reason="non_finite_output") == 1


@pytest.mark.integration
def test_latency_budget_falls_back(models) -> None:
    with running(models(), variant="s", latency_budget_ms=1e-6) as srv:
        c = srv.client()
        for _ in range(3):
            body = c.act(OBS)
            assert body["action"] == 0 and body["propensity"] == 1.0  # no fallback_action: lowest allowed index
            assert body["shield"]["reasons"] == ["latency_budget"]
        m = c.metrics()
    assert metric(m, "policy_shield_interventions_total", variant="s", reason="latency_budget") == 3


# ---------------------------------------------------------------------------------------------- unit


def test_continuous_max_delta_and_bounds_attribution(tmp_path: Path) -> None:
    path = artifact.write_example_model(
        tmp_path / "m", kind="continuous", n_actions=2, exploration=GREEDY, shield={"max_delta": 0.05}
    )
    pol = _local(path)
    sh = shield.Shield(pol)
    raw = np.array([[0.0, 0.0]], np.float32)
    r1 = sh.run(raw, np.random.default_rng(0), masks=[None], entities=["e"])
    assert r1.reasons == [()]
    r2 = sh.run(np.array([[0.5, -2.0]], np.float32), np.random.default_rng(0), masks=[None], entities=["e"])
    assert np.allclose(r2.decision.actions, [[0.05, -0.05]])
    assert r2.reasons == [("bounds", "max_delta")]  # -2 is outside the action space, 0.5 only outside the delta
    assert r2.counts == {"bounds": 1, "max_delta": 1}


def test_gaussian_clip_propensity_uses_shield_bounds(tmp_path: Path) -> None:
    path = artifact.write_example_model(
        tmp_path / "m", kind="continuous", n_actions=1, shield={"low": [-0.1], "high": [0.1]}
    )
    pol = _local(path)
    sh = shield.Shield(pol)
    raw = np.full((4000, 1), 0.5, np.float32)  # mean far above the box: most draws clip to 0.1
    res = sh.run(raw, np.random.default_rng(1), masks=[None] * 4000, entities=[None] * 4000)
    from math import erfc, sqrt

    std = np.exp(-1.0)
    upper = 0.5 * erfc((0.1 - 0.5) / (std * sqrt(2)))  # P(x >= 0.1)
    lower = 0.5 * erfc((0.5 + 0.1) / (std * sqrt(2)))  # P(x <= -0.1)
    at_high = res.decision.actions[:, 0] == np.float32(0.1)
    at_low = res.decision.actions[:, 0] == np.float32(-0.1)
    assert np.allclose(res.decision.propensities[at_high], upper)
    assert np.allclose(res.decision.propensities[at_low], lower)
    assert at_high.mean() == pytest.approx(upper, abs=0.025) and at_low.mean() == pytest.approx(lower, abs=0.015)
    assert res.counts["bounds"] == int(at_high.sum() + at_low.sum())


def test_mask_then_delta_infeasible_keeps_mask(tmp_path: Path) -> None:
    path = artifact.write_example_model(tmp_path / "m", exploration=GREEDY, shield={"max_delta": 1})
    sh = shield.Shield(_local(path))
    raw = np.array([[0.0, 0.0, 0.0, 5.0]], np.float32)
    sh.run(np.array([[5.0, 0, 0, 0]], np.float32), np.random.default_rng(0), masks=[None], entities=["e"])  # last = 0
    # delta allows {0, 1}, the request mask allows only {3}: the mask wins, the delta limit is skipped
    res = sh.run(raw, np.random.default_rng(0), masks=[np.array([False, False, False, True])], entities=["e"])
    assert res.decision.actions.tolist() == [3] and res.reasons == [()]


def test_entity_lru_is_bounded(models) -> None:
    sh = shield.Shield(_local(models(exploration=GREEDY)), entity_capacity=10)
    raw = np.zeros((25, 4), np.float32)
    sh.run(raw, np.random.default_rng(0), masks=[None] * 25, entities=[f"e{i}" for i in range(25)])
    assert len(sh._last) == 10 and "e24" in sh._last and "e0" not in sh._last
