"""Loading an artifact must not run code chosen by whoever wrote it: the ``torch.export`` checks.

Why a module of its own: ``torch.export.load`` unpickles in three places (a weight or constant
marked ``use_pickle`` through ``torch.load(weights_only=False)``, custom and opaque objects
through pickle, and sample inputs that do not load weights-only through a fallback to
``weights_only=False``). :func:`check_export_archive` refuses such archives before they are
loaded, and :func:`weights_only_loads` turns any ``torch.load`` left into a weights-only one.
TorchScript archives need neither: ``torch.jit.load`` restores tensors and TorchScript types only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import warnings
import zipfile
from collections.abc import Iterator

import torch

from policy_server.errors import PolicyServerError

__all__ = ["UnsafeArtifact", "check_export_archive", "weights_only_loads"]


class UnsafeArtifact(PolicyServerError):
    """The archive would unpickle objects when loaded; the message says what and how to re-export."""


_FORCE_LOCK = threading.Lock()


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Make every ``torch.load`` in this block weights-only, even one that asks for ``weights_only=False``.

    torch.export.load falls back to ``weights_only=False`` for sample inputs it cannot read
    otherwise; ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` (read by torch.load at each call) turns that into
    an error instead of arbitrary code. Defence in depth behind :func:`check_export_archive`.
    """
    with _FORCE_LOCK:
        old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            yield
        finally:
            if old is None:
                del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def check_export_archive(url: str, program: str, data: bytes) -> None:
    """Refuse a ``torch.export`` archive whose loading would unpickle objects.

    torch.export.load reads a weight or constant marked ``use_pickle`` with
    ``torch.load(weights_only=False)``, custom and opaque objects with pickle, and legacy
    ``<model>.pt`` weight files as pickles: any of them runs code chosen by whoever wrote the file.
    Models exported from plain modules have none of them (raw tensor payloads only).
    """

    def refuse(what: str) -> UnsafeArtifact:
        return UnsafeArtifact(
            f"artifact {url!r}: {program!r} {what}, which loading would unpickle (arbitrary code); refused. "
            "Re-export the model with torch.export from plain tensors (`policy-server train` or example-model)"
        )

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except zipfile.BadZipFile:
        return  # torch.export.load reports it as a broken archive
    for name in names:
        rel = name.split("/", 1)[-1]
        if rel.startswith(("data/weights/", "data/constants/")) and rel.endswith(".pt"):
            raise refuse(f"holds a legacy pickled payload {rel!r}")
        if rel.startswith("data/sample_inputs/"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # torch warns about the protocol before failing
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception:  # torch.export.load would retry it with weights_only=False
                raise refuse(f"holds sample inputs {rel!r} that are not plain tensors") from None
        if rel.startswith("data/aotinductor/") or rel.startswith("data/constants/custom_obj") or "opaque" in rel:
            raise refuse(f"holds a compiled or custom-object payload {rel!r}")
        if rel.endswith(("weights_config.json", "constants_config.json")):
            try:
                config = json.loads(archive.read(name)).get("config", {})
            except (ValueError, AttributeError):
                raise refuse(f"has an unreadable payload config {rel!r}") from None
            for key, meta in config.items():
                if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
                    raise refuse(f"stores {key!r} as a pickle")
                if rel.endswith("constants_config.json") and not str(meta.get("path_name", "")).startswith("tensor_"):
                    raise refuse(f"stores the constant {key!r} as an object")
