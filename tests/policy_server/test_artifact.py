"""Artifact loading: both formats, and every way an artifact can be broken -> ArtifactError."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from policy_server import artifact


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_roundtrip_both_formats(tmp_path: Path, fmt: str, kind: str) -> None:
    out = artifact.write_example_model(tmp_path / "m", kind=kind, format=fmt, n_actions=3, obs_dim=5)
    loaded = artifact.load_artifact(str(out))
    assert loaded.manifest.format == fmt
    assert loaded.manifest.action.type == kind
    assert loaded.manifest.observation.shape == [5]
    with torch.inference_mode():
        y = loaded.module(torch.randn(7, 5))
    assert tuple(y.shape) == (7, 3)
    if kind == "continuous":
        assert float(y.abs().max()) <= 1.0  # tanh-squashed mean


def test_same_seed_same_weights_across_formats(tmp_path: Path) -> None:
    a = artifact.load_artifact(str(artifact.write_example_model(tmp_path / "a", format="torchscript", seed=3)))
    b = artifact.load_artifact(str(artifact.write_example_model(tmp_path / "b", format="export", seed=3)))
    c = artifact.load_artifact(str(artifact.write_example_model(tmp_path / "c", format="export", seed=4)))
    x = torch.randn(16, 8)
    with torch.inference_mode():
        assert torch.allclose(a.module(x), b.module(x), atol=1e-5)
        assert not torch.allclose(b.module(x), c.module(x), atol=1e-3)


def test_reference_stats_are_deciles(tmp_path: Path) -> None:
    m = artifact.load_artifact(str(artifact.write_example_model(tmp_path / "m"))).manifest
    assert m.observation.reference is not None and len(m.observation.reference) == 8
    for ref in m.observation.reference:
        assert len(ref.fractions) == len(ref.edges) + 1 == 10
        assert np.allclose(ref.fractions, 0.1, atol=0.01)


def test_memory_filesystem(tmp_path: Path) -> None:
    out = artifact.write_example_model(tmp_path / "m")
    fs = fsspec.filesystem("memory")
    for f in out.iterdir():
        fs.pipe_file(f"/art/{f.name}", f.read_bytes())
    loaded = artifact.load_artifact("memory://art")
    assert loaded.manifest.name == "example-policy"
    assert loaded.path == "memory://art"


def _edit_manifest(path: Path, **changes: object) -> None:
    data = json.loads((path / "manifest.json").read_text())
    data.update(changes)
    (path / "manifest.json").write_text(json.dumps(data))


def test_bad_sha(tmp_path: Path) -> None:
    out = artifact.write_example_model(tmp_path / "m")
    _edit_manifest(out, sha256="0" * 64)
    with pytest.raises(artifact.ArtifactError, match=r"sha256 .* re-export"):
        artifact.load_artifact(str(out))


def test_truncated_program(tmp_path: Path) -> None:
    out = artifact.write_example_model(tmp_path / "m", format="export")
    prog = out / "policy.pt2"
    data = prog.read_bytes()[:1000]
    prog.write_bytes(data)
    # a truncated file with a matching sha (someone recomputed it) still fails to load
    import hashlib

    _edit_manifest(out, sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(artifact.ArtifactError, match=r"cannot load 'policy.pt2' as export"):
        artifact.load_artifact(str(out))


def test_truncated_program_sha_mismatch(tmp_path: Path) -> None:
    out = artifact.write_example_model(tmp_path / "m")
    prog = out / "policy.pt"
    prog.write_bytes(prog.read_bytes()[:500])
    with pytest.raises(artifact.ArtifactError, match="corrupt"):
        artifact.load_artifact(str(out))


def test_shape_mismatch(tmp_path: Path) -> None:
    out = artifact.write_example_model(tmp_path / "m", obs_dim=8)
    data = json.loads((out / "manifest.json").read_text())
    data["observation"] = {"shape": [5]}
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(artifact.ArtifactError, match=r"forward pass on zeros of shape \[2, 5\] failed"):
        artifact.load_artifact(str(out))


def test_action_count_mismatch(tmp_path: Path) -> None:
    out = artifact.write_example_model(tmp_path / "m", n_actions=4)
    _edit_manifest(out, action={"type": "discrete", "n": 6})
    with pytest.raises(artifact.ArtifactError, match=r"returns \(2, 4\).*promises \(2, 6\)"):
        artifact.load_artifact(str(out))


def test_missing_program(tmp_path: Path) -> None:
    out = artifact.write_example_model(tmp_path / "m")
    (out / "policy.pt").unlink()
    with pytest.raises(artifact.ArtifactError, match=r"'policy.pt' .* is missing"):
        artifact.load_artifact(str(out))


def test_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(artifact.ArtifactError, match=r"has no manifest.json"):
        artifact.load_artifact(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema_version": 2}, "schema_version 2"),
        ({"format": "onnx"}, "format"),
        ({"output": "mean"}, "discrete action needs output"),
        ({"exploration": {"kind": "softmax", "temperature": 0}}, "temperature"),
        ({"shield": {"action_mask": [False, False, False, False]}}, "allows no action"),
        ({"unexpected": 1}, "unexpected"),
        ({"program": "../x"}, "plain file name"),
    ],
)
def test_invalid_manifest(tmp_path: Path, changes: dict, message: str) -> None:
    out = artifact.write_example_model(tmp_path / "m")
    _edit_manifest(out, **changes)
    with pytest.raises(artifact.ArtifactError, match=message):
        artifact.load_artifact(str(out))


def test_manifest_not_json(tmp_path: Path) -> None:
    out = artifact.write_example_model(tmp_path / "m")
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(artifact.ArtifactError, match="not valid JSON"):
        artifact.load_artifact(str(out))
