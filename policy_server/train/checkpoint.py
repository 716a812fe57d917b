"""Checkpoints of a training run in the artifact store: written whole or not at all, newest wins.

A checkpoint is one `torch.save` blob (`ckpt-{step:09d}.pt`): model and optimiser state, the
Lagrange multipliers, every RNG the loop draws from and the step, so `--resume` continues the same
run (a killed pod restarted by its Job's backoff ends with the same total steps and, on CPU, the
same weights). It is written under a temporary name and renamed: a pod killed mid-write leaves a
`.tmp` that is never read, never a truncated checkpoint. Read back with `weights_only=True`: a
checkpoint is tensors and plain values, so one planted in the store cannot run code on load.
Any fsspec URL works (a local directory, s3://, gs://); on object stores the rename is a copy then
delete, still never a partial object.
"""

from __future__ import annotations

import io
import pickle
import re
from typing import Any

import torch

from policy_server.errors import PolicyServerError

__all__ = ["CheckpointError", "latest", "save"]

_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
KEEP = 2  # the newest and one before it, in case the store lost the newest's rename


class CheckpointError(PolicyServerError):
    """A checkpoint cannot be written or read; the message says where and what to do."""


def _brief(exc: BaseException) -> str:
    """The first line of an error (torch's unpickling errors run to a page)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


def save(url: str, step: int, state: dict[str, Any]) -> str:
    """Write `state` as the checkpoint of `step` (atomically) and drop all but the newest `KEEP`."""
    fs, root = _fs(url)
    buf = io.BytesIO()
    torch.save({**state, "step": step}, buf)
    final = f"{root}/ckpt-{step:09d}.pt"
    try:
        fs.makedirs(root, exist_ok=True)
        with fs.open(final + ".tmp", "wb") as f:
            f.write(buf.getvalue())
        fs.mv(final + ".tmp", final)
        for old in _steps(fs, root)[:-KEEP]:
            fs.rm(f"{root}/ckpt-{old:09d}.pt")
    except OSError as exc:
        raise CheckpointError(
            f"cannot write checkpoint {final!r} ({_brief(exc)}); check --checkpoint-dir and its credentials"
        ) from None
    return final


def _steps(fs: Any, root: str) -> list[int]:
    if not fs.exists(root):
        return []
    names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)


def latest(url: str) -> dict[str, Any] | None:
    """The newest checkpoint under `url`, or None when there is none yet (a first run)."""
    fs, root = _fs(url)
    try:
        steps = _steps(fs, root)
        if not steps:
            return None
        path = f"{root}/ckpt-{steps[-1]:09d}.pt"
        with fs.open(path, "rb") as f:
            blob = io.BytesIO(f.read())
        return torch.load(blob, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"cannot read the newest checkpoint under {url!r} ({_brief(exc)}); delete it to restart"
        ) from None
