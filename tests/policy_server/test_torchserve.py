"""TorchServe compatibility: the .mar recipe, the handler behind a real TorchServe, parity with ``policy-server serve``.

Both servers run for real on loopback and get the same 200 observations over HTTP; their decisions must agree
(actions exactly, propensities and probabilities to 1e-6) and match the in-process `Policy`.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from policy_server import artifact, policy
from policy_server.torchserve import archive
from policy_server.torchserve.runner import TorchServe

N_OBS = 200
SHIELD = {"action_mask": [True, True, True, False], "fallback_action": 0}


@pytest.fixture(scope="module")
def observations() -> np.ndarray:
    return np.random.default_rng(42).standard_normal((N_OBS, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {
        kind: artifact.write_example_model(
            root / kind, exploration={"kind": kind}, shield=SHIELD, version=f"{kind}-v1", seed=3
        )
        for kind in ("greedy", "softmax")
    }


@pytest.fixture(scope="module")
def torchserve(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """One TorchServe; the greedy policy batches up to 8 requests, the softmax one answers one at a time."""
    store = tmp_path_factory.mktemp("model-store")
    for kind, path in artifacts.items():
        archive.build_mar(path, store, model_name=kind)
    ts = TorchServe(model_store=store, startup_timeout_s=180)
    with ts:
        ts.register("greedy.mar", model_name="greedy", workers=1, batch_size=8, max_batch_delay_ms=20)
        ts.register("softmax.mar", model_name="softmax", workers=1, batch_size=1)
        yield ts


def _post_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[dict[str, Any]]:
    """POST every body (``concurrency`` at a time, so TorchServe can batch them); responses in input order."""
    with httpx.Client(timeout=30) as client:

        def post(body: dict[str, Any]) -> dict[str, Any]:
            response = client.post(url, json=body)
            assert response.status_code == 200, response.text
            return response.json()

        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(post, bodies))


def _bodies(observations: np.ndarray, prefix: str) -> list[dict[str, Any]]:
    return [{"observation": obs.tolist(), "request_id": f"{prefix}-{i}"} for i, obs in enumerate(observations)]


def _expected(path: Path, observations: np.ndarray) -> np.ndarray:
    """Probabilities (N, K) the in-process Policy gives under the manifest's action mask."""
    loaded = artifact.load_artifact(str(path))
    pol = policy.Policy.from_artifact(loaded)
    masks = np.broadcast_to(np.asarray(SHIELD["action_mask"]), (len(observations), 4))
    return pol.decide(observations, np.random.default_rng(0), masks).probabilities


def test_mar_holds_handler_and_artifact(artifacts: dict[str, Path], tmp_path: Path) -> None:
    mar = archive.build_mar(artifacts["greedy"], tmp_path, model_name="p1")
    with zipfile.ZipFile(mar) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        packed = json.loads(zf.read("policy_artifact/manifest.json"))
    assert {"handler.py", "policy_artifact/manifest.json", "policy_artifact/policy.pt"} <= names
    assert manifest["model"]["modelName"] == "p1"
    assert manifest["model"]["modelVersion"] == "greedy-v1"
    assert packed == json.loads((artifacts["greedy"] / "manifest.json").read_text())


def test_mar_refuses_a_directory_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(archive.ArchiveError, match=r"manifest\.json"):
        archive.build_mar(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out" / "policy.mar").exists()


def test_mar_refuses_a_corrupt_program(artifacts: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((artifacts["greedy"] / "manifest.json").read_text())
    (broken / "policy.pt").write_bytes(b"not a model")
    with pytest.raises(artifact.ArtifactError, match="sha256"):
        archive.build_mar(broken, tmp_path / "out")


def test_make_mar_cli(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "policy_server.torchserve.archive", "--artifact", str(artifacts["softmax"]),
         "--out", str(tmp_path), "--name", "cli"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == tmp_path / "cli.mar"
    assert zipfile.is_zipfile(tmp_path / "cli.mar")
    missing = subprocess.run(
        [sys.executable, "-m", "policy_server.torchserve.archive", "--artifact", str(tmp_path / "nope"),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr


@pytest.mark.integration
def test_torchserve_matches_in_process_policy(
    torchserve: TorchServe, artifacts: dict[str, Path], observations: np.ndarray
) -> None:
    """Batched (greedy, 8 concurrent clients) and unbatched (softmax) decisions equal the in-process Policy's."""
    for kind, concurrency in (("greedy", 8), ("softmax", 2)):
        responses = _post_all(torchserve.predictions_url(kind), _bodies(observations, kind), concurrency)
        probabilities = _expected(artifacts[kind], observations)
        assert [r["request_id"] for r in responses] == [f"{kind}-{i}" for i in range(N_OBS)]
        assert {r["policy_version"] for r in responses} == {f"{kind}-v1"}
        assert {r["variant"] for r in responses} == {"torchserve"}
        actions = np.array([r["action"] for r in responses])
        propensities = np.array([r["propensity"] for r in responses])
        assert not (actions == 3).any(), "the shield's action mask forbids action 3"
        np.testing.assert_allclose(propensities, probabilities[np.arange(N_OBS), actions], atol=1e-6)
        np.testing.assert_allclose(np.array([r["probabilities"] for r in responses]), probabilities, atol=1e-6)
        if kind == "greedy":
            np.testing.assert_array_equal(actions, probabilities.argmax(axis=1))
        else:
            assert len(set(actions.tolist())) > 1, "softmax over 200 observations should explore"


@pytest.mark.integration
def test_torchserve_rejects_bad_requests_with_the_field_at_fault(torchserve: TorchServe) -> None:
    url = torchserve.predictions_url("greedy")
    cases = [
        ({"observation": [1.0, 2.0]}, "observation"),
        ({"observation": ["a"] * 8}, "observation"),
        ({"request_id": "x"}, "observation"),
        ({"observation": [0.0] * 8, "request_id": 5}, "request_id"),
        ({"observation": [0.0] * 8, "context": [1]}, "context"),
        ({"observation": [0.0] * 8, "context": {"action_mask": [True]}}, "context.action_mask"),
        # the artifact forbids action 3: a request allowing only 3 leaves nothing
        ({"observation": [0.0] * 8, "context": {"action_mask": [False, False, False, True]}}, "context.action_mask"),
    ]
    with httpx.Client(timeout=30) as client:
        for body, field in cases:
            response = client.post(url, json=body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["field"] == field
        ok = client.post(url, json={"observation": [0.0] * 8})
        assert ok.status_code == 200
        assert ok.json()["request_id"]


@pytest.mark.integration
def test_torchserve_applies_request_masks_through_the_shield(
    torchserve: TorchServe, artifacts: dict[str, Path], observations: np.ndarray
) -> None:
    """context.action_mask narrows the artifact's mask; a changed action is reported as an action_mask reason."""
    request_mask = [False, True, True, True]
    bodies = [{"observation": obs.tolist(), "context": {"action_mask": request_mask}} for obs in observations[:50]]
    responses = _post_all(torchserve.predictions_url("greedy"), bodies, 4)
    loaded = artifact.load_artifact(str(artifacts["greedy"]))
    raw = policy.Policy.from_artifact(loaded).forward(observations[:50])
    allowed = np.asarray(SHIELD["action_mask"]) & np.asarray(request_mask)
    expected = np.where(allowed, raw, -np.inf).argmax(axis=1)
    actions = np.array([r["action"] for r in responses])
    np.testing.assert_array_equal(actions, expected)
    changed = raw.argmax(axis=1) != expected
    assert changed.any(), "pick observations where the mask matters"
    assert [("action_mask" in r["shield"]["reasons"]) for r in responses] == changed.tolist()
