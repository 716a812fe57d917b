"""`kubectl policyrollout proposals`' view, from the object and the sources' data alone (the verb against a
cluster, a Prometheus and a decision log: test_proposals.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from rollout_operator.cli import plugin, proposals

EXAMPLE = proposals.Example(1_765_000_000.0, "candidate", "shop-1", "r1.abc", "3", "1")


def obj(envelope: dict[str, Any], rejected: str | None = None) -> dict[str, Any]:
    annotations = {} if rejected is None else {proposals.ANNOTATION_REJECTED: rejected}
    return {"metadata": {"name": "pricing", "annotations": annotations}, "spec": {"envelope": envelope}}


def test_counts_per_variant_examples_and_the_widening() -> None:
    counts = {("candidate", "3"): 30.0, ("stable", "3"): 2.0, ("candidate", "5"): 1.0}
    out = proposals.render(obj({"actions": [0, 1, 2]}), counts, {"3": [EXAMPLE]}, [], "24h")
    lines = out.splitlines()
    assert lines[0] == "Proposals outside the envelope of pricing over the last 24h"
    assert "proposed 3: candidate 30, stable 2" in lines and "proposed 5: candidate 1" in lines
    assert "  2025-12-06T05:46:40Z  candidate entity=shop-1  id=r1.abc  proposed=3 served=1" in lines
    suggested = out.split("(through GitOps):\n", 1)[1].split("\nTo refuse")[0]
    assert yaml.safe_load("\n".join(line[2:] for line in suggested.splitlines())) == {
        "spec": {"envelope": {"actions": [0, 1, 2, 3, 5]}}
    }


def test_a_rejected_action_is_marked_and_not_offered() -> None:
    out = proposals.render(obj({"actions": [0]}, rejected="3"), {("candidate", "3"): 4.0}, None, ["note"], "1h")
    assert "proposed 3: candidate 4  [rejected]" in out and "To approve" not in out and "note" in out


def test_continuous_proposals_are_listed_by_limit_without_a_suggested_change() -> None:
    out = proposals.render(obj({"low": [0.0], "high": [1.0]}), {("candidate", "dim0_high"): 7.0}, {}, [], "24h")
    assert "proposed dim0_high: candidate 7" in out and "To approve" not in out


def test_nothing_proposed_says_so() -> None:
    assert "no proposals" in proposals.render(obj({"actions": [0]}), {}, {}, [], "24h")


@pytest.mark.parametrize(
    ("samples", "grown"),
    [
        ([0.0, 4.0, 4.0, 9.0], 9.0),  # a pod's counter over the window
        ([7.0, 7.0], 0.0),  # nothing new: what came before the window is not counted
        ([3.0, 8.0, 2.0, 5.0], 10.0),  # the container restarted after 8 (same pod, same series): 5 + 2 + 3
        ([5.0, 0.0], 0.0),  # restarted, nothing since
        ([6.0], 0.0),  # one sample: no growth seen
        ([], 0.0),
    ],
)
def test_a_counter_grows_by_its_increments_and_starts_again_after_a_restart(samples: list[float],
                                                                             grown: float) -> None:
    assert proposals.growth(samples) == grown


def test_a_bad_window_is_one_line_before_any_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = tmp_path / "config"  # an API server nobody listens on: the window is checked first
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
                "current-context": "x",
            }
        )
    )
    code = plugin.main(["proposals", "pricing", "--since", "1day", "--kubeconfig", str(kubeconfig)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--since" in err
