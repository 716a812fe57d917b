"""TorchServe compatibility: the .mar recipe, and the handler in a real TorchServe against ``policy-server serve``.

Both servers run for real on loopback, serve the same artifact and get the same 200 observations over HTTP:
their decisions must agree (actions exactly, propensities to 1e-6) and match the in-process `Policy`.

* greedy: deterministic, so TorchServe may batch (batch size 8, 8 concurrent clients) and still agree;
* softmax: both exploration RNGs seeded alike (``--seed`` / the archive's seed) and one request at a time, so
  both draw the same uniform number for the same observation: same actions, same propensities.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from policy_server import artifact, policy
from policy_server.torchserve import archive
from policy_server.torchserve.runner import TorchServe, TorchServeError, free_port

N_OBS = 200
SEED = 11
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


class _PolicyServer:
    """``policy-server serve`` (decision log on, seeded) in its own process group."""

    def __init__(self, model: Path, workdir: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1/act"
        self.ready_url = f"http://127.0.0.1:{port}/readyz"
        self.log_path = workdir / "policy-server.log"
        command = [
            sys.executable, "-m", "policy_server.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--seed", str(SEED), "--log-dir", str(workdir / "decisions"),
            "--log-level", "WARNING",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, f"policy-server exited:\n{self.log_path.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.ready_url, timeout=2).status_code == 200:
                    return
            assert time.monotonic() < deadline, (
                f"policy-server not ready in {timeout_s} s:\n{self.log_path.read_text()}"
            )
            time.sleep(0.1)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@dataclass
class Servers:
    torchserve: TorchServe
    policy_server: dict[str, str]  # kind -> /v1/act URL


@pytest.fixture(scope="module")
def servers(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """TorchServe and two policy servers, all on loopback, started concurrently and stopped whatever happens.

    TorchServe: greedy batches up to 8 requests; softmax answers one at a time with a seeded RNG.
    """
    store = tmp_path_factory.mktemp("model-store")
    archive.build_mar(artifacts["greedy"], store, model_name="greedy")
    archive.build_mar(artifacts["softmax"], store, model_name="softmax", seed=SEED)
    policy_servers: list[_PolicyServer] = []
    try:
        for kind in ("greedy", "softmax"):
            policy_servers.append(_PolicyServer(artifacts[kind], tmp_path_factory.mktemp(f"ps-{kind}")))
        with TorchServe(model_store=store, startup_timeout_s=180) as ts:
            ts.register("greedy.mar", model_name="greedy", workers=1, batch_size=8, max_batch_delay_ms=20)
            ts.register("softmax.mar", model_name="softmax", workers=1, batch_size=1)
            for server in policy_servers:
                server.wait_ready()
            yield Servers(ts, {"greedy": policy_servers[0].url, "softmax": policy_servers[1].url})
    finally:
        for server in policy_servers:
            server.stop()


def _post_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[dict[str, Any]]:
    """POST every body (``concurrency`` at a time, so servers can batch them); responses in input order."""
    with httpx.Client(timeout=30) as client:

        def post(body: dict[str, Any]) -> dict[str, Any]:
            response = client.post(url, json=body)
            assert response.status_code == 200, response.text
            return response.json()

        if concurrency == 1:
            return [post(body) for body in bodies]
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(post, bodies))


def _bodies(observations: np.ndarray, prefix: str, context: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    extra = {"context": context} if context else {}
    return [{"observation": obs.tolist(), "request_id": f"{prefix}-{i}", **extra} for i, obs in enumerate(observations)]


def _in_process(path: Path, observations: np.ndarray, mask: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(raw model outputs, probabilities under ``mask``) from the in-process Policy."""
    pol = policy.Policy.from_artifact(artifact.load_artifact(str(path)))
    raw = pol.forward(observations)
    masks = np.broadcast_to(np.asarray(mask), raw.shape)
    return raw, policy.discrete_probabilities(raw, pol.exploration, masks)


def _columns(responses: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r["action"] for r in responses]), np.array([r["propensity"] for r in responses])


# --------------------------------------------------------------------------- the archive


def test_mar_holds_handler_artifact_and_settings(artifacts: dict[str, Path], tmp_path: Path) -> None:
    mar = archive.build_mar(artifacts["greedy"], tmp_path, model_name="p1", seed=5)
    with zipfile.ZipFile(mar) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        packed = json.loads(zf.read("policy_artifact/manifest.json"))
        settings = zf.read(manifest["model"]["configFile"]).decode()
    assert {"handler.py", "policy_artifact/manifest.json", "policy_artifact/policy.pt"} <= names
    assert manifest["model"]["modelName"] == "p1"
    assert manifest["model"]["modelVersion"] == "greedy-v1"
    assert packed == json.loads((artifacts["greedy"] / "manifest.json").read_text())
    assert "seed: 5" in settings


def test_mar_refuses_a_directory_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(archive.ArchiveError, match=r"no manifest\.json"):
        archive.build_mar(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out" / "policy.mar").exists()


def test_mar_refuses_a_corrupt_program(artifacts: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((artifacts["greedy"] / "manifest.json").read_text())
    (broken / "policy.pt").write_bytes(b"not a model")
    with pytest.raises(artifact.ArtifactError, match="sha256"):
        archive.build_mar(broken, tmp_path / "out")
    assert not (tmp_path / "out" / "policy.mar").exists()


def test_archive_cli(artifacts: dict[str, Path], tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "policy_server.torchserve.archive"]
    out = subprocess.run(
        [*cli, "--artifact", str(artifacts["softmax"]), "--out", str(tmp_path), "--name", "cli"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == tmp_path / "cli.mar"
    assert zipfile.is_zipfile(tmp_path / "cli.mar")
    missing = subprocess.run(
        [*cli, "--artifact", str(tmp_path / "nope"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr


# --------------------------------------------------------------------------- parity over HTTP


@pytest.mark.integration
def test_greedy_parity_with_batching(servers: Servers, artifacts: dict[str, Path], observations: np.ndarray) -> None:
    """TorchServe batching 8 concurrent requests and policy-server serve the same actions, propensity 1."""
    ts = _post_all(servers.torchserve.predictions_url("greedy"), _bodies(observations, "g"), 8)
    ps = _post_all(servers.policy_server["greedy"], _bodies(observations, "g"), 8)
    ts_actions, ts_props = _columns(ts)
    ps_actions, ps_props = _columns(ps)
    _, probabilities = _in_process(artifacts["greedy"], observations, SHIELD["action_mask"])
    np.testing.assert_array_equal(ts_actions, ps_actions)
    np.testing.assert_array_equal(ts_actions, probabilities.argmax(axis=1))
    np.testing.assert_allclose(ts_props, ps_props, atol=1e-6)
    np.testing.assert_allclose(ts_props, 1.0)
    assert [r["request_id"] for r in ts] == [r["request_id"] for r in ps] == [f"g-{i}" for i in range(N_OBS)]
    assert {r["policy_version"] for r in ts + ps} == {"greedy-v1"}
    assert {r["variant"] for r in ts} == {"torchserve"}
    assert [r["shield"] for r in ts] == [r["shield"] for r in ps]
    # reward_id (the signed form of a client-chosen id, for /v1/reward on any replica) is policy-server's alone:
    # the handler serves no rewards
    assert set(ts[0]) == set(ps[0]) - {"reward_id"}, "both servers answer with the same fields"


@pytest.mark.integration
def test_softmax_parity_with_seeded_rngs(
    servers: Servers, artifacts: dict[str, Path], observations: np.ndarray
) -> None:
    """Same seed, one request at a time: identical draws; each propensity is p(served action) in-process."""
    ts = _post_all(servers.torchserve.predictions_url("softmax"), _bodies(observations, "s"), 1)
    ps = _post_all(servers.policy_server["softmax"], _bodies(observations, "s"), 1)
    ts_actions, ts_props = _columns(ts)
    ps_actions, ps_props = _columns(ps)
    _, probabilities = _in_process(artifacts["softmax"], observations, SHIELD["action_mask"])
    np.testing.assert_array_equal(ts_actions, ps_actions)
    np.testing.assert_allclose(ts_props, ps_props, atol=1e-6)
    np.testing.assert_allclose(ts_props, probabilities[np.arange(N_OBS), ts_actions], atol=1e-6)
    assert not (ts_actions == 3).any(), "the artifact's shield forbids action 3"
    assert len(set(ts_actions.tolist())) > 1, "softmax over 200 observations should explore"
    assert (ts_actions != probabilities.argmax(axis=1)).any(), "and sometimes serve a non-greedy action"


@pytest.mark.integration
def test_request_masks_go_through_the_same_shield(
    servers: Servers, artifacts: dict[str, Path], observations: np.ndarray
) -> None:
    """context.action_mask narrows the artifact's mask; changed actions are reported as action_mask."""
    request_mask = [False, True, True, True]
    bodies = _bodies(observations[:50], "m", {"action_mask": request_mask})
    ts = _post_all(servers.torchserve.predictions_url("greedy"), bodies, 4)
    ps = _post_all(servers.policy_server["greedy"], bodies, 4)
    raw, _ = _in_process(artifacts["greedy"], observations[:50], SHIELD["action_mask"])
    allowed = np.asarray(SHIELD["action_mask"]) & np.asarray(request_mask)
    expected = np.where(allowed, raw, -np.inf).argmax(axis=1)
    np.testing.assert_array_equal(_columns(ts)[0], expected)
    np.testing.assert_array_equal(_columns(ps)[0], expected)
    changed = raw.argmax(axis=1) != expected
    assert changed.any(), "the observations must include some where the mask matters"
    assert [r["shield"]["intervened"] for r in ts] == changed.tolist()
    assert [r["shield"] for r in ts] == [r["shield"] for r in ps]


@pytest.mark.integration
def test_bad_requests_get_the_same_answer_from_both(servers: Servers) -> None:
    cases = [
        {"observation": [1.0, 2.0]},
        {"observation": ["a"] * 8},
        {"request_id": "x"},
        {"observation": [0.0] * 8, "request_id": 5},
        {"observation": [0.0] * 8, "context": [1]},
        {"observation": [0.0] * 8, "context": {"action_mask": [True]}},
        # the artifact forbids action 3: a request that allows only 3 leaves nothing
        {"observation": [0.0] * 8, "context": {"action_mask": [False, False, False, True]}},
    ]
    with httpx.Client(timeout=30) as client:
        for body in cases:
            ts = client.post(servers.torchserve.predictions_url("greedy"), json=body)
            ps = client.post(servers.policy_server["greedy"], json=body)
            assert ts.status_code == ps.status_code == 400, (body, ts.text, ps.text)
            assert ts.json() == ps.json(), body
            assert ts.json()["error"]
        for raw in (b"", b"[1, 2]", b"not json", b'"text"'):
            headers = {"Content-Type": "application/json"}
            ts = client.post(servers.torchserve.predictions_url("greedy"), content=raw, headers=headers)
            ps = client.post(servers.policy_server["greedy"], content=raw, headers=headers)
            assert ts.status_code == ps.status_code == 400, (raw, ts.text, ps.text)
            assert ts.json()["error"] and ps.json()["error"], raw
        ok = client.post(servers.torchserve.predictions_url("greedy"), json={"observation": [0.0] * 8})
        assert ok.status_code == 200
        assert ok.json()["request_id"]


class _FlakyManagement(http.server.BaseHTTPRequestHandler):
    """Answers DELETE /models/NAME with TorchServe's 500 (NullPointerException) ``failures`` times, then 200."""

    failures = 0
    deletes: list[str] = []

    def do_DELETE(self) -> None:
        type(self).deletes.append(self.path)
        failing = len(self.deletes) <= self.failures
        body = b'{"code": 500, "type": "NullPointerException"}' if failing else b'{"status": "unregistered"}'
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("failures", "succeeds"), [(2, True), (5, False)])
def test_unregister_retries_torchserve_transient_500(tmp_path: Path, failures: int, succeeds: bool) -> None:
    _FlakyManagement.failures, _FlakyManagement.deletes = failures, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyManagement)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ts = TorchServe(model_store=tmp_path, startup_timeout_s=5)
        ts.management_port = server.server_address[1]
        if succeeds:
            ts.unregister("policy_w2_b8", attempts=5)
        else:
            with pytest.raises(TorchServeError, match="answered 500"):
                ts.unregister("policy_w2_b8", attempts=5)
    finally:
        server.shutdown()
        server.server_close()
    assert _FlakyManagement.deletes == ["/models/policy_w2_b8"] * min(failures + 1, 5)
