"""Lineage: every `policy-server train` writes where its artifact came from into the (signable) manifest.

A trained artifact records its dataset (log URL, decision time range, segment hash, rows), code
(the image and commit the operator's Job passes), hyperparameters (its arguments), environment
(simulator and library versions) and the OPE report it passed; the same block goes to the
termination message the operator reads. Signing covers it: an edited lineage is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from policy_server import artifact, cli
from policy_server.train import cli as train_cli
from policy_server.train import lineage
from tests.policy_server.train import cooling_mdp as mdp
from tests.support import decision_logs

IMAGE, COMMIT = "registry.local/policy-server@sha256:" + "ab" * 32, "0123abcd"


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> decision_logs.WrittenLog:
    root = tmp_path_factory.mktemp("lineage")
    return decision_logs.write_log(root / "log", decision_logs.behaviour(root / "behaviour"), n=600, seed=7)


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the operator's training Job sets."""
    monkeypatch.setenv(lineage.IMAGE_ENV, IMAGE)
    monkeypatch.setenv(lineage.COMMIT_ENV, COMMIT)
    monkeypatch.setenv(lineage.SIMULATOR_ENV, "cooling@1.2")


def _train(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = cli.main(["train", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.usefixtures("job_env")
def test_training_writes_complete_lineage_into_the_manifest_and_the_result(
    log: decision_logs.WrittenLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, result_file = tmp_path / "model", tmp_path / "termination-log"
    result = _train(capsys, "--logs", log.url, "--out", str(out), "--version", "t1", "--steps", "60",
                    "--seed", "3", "--write-result", str(result_file))
    found = artifact.read_manifest(str(out)).lineage
    assert found is not None
    assert set(found.wire()) == set(artifact.LINEAGE_FIELDS)  # every part, none missing
    assert found.dataset is not None and found.dataset.uri == log.url and found.dataset.rows == result["n"]
    assert found.dataset.from_ is not None and found.dataset.to is not None and found.dataset.from_ < found.dataset.to
    assert found.dataset.sha256 == lineage.dataset_of_log(log.url, result["n"]).sha256  # reproducible
    assert found.code == artifact.CodeLineage(image=IMAGE, commit=COMMIT)
    assert found.hyperparameters is not None
    assert found.hyperparameters["algorithm"] == "reward-model" and found.hyperparameters["steps"] == 60
    assert found.hyperparameters["seed"] == 3 and "out" not in found.hyperparameters
    assert None not in found.hyperparameters.values()  # unset arguments are left out, not null
    assert found.environment is not None and found.environment.torch == str(torch.__version__)
    assert (found.environment.simulator, found.environment.simulator_version) == ("cooling", "1.2")
    assert found.ope_report is not None and found.ope_report.uri == f"{out}/ope.json"
    assert found.ope_report.verdict == result["ope"]["verdict"]
    assert found.ope_report.estimate == result["ope"]["estimate"]
    # The operator reads the same block from the Job's termination message.
    assert result["lineage"] == found.wire() == json.loads(result_file.read_text())["lineage"]


def test_the_dataset_hash_changes_when_the_log_does(log: decision_logs.WrittenLog, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(log.url, copy)
    assert lineage.dataset_of_log(str(copy), 1).sha256 == lineage.dataset_of_log(log.url, 1).sha256
    other = decision_logs.write_log(tmp_path / "other", log.behaviour, n=50, seed=8)
    for segment in Path(other.url, "decisions").glob("*.parquet"):
        shutil.copy(segment, copy / "decisions" / f"extra-{segment.name}")
    assert lineage.dataset_of_log(str(copy), 1).sha256 != lineage.dataset_of_log(log.url, 1).sha256


@pytest.mark.usefixtures("job_env")
def test_constrained_training_on_trajectory_arrays_writes_lineage_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arrays = mdp.save_logged(tmp_path / "episodes.npz", 40, seed=0)
    out = tmp_path / "model"
    result = _train(capsys, "--algorithm", "constrained-cql", "--trajectory-arrays", arrays, "--out", str(out),
                    "--version", "c1", "--cost", "overheat", "--cost-budget", "1", "--steps", "20",
                    "--batch-size", "32", "--log-every", "10", "--eval-every", "10")
    found = artifact.read_manifest(str(out)).lineage
    assert found is not None and found.dataset is not None and found.hyperparameters is not None
    assert found.dataset.uri == arrays and found.dataset.hash_of == "file bytes" and found.dataset.rows == result["n"]
    assert found.hyperparameters["cost"] == ["overheat"] and found.hyperparameters["cost_budget"] == [1.0]
    assert found.code is not None and found.code.image == IMAGE
    assert result["lineage"] == found.wire()


def test_a_signed_manifest_signs_its_lineage(tmp_path: Path) -> None:
    model = artifact.write_example_model(tmp_path / "m")
    lineage.write_into(model, artifact.Lineage(
        dataset=artifact.DatasetLineage(uri="s3://logs/x", rows=10, from_="2026-12-01T00:00:00Z"),
        code=artifact.CodeLineage(commit=COMMIT)))
    assert cli.main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    assert cli.main(["sign", "--artifact", str(model), "--key", str(tmp_path / "keys" / "signing-key.pem")]) == 0
    public = str(tmp_path / "keys" / "signing-key.pub.pem")
    loaded = artifact.load_artifact(str(model), trusted_keys=[public])
    assert loaded.manifest.lineage is not None and loaded.manifest.lineage.dataset is not None
    assert loaded.manifest.lineage.dataset.from_ == "2026-12-01T00:00:00Z"  # JSON "from" round-trips

    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["lineage"]["dataset"]["from"] == "2026-12-01T00:00:00Z"
    manifest["lineage"]["dataset"]["rows"] = 11  # claim another dataset
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(artifact.ArtifactError, match="refused"):
        artifact.load_artifact(str(model), trusted_keys=[public])


def test_a_termination_message_drops_hyperparameters_before_the_artifact() -> None:
    result = {"v": 1, "kind": "train", "artifact": "s3://m/v", "version": "v",
              "lineage": {"code": {"commit": COMMIT}, "hyperparameters": {"x": "y" * 5000}}}
    fitted = train_cli._fits(result, 4096)
    assert fitted["artifact"] == "s3://m/v" and fitted["lineage"] == {"code": {"commit": COMMIT}}
    assert train_cli._fits({**result, "lineage": {"code": {"commit": "c" * 5000}}}, 4096).get("lineage") is None
