"""The policy server over real HTTP (in-thread server on a loopback port): API, formats, propensities,
readiness, metrics pre-initialisation, OpenAPI."""

from __future__ import annotations

import threading
from collections import Counter

import jsonschema
import numpy as np
import pytest
import torch

from policy_server import artifact, openapi, policy
from tests.support.policy_server import metric, running, write_custom_artifact

pytestmark = pytest.mark.integration

OBS = [0.3, -1.2, 0.5, 0.0, 1.1, -0.4, 0.9, -0.7]


def _schema(name: str) -> dict:
    doc = openapi.document()
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


def test_model_act_reward_roundtrip(models) -> None:
    with running(models(), variant="canary", seed=1) as srv:
        c = srv.client()
        status, model = c.get("/v1/model")
        assert status == 200
        jsonschema.validate(model, _schema("Model"))
        assert model["name"] == "example-policy" and model["version"] == "v1" and model["variant"] == "canary"
        assert model["observation"]["shape"] == [8] and model["action"] == {"type": "discrete", "n": 4}
        assert model["exploration"]["kind"] == "softmax"

        body = c.act(OBS, request_id="r-1", context={"user": "u7"})
        jsonschema.validate(body, _schema("ActResponse"))
        assert body["request_id"] == "r-1" and body["policy_version"] == "v1" and body["variant"] == "canary"
        assert body["action"] in range(4) and 0 < body["propensity"] <= 1
        assert body["shield"] == {"intervened": False, "reasons": []}

        generated = {c.act(OBS)["request_id"] for _ in range(20)}
        assert len(generated) == 20  # unique ids when the client sends none

        assert (
            c.post("/v1/reward", {"request_id": "r-1", "reward": -1.5, "costs": {"latency": 2.0, "risk": 0}})[0] == 202
        )
        status, err = c.post("/v1/reward", {"request_id": "r-1", "reward": 1})
        assert status == 409 and "already recorded" in err["error"]
        status, err = c.post("/v1/reward", {"request_id": "nope", "reward": 1})
        assert status == 404 and "unknown request_id" in err["error"]
        status, err = c.post("/v1/act", {"observation": OBS, "request_id": "r-1"})
        assert status == 409 and "already used" in err["error"]

        m = c.metrics()
        assert metric(m, "policy_reward_sum", variant="canary") == -1.5
        assert metric(m, "policy_reward_count", variant="canary") == 1
        assert metric(m, "policy_cost_sum", variant="canary", cost="latency") == 2.0
        assert metric(m, "policy_constraint_violations_total", variant="canary", cost="latency") == 1
        assert metric(m, "policy_constraint_violations_total", variant="canary", cost="risk") == 0
        assert metric(m, "policy_errors_total", variant="canary", reason="unknown_request_id") == 1
        assert metric(m, "policy_errors_total", variant="canary", reason="duplicate_request_id") == 2
        decided = sum(metric(m, "policy_decisions_total", variant="canary", action=str(a)) for a in range(4))
        assert decided == 21
        assert metric(m, "policy_decision_latency_seconds_count", variant="canary") == 21
        assert metric(m, "policy_info", variant="canary", version="v1", name="example-policy") == 1


def test_metrics_preinitialised(models) -> None:
    costs = ["latency", "risk"]
    with running(models(costs=costs), variant="v") as srv:
        m = srv.client().metrics()
    for a in range(4):
        assert metric(m, "policy_decisions_total", variant="v", action=str(a)) == 0
    for reason in ("action_mask", "bounds", "max_delta", "non_finite_output", "latency_budget"):
        assert metric(m, "policy_shield_interventions_total", variant="v", reason=reason) == 0
    for reason in ("bad_request", "body_too_large", "not_found", "method_not_allowed", "unknown_request_id",
                   "duplicate_request_id", "not_ready", "internal"):  # fmt: skip
        assert metric(m, "policy_errors_total", variant="v", reason=reason) == 0
    for cost in costs:
        assert metric(m, "policy_cost_sum", variant="v", cost=cost) == 0
        assert metric(m, "policy_cost_count", variant="v", cost=cost) == 0
        assert metric(m, "policy_constraint_violations_total", variant="v", cost=cost) == 0
    for f in range(8):
        assert metric(m, "policy_observation_drift_psi", variant="v", feature=f"f{f}") == 0
    assert metric(m, "policy_observation_drift_psi_max", variant="v") == 0
    assert metric(m, "policy_reward_count", variant="v") == 0
    assert metric(m, "policy_decision_latency_seconds_bucket", variant="v", le="0.0001") == 0
    assert metric(m, "policy_batch_size_count", variant="v") == 0


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_act_formats_match_local_policy(models, fmt: str, kind: str) -> None:
    """Greedy decisions over HTTP equal the model's own output for both formats and action kinds."""
    path = models(kind=kind, format=fmt, n_actions=3, exploration={"kind": "greedy"})
    local = policy.Policy.from_artifact(artifact.load_artifact(str(path)))
    obs = np.random.default_rng(5).standard_normal((10, 8)).astype(np.float32)
    expected = local.decide(obs, np.random.default_rng(0))
    with running(path) as srv:
        c = srv.client()
        for row, want in zip(obs.tolist(), expected.actions, strict=True):
            body = c.act(row)
            assert body["propensity"] == 1.0
            if kind == "discrete":
                assert body["action"] == int(want)
            else:
                assert np.allclose(body["action"], want, atol=1e-5) and len(body["action"]) == 3


@pytest.mark.parametrize(
    "exploration",
    [{"kind": "epsilon_greedy", "epsilon": 0.3}, {"kind": "softmax", "temperature": 0.5}, {"kind": "greedy"}],
)
def test_propensities_match_empirical_frequencies(models, exploration: dict) -> None:
    path = models(exploration=exploration)
    local = policy.Policy.from_artifact(artifact.load_artifact(str(path)))
    p = policy.discrete_probabilities(
        local.forward(np.array([OBS], np.float32)), artifact.Exploration(**exploration), None
    )[0]
    n = 1500
    with running(path, seed=3) as srv:
        c = srv.client()
        answers = [c.act(OBS) for _ in range(n)]
    counts = Counter(a["action"] for a in answers)
    for a in answers:  # the reported propensity is exactly the rule's probability of that action
        assert a["propensity"] == pytest.approx(p[a["action"]], rel=1e-9)
    for action in range(4):  # and the server samples with those probabilities (4.5 sigma)
        sigma = np.sqrt(p[action] * (1 - p[action]) / n)
        assert abs(counts[action] / n - p[action]) <= 4.5 * sigma + 1e-12


def test_continuous_gaussian_propensity_is_density(models) -> None:
    path = models(kind="continuous", n_actions=2)
    local = policy.Policy.from_artifact(artifact.load_artifact(str(path)))
    mean = local.forward(np.array([OBS], np.float32)).astype(np.float64)[0]
    std = np.exp(-1.0)
    with running(path, seed=4) as srv:
        c = srv.client()
        for _ in range(50):
            body = c.act(OBS)
            a = np.array(body["action"])
            assert np.all(a >= -1) and np.all(a <= 1)
            if np.all(np.abs(a) < 1):  # not clipped: a Gaussian density
                dens = np.prod(np.exp(-0.5 * ((a - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi)))
                assert body["propensity"] == pytest.approx(dens, rel=1e-4)


def test_readyz_waits_for_load_and_warmup(models) -> None:
    release = threading.Event()

    def slow_loader(url: str, device: str) -> artifact.LoadedArtifact:
        assert release.wait(30)
        return artifact.load_artifact(url, device)

    with running(models(), loader=slow_loader, ready=False) as srv:
        c = srv.client()
        assert c.get("/healthz")[0] == 200
        status, body = c.get("/readyz")
        assert (status, body["status"]) == (503, "loading")
        status, body = c.post("/v1/act", {"observation": OBS})
        assert status == 503 and "retry when GET /readyz" in body["error"]
        assert c.get("/v1/model")[0] == 503
        release.set()
        srv.wait_ready()
        assert c.get("/readyz") == (200, {"status": "ready"})
        assert c.act(OBS)["action"] in range(4)


def test_failed_load_is_reported(tmp_path) -> None:
    with running(tmp_path / "missing", ready=False) as srv:
        with pytest.raises(artifact.ArtifactError, match=r"no manifest\.json"):
            srv.wait_ready()
        status, body = srv.client().get("/readyz")
        assert status == 503 and body["status"] == "failed" and "manifest.json" in body["error"]


def test_openapi_describes_every_route(models) -> None:
    with running(models()) as srv:
        status, doc = srv.client().get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/v1/model",
        "/v1/act",
        "/v1/reward",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }
    assert set(doc["paths"]["/v1/act"]) == {"post"} and set(doc["paths"]["/v1/model"]) == {"get"}
    jsonschema.Draft202012Validator.check_schema(doc["components"]["schemas"]["ActRequest"])
    jsonschema.validate({"request_id": "x", "reward": 1.0, "costs": {"c": 1}}, _schema("RewardRequest"))


def test_concurrent_requests_share_batches(models) -> None:
    """Many clients at once: every request answered once with its own id; no batch exceeds max_batch."""
    with running(models(), max_batch=8, seed=2) as srv:
        results: dict[str, dict] = {}
        lock = threading.Lock()

        def worker(k: int) -> None:
            c = srv.client()
            for i in range(40):
                body = c.act(OBS, request_id=f"w{k}-{i}")
                with lock:
                    results[body["request_id"]] = body

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        m = srv.client().metrics()
    assert set(results) == {f"w{k}-{i}" for k in range(6) for i in range(40)}
    assert metric(m, "policy_batch_size_sum", variant="default") == 240
    count = metric(m, "policy_batch_size_count", variant="default")
    assert metric(m, "policy_batch_size_bucket", variant="default", le="8.0") == count


class _Flatten(torch.nn.Module):
    """A policy over (2, 4) observations: flattens, then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def test_multi_dimensional_observation(tmp_path) -> None:
    manifest = {
        "observation": {"shape": [2, 4]},
        "action": {"type": "discrete", "n": 3},
        "output": "q_values",
        "exploration": {"kind": "epsilon_greedy", "epsilon": 0.3},
    }
    path = write_custom_artifact(tmp_path / "m2d", _Flatten(), manifest)
    with running(path) as srv:
        c = srv.client()
        body = c.act([[1, 2, 3, 4], [5, 6, 7, 8.5]])
        assert body["action"] in range(3) and body["propensity"] in (pytest.approx(0.1), pytest.approx(0.8))
        status, err = c.post("/v1/act", {"observation": [1, 2, 3, 4, 5, 6, 7, 8]})
        assert status == 400 and "'observation' has 8 elements, expected 2 (shape [2, 4])" in err["error"]
        status, err = c.post("/v1/act", {"observation": [1, 2]})
        assert status == 400 and "'observation[0]' must be an array of 4 elements, got int" in err["error"]
        status, err = c.post("/v1/act", {"observation": [[1, 2, 3, 4], [5, 6, "7", 8]]})
        assert status == 400 and "'observation[1][2]' is string" in err["error"]
        status, err = c.post("/v1/act", {"observation": [[1, 2, 3, 4]]})
        assert status == 400 and "has 1 elements, expected 2" in err["error"]
        assert c.get("/readyz")[0] == 200
