"""A DuckDB connection set up for the joiner: bounded memory, a spill directory, few threads.

Why a module of its own: every join (in memory or streaming) opens its connection the same way, and
the limits are the ones that keep a 100-million-decision join under 2 GB on a small machine.
"""

from __future__ import annotations

import os
import tempfile

import duckdb

__all__ = ["connect"]


def connect(
    memory_limit: str = "1GB", threads: int | None = None, temp_dir: str | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database that spills to ``temp_dir`` beyond ``memory_limit``."""
    spill = temp_dir or os.path.join(tempfile.gettempdir(), f"policy-join-{os.getpid()}")
    con = duckdb.connect(
        config={
            "memory_limit": memory_limit,
            "temp_directory": spill,
            "threads": threads or min(4, os.cpu_count() or 1),
            "preserve_insertion_order": False,
        }
    )
    return con
