"""The Argo CD health check (Lua), run by a real Lua runtime against PolicyRollouts the engine produced."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lupa
import pytest
from rollout_operator import api

from tests.support import kstatus

ROOT = Path(__file__).resolve().parents[2]
LUA_FILE = ROOT / "docs" / "argocd" / "policyrollout-health.lua"
DOC = ROOT / "docs" / "gitops.md"
P = api.Phase


def health(obj: dict[str, Any]) -> dict[str, str]:
    """Evaluate the check as Argo CD does: a chunk that sees `obj` and returns a table."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(LUA_FILE.read_text())
    return dict(result.items())


@pytest.mark.parametrize(("phase", "step", "status"), [
    (P.PROMOTED, None, "Healthy"),
    (P.PENDING, None, "Progressing"),
    (P.SHADOW, None, "Progressing"),
    (P.PROGRESSING, None, "Progressing"),
    (P.PAUSED, 2, "Progressing"),  # a timed pause ends by itself
    (P.PAUSED, 1, "Suspended"),  # a pause without duration waits for `promote`
    (P.AWAITING_APPROVAL, None, "Suspended"),
    (P.ROLLING_BACK, None, "Degraded"),
    (P.ROLLED_BACK, None, "Degraded"),
    (P.FAILED, None, "Degraded"),
    (P.ABORTED, None, "Degraded"),
])
def test_health_of_each_phase(phase: P, step: int | None, status: str) -> None:
    result = health(kstatus.sample(phase, step, message="error-rate 0.3 >= 0.05"))
    assert result["status"] == status
    if status in ("Degraded", "Suspended"):
        assert "error-rate 0.3 >= 0.05" in result["message"], "the operator's message reaches Argo CD"


def test_an_unobserved_spec_change_is_progressing_even_when_promoted() -> None:
    result = health(kstatus.sample(P.PROMOTED, generation=5, observed=4))
    assert result == {"status": "Progressing", "message": "Waiting for the operator to observe generation 5"}


def test_no_status_yet_is_progressing() -> None:
    obj = kstatus.sample(P.PENDING)
    del obj["status"]
    assert health(obj)["status"] == "Progressing"


def test_phase_alone_still_maps_when_conditions_are_missing() -> None:
    """An operator older than the conditions (or a status written by hand) still gets a sensible health."""
    for phase, expected in [(P.PROMOTED, "Healthy"), (P.ROLLED_BACK, "Degraded"), (P.AWAITING_APPROVAL, "Suspended"),
                            (P.PROGRESSING, "Progressing")]:
        obj = kstatus.sample(phase)
        obj["status"].pop("conditions")
        assert health(obj)["status"] == expected, phase


def test_argo_health_agrees_with_kstatus() -> None:
    """Healthy exactly when kstatus says Current, Degraded exactly when it says Failed."""
    for phase in P:
        for step in (0, 1, 2, 3):
            obj = kstatus.sample(phase, step)
            argo, ks = health(obj)["status"], kstatus.compute(obj).status
            assert (argo == "Healthy") == (ks == kstatus.CURRENT), (phase, step, argo, ks)
            assert (argo == "Degraded") == (ks == kstatus.FAILED), (phase, step, argo, ks)


def test_the_doc_shows_the_same_lua_as_the_file() -> None:
    text = DOC.read_text()
    match = re.search(r"resource\.customizations\.health\.policy\.rollouts\.io_PolicyRollout: \|\n((?:    .*\n|\n)+)",
                      text)
    assert match, "docs/gitops.md lost its argocd-cm example"
    block = "\n".join(line[4:] for line in match.group(1).rstrip("\n").split("\n"))
    assert block.strip() == LUA_FILE.read_text().strip()
