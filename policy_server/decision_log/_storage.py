"""Where a decision log lives: an fsspec URL (or a caller's filesystem) resolved once for writer and readers.

Why a module of its own: the writer and the readers must agree on how a URL maps to a
filesystem and a root path, and on what counts as local disk (where the writer renames a
temporary file and the readers use Arrow's faster native filesystem). Any fsspec URL works:
a local path, ``file://``, ``memory://``, ``s3://`` with ``s3fs``.
"""

from __future__ import annotations

import fsspec

__all__ = ["join", "protocols", "resolve", "segments"]


def resolve(url: str, filesystem: fsspec.AbstractFileSystem | None) -> tuple[fsspec.AbstractFileSystem, str]:
    if filesystem is not None:
        return filesystem, filesystem._strip_protocol(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ValueError(
            f"decision log URL {url!r} cannot be opened: {exc}. Use a local path, file://, memory:// or install "
            "the fsspec backend for the scheme (e.g. `pip install s3fs` for s3://)."
        ) from exc
    return fs, path


def protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def segments(fs: fsspec.AbstractFileSystem, root: str, stream: str) -> list[str]:
    """Every Parquet segment of ``stream`` (``decisions`` or ``rewards``) under ``root``, at any depth, sorted.

    A rollout's log holds one directory per writer set: ``<url>/stable``, ``<url>/candidate`` and
    ``<url>/router`` each with their own ``decisions/`` and ``rewards/``. A reward for a candidate's
    decision may be accepted (and logged) by a stable pod, so readers take the whole tree: pointing
    them at ``<url>`` joins every writer, pointing them at ``<url>/stable`` reads that one variant's.
    """
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return []
    return sorted(
        p
        for p in found
        if p.endswith(".parquet")
        and p.rsplit("/", 2)[-2:-1] == [stream]
        and not p.rsplit("/", 1)[-1].startswith(("_", "."))
    )
