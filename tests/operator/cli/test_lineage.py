"""`kubectl policyrollout lineage`'s views, from the object alone (the verb against a cluster: test_plugin.py).

Revisions are numbered from 1, oldest kept first; a revision without lineage shows '-' for what is
unknown rather than inventing it; an unknown revision is one line saying which ones exist.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from rollout_operator import api
from rollout_operator.cli import lineage
from rollout_operator.cli.session import PluginError

LINEAGE = {"dataset": {"uri": "s3://logs/pricing", "from": "2026-01-01T00:00:00Z", "rows": 900},
           "code": {"image": "server:1"}, "hyperparameters": {"steps": 2000},
           "opeReport": {"uri": "s3://models/v2/ope.json", "verdict": "pass"}}


def _rollout(*revisions: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "pricing"}, "status": {"revisions": list(revisions)}}


def _revision(version: str, **extra: Any) -> dict[str, Any]:
    return {"version": version, "policy": {"image": "i", "artifact": f"s3://p/{version}", "version": version},
            "promotedAt": "2026-01-02T00:00:00Z", **extra}


GATE = {"jobId": "ope-1", "candidateVersion": "v2", "phase": "Passed"}
OBJ = _rollout(_revision("v1"), _revision("v2", lineage=LINEAGE, offlineEvaluation=GATE))


def test_the_summary_has_a_row_per_revision_and_dashes_for_the_unknown() -> None:
    first, second = lineage.summary_rows(OBJ)
    assert first == ("1", "v1", "2026-01-02T00:00:00Z", "-", "-", "-", "-", "-")
    assert second == ("2", "v2", "2026-01-02T00:00:00Z", "s3://logs/pricing", "900", "server:1", "pass", "Passed")


def test_one_revision_is_yaml_or_json_with_the_recorded_lineage() -> None:
    view = yaml.safe_load(lineage.render(OBJ, 2, as_json=False))
    assert view["version"] == "v2" and view["artifact"] == "s3://p/v2" and view["lineage"] == LINEAGE
    assert json.loads(lineage.render(OBJ, 2, as_json=True)) == view
    assert [v["version"] for v in json.loads(lineage.render(OBJ, None, as_json=True))] == ["v1", "v2"]
    # What the command prints is what the operator's status model writes.
    stored = api.Revision.model_validate(OBJ["status"]["revisions"][1])
    assert stored.lineage is not None and stored.lineage.wire() == view["lineage"]


@pytest.mark.parametrize(("obj", "number", "says"), [
    (OBJ, 3, "revision 3 is not recorded for pricing (it keeps revisions 1-2)"),
    (OBJ, 0, "revision 0 is not recorded"),
    (_rollout(), 1, "pricing has promoted no policy yet"),
])
def test_an_unknown_revision_says_which_exist(obj: dict[str, Any], number: int, says: str) -> None:
    with pytest.raises(PluginError, match=r"kubectl policyrollout (lineage|status) pricing") as raised:
        lineage.revision_view(obj, number)
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_no_revisions_is_said_in_words() -> None:
    said = lineage.render(_rollout(), None, as_json=False)
    assert said == "pricing has promoted no policy yet, so no lineage is recorded"
