"""The `policy-server` command as users run it: example-model, serve, broken artifacts, SIGTERM drain."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from policy_server import artifact
from tests.support.policy_server import REPO, cli_server, start_cli

pytestmark = pytest.mark.integration

OBS = [0.3, -1.2, 0.5, 0.0, 1.1, -0.4, 0.9, -0.7]


def test_example_model_command(tmp_path: Path) -> None:
    out = tmp_path / "ex"
    done = subprocess.run(
        [sys.executable, "-m", "policy_server.cli", "example-model", "--out", str(out), "--kind", "continuous",
         "--format", "export", "--n-actions", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == str(out)
    m = artifact.load_artifact(str(out)).manifest
    assert (m.format, m.action.type, m.action.dim, m.program) == ("export", "continuous", 2, "policy.pt2")


def _broken(tmp_path: Path, how: str) -> Path:
    out = artifact.write_example_model(tmp_path / how)
    manifest = json.loads((out / "manifest.json").read_text())
    if how == "bad_sha":
        manifest["sha256"] = "f" * 64
    elif how == "truncated":
        data = (out / "policy.pt").read_bytes()
        (out / "policy.pt").write_bytes(data[: len(data) // 2])
    elif how == "shape_mismatch":
        manifest["observation"] = {"shape": [3]}
    elif how == "missing_file":
        (out / "policy.pt").unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("bad_sha", "the file is corrupt or was replaced"),
        ("truncated", "the file is corrupt or was replaced"),
        ("shape_mismatch", "observation.shape in the manifest must match the model input"),
        ("missing_file", "'policy.pt' named in manifest.json is missing"),
    ],
)
def test_broken_artifact_fails_startup_with_clear_error(tmp_path: Path, how: str, message: str) -> None:
    proc = start_cli("--model", str(_broken(tmp_path, how)))
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert "cannot serve the artifact" in err and message in err


def test_sigterm_drains_and_logs_every_decision(tmp_path: Path, models) -> None:
    from policy_server.decision_log import reader

    log_dir = tmp_path / "log"
    with cli_server("--model", str(models()), "--log-dir", str(log_dir), "--variant", "blue", "--seed", "7") as srv:
        c = srv.client()
        ids = [c.act(OBS, request_id=f"req-{i}", context={"i": i})["request_id"] for i in range(300)]
        for rid in ids[:10]:
            assert c.post("/v1/reward", {"request_id": rid, "reward": 1.0})[0] == 202
        c.close()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0, srv.proc.stderr.read()
    table = reader.read_decisions(str(log_dir))
    assert table.num_rows == 300
    rows = table.to_pylist()
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert all(r["variant"] == "blue" and r["policy_version"] == "v1" for r in rows)
    assert all(0 < r["propensity"] <= 1 and len(r["probabilities"]) == 4 for r in rows)
    assert all(r["observation"] == pytest.approx(OBS) for r in rows)
    assert json.loads(next(r for r in rows if r["request_id"] == "req-5")["context_json"]) == {"i": 5}
    assert reader.read_rewards(str(log_dir)).num_rows == 10


def test_sigterm_under_load_loses_no_answered_decision(tmp_path: Path, models) -> None:
    import threading

    from policy_server.decision_log import reader

    log_dir = tmp_path / "log"
    answered: list[str] = []
    lock = threading.Lock()
    with cli_server("--model", str(models()), "--log-dir", str(log_dir), "--exploration", "greedy") as srv:

        def client_loop(k: int) -> None:
            c = srv.client()
            for i in range(100_000):
                try:
                    body = c.act(OBS, request_id=f"c{k}-{i}")
                except (OSError, AssertionError, ConnectionError):
                    return
                with lock:
                    answered.append(body["request_id"])

        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(answered) < 200:
            assert time.monotonic() < deadline, "clients made no progress"
            time.sleep(0.01)
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert srv.proc.wait(60) == 0, srv.proc.stderr.read()
    table = reader.read_decisions(str(log_dir))
    logged = set(table.column("request_id").to_pylist())
    assert len(answered) >= 200 and set(answered) <= logged
    assert set(table.column("propensity").to_pylist()) == {1.0}  # --exploration greedy overrides softmax


def test_the_command_line_loads_no_evaluation_stack_until_asked() -> None:
    """`serve` and `route` build the whole parser; scipy (~80 MB of RSS in every pod) must stay unloaded."""
    probe = (
        "import sys; from policy_server import cli; cli.build_parser(); "
        "print(sorted(m for m in ('scipy', 'pyarrow', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
