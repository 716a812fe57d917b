"""One root exception per package: every error a package raises on purpose derives from it.

Callers (the CLI, the controller, a provider author) can then tell "anticipated, the message is
for the user" from "a bug" with one `except`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

ROOTS = {
    "rollout_operator": "rollout_operator.errors.RolloutOperatorError",
    "rollout_lab": "rollout_lab.errors.RolloutLabError",
    "policy_server": "policy_server.errors.PolicyServerError",
}
# Internal control flow, never seen outside its module.
PRIVATE_SIGNALS = {"rollout_operator.informers._Expired"}


def _load(dotted: str) -> type[BaseException]:
    module, _, name = dotted.rpartition(".")
    found: type[BaseException] = getattr(importlib.import_module(module), name)
    return found


def _exceptions_defined_in(package: str) -> dict[str, type[BaseException]]:
    root = importlib.import_module(package)
    found = {}
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    return found


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_error_of_a_package_derives_from_its_root(package: str) -> None:
    root = _load(ROOTS[package])
    errors = _exceptions_defined_in(package)
    assert errors, f"no exceptions found in {package}: the walk is broken"
    strays = sorted(name for name, error in errors.items()
                    if not issubclass(error, root) and name not in PRIVATE_SIGNALS)
    assert strays == []
