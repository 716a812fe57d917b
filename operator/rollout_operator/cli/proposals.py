"""`kubectl policyrollout proposals`: the actions the policy proposed outside its envelope, for a person.

Counts per variant come from Prometheus (``policy_envelope_proposals_total``, exact across replicas
and restarts); a few examples per proposed action from the decision log (``proposed_action``),
read newest segment first and bounded, so a month of logs costs no more than a day's. Either
source may be missing: the view says so in one line with the flag to pass and prints the rest.
It ends with the spec change that would admit the listed actions: approval is widening the spec
(GitOps audits it); ``--reject`` records a person's "no" as an annotation (audited in events).
The render functions are pure; :func:`query_counts` and :func:`read_examples` do the I/O.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rollout_operator import api

__all__ = [
    "ANNOTATION_REJECTED",
    "Example",
    "growth",
    "promql",
    "query_counts",
    "read_examples",
    "rejected",
    "render",
    "widened_envelope",
]

ANNOTATION_REJECTED = f"{api.GROUP}/rejected-proposals"
MAX_SEGMENTS = 64  # newest decision-log segments read for examples
JSON = dict[str, Any]


@dataclass(frozen=True)
class Example:
    time: float
    variant: str
    entity: str | None
    request_id: str
    proposed: str
    served: str


def promql(name: str, namespace: str, since: str) -> str:
    """The raw samples of the rollout's proposal counters in the window (one series per pod, variant and
    proposed action); :func:`query_counts` turns them into counts."""
    return f'policy_envelope_proposals_total{{rollout="{name}",namespace="{namespace}"}}[{since}]'


def growth(samples: Sequence[float]) -> float:
    """How much a counter grew over its samples, exactly: a drop is a restart of the process (its counter
    starts again at 0), so the value after it is all new. Why not PromQL: ``increase()`` extrapolates to
    the window's edges (31.5 for 30 proposals), and ``max_over_time - min_over_time`` miscounts across a
    container restart, which keeps the pod's series."""
    total = 0.0
    for before, after in itertools.pairwise(samples):
        total += after - before if after >= before else after
    return total


def query_counts(url: str, query: str) -> dict[tuple[str, str], float]:
    """(variant, proposed) -> proposals in the window; raises ValueError on a Prometheus error."""
    import httpx

    response = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query}, timeout=10.0)
    body = response.json()
    if body.get("status") != "success":
        raise ValueError(body.get("error") or f"HTTP {response.status_code}")
    out: dict[tuple[str, str], float] = {}
    for series in body["data"]["result"]:
        labels = series["metric"]
        key = (labels.get("variant", "?"), labels.get("proposed", "?"))
        values = [float(v) for _, v in series["values"]]
        out[key] = out.get(key, 0.0) + growth([v for v in values if math.isfinite(v)])
    return {key: value for key, value in out.items() if round(value) > 0}


def _label(values: Sequence[float] | None) -> str:
    if values is None:
        return "-"
    if len(values) == 1 and float(values[0]).is_integer():
        return str(int(values[0]))
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def read_examples(url: str, since_ts: float, per_action: int = 3) -> dict[str, list[Example]]:
    """Newest replaced decisions per proposed action (at most ``per_action`` each), from the newest segments.

    Reads the decision log's documented layout (docs/decision-log.md: ``<writer>/decisions/*.parquet`` at any
    depth under the rollout's URL) with pyarrow and fsspec rather than through ``policy_server``: the operator
    package never imports the data plane (tests/test_package_boundaries.py), and the plugin needs neither torch
    nor the server's writer, only the format."""
    try:
        import fsspec
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        needs = "reading the decision log needs pyarrow and fsspec: pip install 'policy-rollouts[server]'"
        raise ValueError(needs) from None

    fs, root = fsspec.core.url_to_fs(url)
    try:
        found = fs.find(root)
    except FileNotFoundError:
        found = []
    paths = [p for p in found if p.endswith(".parquet") and p.rsplit("/", 2)[-2:-1] == ["decisions"]
             and not p.rsplit("/", 1)[-1].startswith(("_", "."))]
    paths = sorted(paths, key=lambda p: p.rsplit("/", 1)[-1], reverse=True)[:MAX_SEGMENTS]
    columns = ["time", "variant", "request_id", "context_json", "action", "proposed_action"]
    found: dict[str, list[Example]] = {}
    for path in paths:
        with fs.open(path, "rb") as f:
            segment = pq.ParquetFile(f)
            if "proposed_action" not in segment.schema_arrow.names:  # written before the column existed
                break
            table = segment.read(columns=columns)
        if table.num_rows and pc.max(table["time"]).as_py() < since_ts:
            break  # this segment and every older one ended before the window
        table = table.filter(pc.is_valid(table["proposed_action"]))
        for row in reversed(table.to_pylist()):
            if row["time"] < since_ts:
                continue
            key = _label(row["proposed_action"])
            bucket = found.setdefault(key, [])
            if len(bucket) < per_action:
                entity = json.loads(row["context_json"]).get("entity") if row["context_json"] else None
                bucket.append(
                    Example(row["time"], row["variant"], entity, row["request_id"], key, _label(row["action"]))
                )
    return found


def rejected(obj: JSON) -> list[str]:
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_REJECTED, "")
    return [r for r in raw.split(",") if r]


def widened_envelope(obj: JSON, proposed: Sequence[str]) -> str | None:
    """The ``spec.envelope`` that admits the (discrete, not rejected) proposed actions, as YAML; None if none."""
    envelope = dict((obj.get("spec") or {}).get("envelope") or {})
    extra = sorted({int(p) for p in proposed if p.isdigit()} - {int(r) for r in rejected(obj) if r.isdigit()})
    current = envelope.get("actions")
    if current is None or not extra:
        return None
    envelope["actions"] = sorted(set(current) | set(extra))
    import yaml

    return yaml.safe_dump({"spec": {"envelope": envelope}}, sort_keys=False).rstrip()


def render(
    obj: JSON,
    counts: Mapping[tuple[str, str], float] | None,
    examples: Mapping[str, list[Example]] | None,
    notes: Sequence[str],
    since: str,
) -> str:
    """The whole view as text: one block per proposed action, then the spec change that would admit them."""
    name = (obj.get("metadata") or {}).get("name", "?")
    lines = [f"Proposals outside the envelope of {name} over the last {since}"]
    lines += notes
    no = rejected(obj)
    actions = sorted(
        {p for _, p in (counts or {})} | set(examples or {}),
        key=lambda p: (not p.isdigit(), int(p) if p.isdigit() else p),
    )
    if not actions:
        lines.append("no proposals: every decision was inside the envelope")
    for action in actions:
        per_variant = {v: n for (v, p), n in (counts or {}).items() if p == action}
        total = ", ".join(f"{v} {round(n)}" for v, n in sorted(per_variant.items())) or "count unknown"
        mark = "  [rejected]" if action in no else ""
        lines.append(f"proposed {action}: {total}{mark}")
        for ex in (examples or {}).get(action, []):
            stamp = datetime.fromtimestamp(ex.time, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            lines.append(
                f"  {stamp}  {ex.variant:<9} entity={ex.entity or '-'}  id={ex.request_id}  "
                f"proposed={ex.proposed} served={ex.served}"
            )
    widened = widened_envelope(obj, actions)
    if widened:
        lines.append("To approve, widen the envelope in the PolicyRollout (through GitOps):")
        lines += ["  " + line for line in widened.splitlines()]
        lines.append(f"To refuse: kubectl policyrollout proposals {name} --reject ACTION")
    return "\n".join(lines)
