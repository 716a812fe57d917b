"""Package boundaries: the operator runs without torch or gymnasium, and nothing imports local mode back.

The operator image installs neither (operator/Dockerfile installs the package without extras), so
`policy-rollouts operator` must start without them. Dependencies point one way:
`rollout_lab` (local mode, demo, judge benchmark) -> `rollout_operator`, `policy_server`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "gymnasium")

# Runs in a fresh interpreter: any attempt to import a heavy module fails and is recorded, the
# operator command runs to its first real step (reading the kubeconfig), then the record is printed.
_PROBE = """
import importlib.abc, json, sys
attempts = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy!r}:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, Block())
from rollout_operator.cli import main
import rollout_operator.handlers, rollout_operator.controller, rollout_operator.reconciler
status = main.main({argv!r})
print(json.dumps({{"status": status, "attempts": attempts,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})}}))
"""


def _probe(argv: list[str]) -> dict[str, object]:
    code = _PROBE.format(heavy=HEAVY, argv=argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.stdout.strip(), f"the probe printed nothing; stderr:\n{done.stderr}"
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    return result


def test_the_operator_command_runs_without_torch_or_gymnasium(tmp_path: Path) -> None:
    result = _probe(["operator", "--kubeconfig", str(tmp_path / "missing-kubeconfig")])
    assert result["attempts"] == [] and result["loaded"] == []
    # It got as far as its own first check, which fails with its usual one-line error.
    assert result["status"] != 0
    assert "missing-kubeconfig" in str(result["stderr"])
    assert "Traceback" not in str(result["stderr"])


def test_the_local_commands_are_listed_without_loading_torch() -> None:
    code = (
        "import sys, json\n"
        "from rollout_operator.cli import main\n"
        "names = sorted(main.build_parser()._subparsers._group_actions[0].choices)\n"
        f"print(json.dumps([names, sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    names, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"operator", "crds", "cluster", "run", "demo", "bench-judges"} <= set(names)
    assert heavy == []


def _imported_packages(root: Path) -> dict[str, set[str]]:
    """Top-level packages each module under ROOT imports (absolute imports, read from the source)."""
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


@pytest.mark.parametrize(
    ("root", "forbidden"),
    [
        ("operator/rollout_operator", {"rollout_lab", "policy_server", *HEAVY}),
        ("policy_server", {"rollout_lab"}),
    ],
)
def test_dependencies_point_one_way(root: str, forbidden: set[str]) -> None:
    offenders = {path: sorted(names & forbidden)
                 for path, names in _imported_packages(REPO / root).items() if names & forbidden}
    assert offenders == {}
