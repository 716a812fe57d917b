"""Pack a policy artifact into a TorchServe model archive (``.mar``) with torch-model-archiver.

Why a recipe and not a bare ``torch-model-archiver`` command line: the archive must carry the whole artifact
directory (``manifest.json`` plus the TorchScript / torch.export program) under one known folder, so that the
handler loads it with the same `policy_server.artifact.load_artifact` as ``policy-server serve`` and both servers
decide identically. The artifact is validated before packing, so a broken artifact fails here and not inside a
TorchServe worker log.

    python -m policy_server.torchserve.archive --artifact DIR --out DIR [--name NAME] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from policy_server.errors import PolicyServerError

__all__ = ["ARTIFACT_FOLDER", "HANDLER_FILE", "build_mar", "main"]

# Folder inside the extracted archive (TorchServe's model_dir) that holds the artifact.
ARTIFACT_FOLDER = "policy_artifact"
HANDLER_FILE = Path(__file__).with_name("handler.py")


class ArchiveError(PolicyServerError, ValueError):
    """The artifact cannot be packed; the message says what to fix."""


def _artifact_version(artifact_dir: Path) -> str:
    manifest_path = artifact_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ArchiveError(
            f"{artifact_dir} has no manifest.json: pass a policy artifact directory "
            "(make one with `policy-server example-model`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ArchiveError(f"{manifest_path} is not valid JSON ({error}): fix or re-export the artifact") from error
    return str(manifest.get("version") or "1.0")


def build_mar(
    artifact_dir: str | Path,
    out_dir: str | Path,
    *,
    model_name: str = "policy",
    version: str | None = None,
    seed: int | None = None,
    torch_threads: int = 1,
    validate: bool = True,
) -> Path:
    """Build ``<out_dir>/<model_name>.mar`` from an artifact directory and return its path.

    **Parameters:**
    * artifact_dir: directory with ``manifest.json`` and the program file.
    * model_name: TorchServe's model name (the ``/predictions/<name>`` path).
    * version: archive version; defaults to the artifact's manifest version.
    * seed: seed of each worker's exploration RNG (reproducible draws, e.g. to compare with
      ``policy-server serve --seed``); default: random.
    * torch_threads: intra-op threads per worker.
    * validate: load the artifact and build its `Policy` first, so a broken one is refused here.
    """
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    artifact = Path(artifact_dir).resolve()
    out = Path(out_dir).resolve()
    if not artifact.is_dir():
        raise ArchiveError(f"artifact directory {artifact} does not exist: pass the folder that holds manifest.json")
    if not model_name.replace("-", "").replace("_", "").isalnum():
        raise ArchiveError(f"model name {model_name!r} may hold only letters, digits, '-' and '_'")
    archive_version = version or _artifact_version(artifact)
    if validate:
        from policy_server import artifact as artifact_module
        from policy_server import policy as policy_module

        policy_module.Policy.from_artifact(artifact_module.load_artifact(str(artifact)))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mar-stage-") as tmp:
        # torch-model-archiver copies a directory's *contents* into the archive root: stage the artifact
        # one level down so it lands in <model_dir>/policy_artifact/.
        stage = Path(tmp) / "extra"
        shutil.copytree(artifact, stage / ARTIFACT_FOLDER)
        settings: dict[str, int] = {"torch_threads": torch_threads}
        if seed is not None:
            settings["seed"] = seed
        # TorchServe hands this file to the handler as context.model_yaml_config.
        model_config = Path(tmp) / "model-config.yaml"
        model_config.write_text(yaml.safe_dump({"handler": settings}))
        config = ModelArchiverConfig(
            model_name=model_name,
            handler=str(HANDLER_FILE),
            version=archive_version,
            extra_files=str(stage),
            export_path=str(out),
            force=True,
            config_file=str(model_config),
        )
        generate_model_archive(config)
    mar = out / f"{model_name}.mar"
    if not mar.is_file():
        raise ArchiveError(f"torch-model-archiver reported success but {mar} is missing")
    return mar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pack a policy artifact into a TorchServe .mar")
    parser.add_argument("--artifact", required=True, help="artifact directory (manifest.json + program)")
    parser.add_argument("--out", required=True, help="directory to write <name>.mar into")
    parser.add_argument("--name", default="policy", help="TorchServe model name (default: policy)")
    parser.add_argument("--version", default=None, help="archive version (default: the manifest's version)")
    parser.add_argument("--seed", type=int, default=None, help="exploration RNG seed per worker (default: random)")
    parser.add_argument("--torch-threads", type=int, default=1, help="intra-op threads per worker (default: 1)")
    args = parser.parse_args(argv)
    try:
        mar = build_mar(
            args.artifact,
            args.out,
            model_name=args.name,
            version=args.version,
            seed=args.seed,
            torch_threads=args.torch_threads,
        )
    except ArchiveError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(mar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
