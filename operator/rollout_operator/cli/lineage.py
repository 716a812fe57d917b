"""`kubectl policyrollout lineage NAME [--revision N] [--json]`: where each promoted policy came from.

Reads only the object (status.revisions: each promoted version's lineage and the offline gate's
result for it), so what it prints is what the operator recorded. Revisions are numbered from 1,
oldest kept first, as this command lists them. Pure functions from the object to text, so they are
tested without a cluster; `plugin.py` fetches the object and prints.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from rollout_operator.cli.session import JSON, PluginError

__all__ = ["render", "revision_view", "summary_rows"]

_COLUMNS = ("REVISION", "VERSION", "PROMOTED AT", "DATASET", "ROWS", "CODE", "OPE", "GATE")


def _revisions(obj: JSON) -> list[JSON]:
    return list((obj.get("status") or {}).get("revisions") or [])


def revision_view(obj: JSON, number: int) -> JSON:
    """Revision ``number`` (1-based, oldest kept first): version, artifact, lineage and gate result."""
    revisions, name = _revisions(obj), obj["metadata"]["name"]
    if not revisions:
        raise PluginError(f"{name} has promoted no policy yet, so no lineage is recorded; "
                          f"follow its rollout with kubectl policyrollout status {name}")
    if not 1 <= number <= len(revisions):
        raise PluginError(f"revision {number} is not recorded for {name} (it keeps revisions 1-{len(revisions)}); "
                          f"list them with kubectl policyrollout lineage {name}")
    revision = revisions[number - 1]
    return {"revision": number, "version": revision.get("version"), "promotedAt": revision.get("promotedAt"),
            "artifact": (revision.get("policy") or {}).get("artifact"),
            "lineage": revision.get("lineage"), "offlineEvaluation": revision.get("offlineEvaluation")}


def summary_rows(obj: JSON) -> list[tuple[str, ...]]:
    """One row per revision: what the table of `lineage NAME` shows ('-' where a part is unknown)."""
    rows = []
    for number, revision in enumerate(_revisions(obj), start=1):
        lineage: dict[str, Any] = revision.get("lineage") or {}
        dataset, code, ope = lineage.get("dataset") or {}, lineage.get("code") or {}, lineage.get("opeReport") or {}
        gate = revision.get("offlineEvaluation") or {}
        rows.append((str(number), str(revision.get("version", "")), str(revision.get("promotedAt", "")),
                     str(dataset.get("uri", "-")), str(dataset.get("rows", "-")),
                     str(code.get("commit") or code.get("image") or "-"), str(ope.get("verdict", "-")),
                     str(gate.get("phase", "-"))))
    return rows


def render(obj: JSON, number: int | None, as_json: bool) -> Any:
    """Text (YAML or JSON) for one revision, JSON for all; a rich Table for all otherwise."""
    if number is not None:
        view = revision_view(obj, number)
        return json.dumps(view, indent=2) if as_json else yaml.safe_dump(view, sort_keys=False).rstrip()
    if as_json:
        return json.dumps([revision_view(obj, n) for n in range(1, len(_revisions(obj)) + 1)], indent=2)
    from rich import box
    from rich.table import Table

    name = obj["metadata"]["name"]
    table = Table(title=f"Lineage of {name}'s promoted revisions (details: --revision N)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for column in _COLUMNS:
        table.add_column(column, overflow="fold")
    for row in summary_rows(obj):
        table.add_row(*row)
    if not table.rows:
        return f"{name} has promoted no policy yet, so no lineage is recorded"
    return table
