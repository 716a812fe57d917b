"""What the suite needs from the machine, as failures that say what to install, never as skips.

A skipped check reads as a passed one in a summary nobody scrolls through, so a missing tool or
schema fails the tests that need it, naming what to install. `scripts/bootstrap.sh` (`make test`
runs it) installs every tool named here; the schemas are in `../shared/schemas`.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO.parent / "shared" / "schemas"  # third-party CRDs, test data kept beside the repository


def binary(name: str, hint: str, path: str | None = None) -> str:
    """The path of the executable `name` (on `path`, default PATH), or fail the test with `hint`."""
    found = shutil.which(name, path=path)
    if found is None:
        pytest.fail(f"{name} is not installed (looked on {path or 'PATH'}): {hint}", pytrace=False)
    return found


def schema(file_name: str) -> Path:
    """A third-party CRD from ../shared/schemas, or fail the test saying where it should be."""
    path = SCHEMAS / file_name
    if not path.is_file():
        pytest.fail(f"schema {file_name} not found in {SCHEMAS.resolve()}: the schema checks need ../shared/schemas "
                    "(see its README.md for where each file comes from)", pytrace=False)
    return path


def prometheus() -> str:
    """The Prometheus binary local mode runs ($PROMETHEUS_BINARY, then PATH), or fail saying how to install it."""
    from rollout_lab.local import prometheus as local_prometheus

    try:
        return local_prometheus.find_binary()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


def module(name: str, hint: str) -> ModuleType:
    """Import `name`, or fail the test saying what to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"{name} cannot be imported ({exc}): {hint}", pytrace=False)


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    """A headless-capable Chromium ($CHROMIUM_BINARY, then PATH), or fail saying how to install it."""
    explicit = os.environ.get("CHROMIUM_BINARY")
    if explicit:
        return binary(explicit, "CHROMIUM_BINARY names no executable; unset it or point it at Chromium")
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    pytest.fail(f"Chromium is not installed (looked for {', '.join(CHROMIUM_NAMES)} on PATH): the report tests "
                "render the demo's report as a user sees it; run scripts/bootstrap.sh as root, or "
                "apt-get install chromium (Debian), or set CHROMIUM_BINARY", pytrace=False)
