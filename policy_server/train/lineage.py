"""The lineage `policy-server train` writes into every artifact it exports (docs/offline-gate-and-training.md).

Why here and not in the operator: only the trainer knows what it read (the log's segments, the rows
that survived the join), how it was called and which libraries ran it. The operator's training Job
adds what only it knows through the environment: ``POLICY_ROLLOUTS_IMAGE`` (the image the Job runs)
and ``POLICY_ROLLOUTS_COMMIT`` (the source commit, when known).

The dataset hash covers the sorted segment list (relative path, rows and the footers' time range of
every decision and reward segment): one footer read per segment, cheap on object stores, and any
added, removed or rewritten segment changes it. A trajectory file (``--trajectory-arrays``) is
hashed by its bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import posixpath
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from policy_server import artifact

__all__ = [
    "COMMIT_ENV",
    "IMAGE_ENV",
    "build",
    "dataset_of_arrays",
    "dataset_of_log",
    "hyperparameters",
    "write_into",
]

IMAGE_ENV = "POLICY_ROLLOUTS_IMAGE"
COMMIT_ENV = "POLICY_ROLLOUTS_COMMIT"
SIMULATOR_ENV = "POLICY_ROLLOUTS_SIMULATOR"  # "name" or "name@version" of the environment the log came from
_NOT_HYPERPARAMETERS = {"command", "func", "logs", "trajectory_arrays", "out", "version", "name", "write_result",
                        "checkpoint_dir", "tensorboard", "resume", "device", "threads"}


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def dataset_of_log(url: str, rows: int) -> artifact.DatasetLineage:
    """The decision log at ``url`` as lineage: its decision time range and segment hash, ``rows`` trained on."""
    from policy_server.join import segments

    log = segments.open_log(url)
    digest = hashlib.sha256()
    paths = [s.path for s in (*log.decisions, *log.rewards)]
    root = posixpath.commonpath([posixpath.dirname(p) for p in paths]) if paths else ""
    for stream, segs in (("decisions", log.decisions), ("rewards", log.rewards)):
        for seg in sorted(segs, key=lambda s: s.path):
            rel = posixpath.relpath(seg.path, root) if root else seg.path
            digest.update(json.dumps([stream, rel, seg.rows, seg.lo, seg.hi]).encode() + b"\n")
    los = [s.lo for s in log.decisions if s.lo is not None]
    his = [s.hi for s in log.decisions if s.hi is not None]
    return artifact.DatasetLineage(
        uri=url, from_=_iso(min(los)) if los else None, to=_iso(max(his)) if his else None,
        sha256=digest.hexdigest(), hash_of="sorted segments: stream, relative path, rows, footer time min/max",
        rows=rows,
    )


def dataset_of_arrays(path: str, rows: int) -> artifact.DatasetLineage:
    """A trajectory file (``--trajectory-arrays``) as lineage: hashed by its bytes."""
    import fsspec

    digest = hashlib.sha256()
    with fsspec.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return artifact.DatasetLineage(uri=path, sha256=digest.hexdigest(), hash_of="file bytes", rows=rows)


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """The training arguments that shape the policy (paths, names and I/O switches left out; unset ones too,
    as the operator's status, like any Kubernetes object, drops null values)."""
    out: dict[str, Any] = {}
    for key, value in sorted(vars(args).items()):
        if key in _NOT_HYPERPARAMETERS or callable(value):
            continue
        if isinstance(value, list | tuple):
            value = list(value)
        if isinstance(value, str | int | float | bool | list):
            out[key] = value
    return out


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(environ: Mapping[str, str]) -> artifact.EnvironmentLineage:
    """Library versions of this process, and the simulator named by ``POLICY_ROLLOUTS_SIMULATOR``."""
    import torch

    simulator, _, sim_version = environ.get(SIMULATOR_ENV, "").partition("@")
    return artifact.EnvironmentLineage(
        simulator=simulator or None, simulator_version=sim_version or None, python=platform.python_version(),
        torch=str(torch.__version__), policy_server=_version("policy-rollouts"),
    )


def build(args: argparse.Namespace, dataset: artifact.DatasetLineage, ope: artifact.OPEReportLineage | None,
          environ: Mapping[str, str] | None = None) -> artifact.Lineage:
    """The complete lineage of one training run."""
    env = os.environ if environ is None else environ
    code = artifact.CodeLineage(image=env.get(IMAGE_ENV) or None, commit=env.get(COMMIT_ENV) or None)
    return artifact.Lineage(dataset=dataset, code=code, hyperparameters=hyperparameters(args),
                            environment=environment(env), ope_report=ope)


def write_into(artifact_dir: Path, lineage: artifact.Lineage) -> None:
    """Add ``lineage`` to the manifest of the artifact exported at ``artifact_dir`` (before it is signed)."""
    path = artifact_dir / artifact.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["lineage"] = lineage.wire()
    artifact.Manifest.model_validate(manifest)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
