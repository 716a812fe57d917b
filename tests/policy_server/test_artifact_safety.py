"""Loading never unpickles arbitrary objects: a torch.export archive carrying a pickle is refused unrun.

Attacks tried: a weight marked ``use_pickle`` whose payload is a pickle that runs code, and sample
inputs that are such a pickle (torch.export.load would retry them with ``weights_only=False``).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest

from policy_server import artifact
from tests.support.policy_server import reseal_manifest


class _RunsCode:
    """Unpickling this creates a directory: proof that loading ran code chosen by the artifact's author."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _rewrite_zip(path: Path, change) -> None:
    src = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = change(name, src.read(name))
            dst.writestr(name, data)
    path.write_bytes(out.getvalue())


def _pickled_weight(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        if name.endswith("weights_config.json"):
            config = json.loads(data)
            config["config"]["net.0.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return pickle.dumps(_RunsCode(marker))
        return data

    return change


def _pickled_sample_inputs(marker: Path):
    def change(name: str, data: bytes) -> bytes:
        return pickle.dumps(_RunsCode(marker)) if name.endswith("sample_inputs/model.pt") else data

    return change


@pytest.mark.parametrize("attack", [_pickled_weight, _pickled_sample_inputs])
def test_export_archive_with_a_pickle_payload_is_refused_without_running_it(tmp_path: Path, attack) -> None:
    model = artifact.write_example_model(tmp_path / "m", format="export")
    marker = tmp_path / "pwned"
    _rewrite_zip(model / "policy.pt2", attack(marker))
    reseal_manifest(model)
    with pytest.raises(artifact.ArtifactError) as err:
        artifact.load_artifact(str(model))
    assert not marker.exists(), "loading the artifact ran code from a pickle"
    assert "refused" in str(err.value) or "cannot load" in str(err.value)
    assert "\n" not in str(err.value)


def test_clean_export_archive_still_loads(tmp_path: Path) -> None:
    model = artifact.write_example_model(tmp_path / "m", format="export")
    assert artifact.load_artifact(str(model)).manifest.format == "export"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after loading
