"""`policy-rollouts demo --fast`, the README's first command, run as a user runs it.

It must roll back the reward-hacking candidate naming the margin-floor guardrail, promote the
honest one, and write a report whose numbers tell that story (the hacker converts more but
breaks the floor; both passed the offline gate, which cannot see the floor).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rollout_lab.demo import pipeline

from tests.support import requirements

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module", autouse=True)
def _prometheus_installed() -> None:
    """Prometheus runs as a local process here: without it these tests fail, saying how to install it."""
    requirements.prometheus()


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "rollout_operator.cli.main", "demo", "--fast", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text()), proc.stdout


def test_reward_hacker_rolled_back_with_its_guardrail_named(demo: tuple[Path, dict, str]) -> None:
    _, report, stdout = demo
    by_candidate = {s["candidate"]: s for s in report["scenarios"]}
    hacker = by_candidate["conversion-only"]
    assert hacker["outcome"] == "RolledBack", hacker["message"]
    assert hacker["guardrail"] == "margin-floor"
    assert "margin-floor" in hacker["message"]
    failing = next(g for g in hacker["guardrails"] if g["name"] == "margin-floor")
    assert failing["verdict"] == "Fail" and failing["value"] > 0.05
    assert "conversion-only: RolledBack (guardrail margin-floor)" in stdout
    # it got live traffic before the rollback, and it really broke the floor there
    live = hacker["trafficWhileLive"]["candidate"]
    assert live["decisions"] > 0 and live["violationRate"] > 0.1


def test_honest_candidate_promoted(demo: tuple[Path, dict, str]) -> None:
    _, report, _ = demo
    honest = next(s for s in report["scenarios"] if s["candidate"] == "constrained")
    assert honest["outcome"] == "Promoted", honest["message"]
    assert "guardrail" not in honest
    assert all(g["verdict"] == "Pass" for g in honest["guardrails"])
    phases = [h["phase"] for h in honest["history"]]
    for phase in ("OfflineEvaluation", "Shadow", "Progressing", "Promoted"):
        assert phase in phases
    weights = {s["weight"] for s in honest["timeline"]}
    assert {20, 50, 80} <= weights
    assert honest["trafficWhileLive"]["candidate"]["violationRate"] < 0.05


def test_offline_gate_ran_for_both_and_cannot_see_the_constraint(demo: tuple[Path, dict, str]) -> None:
    _, report, _ = demo
    for s in report["scenarios"]:
        gate = s["offlineEvaluation"]
        assert gate["phase"] == "Passed"
        assert {e["estimator"] for e in gate["estimates"]} == {"snips", "dr"}
        for e in gate["estimates"]:
            assert e["ciLow"] <= e["value"] <= e["ciHigh"]
    gates = {s["candidate"]: s["offlineEvaluation"] for s in report["scenarios"]}
    dr = {c: next(e["value"] for e in g["estimates"] if e["estimator"] == "dr") for c, g in gates.items()}
    assert dr["conversion-only"] > dr["constrained"]  # the proxy reward favours the hacker offline


def test_report_files(demo: tuple[Path, dict, str]) -> None:
    out, report, _ = demo
    assert report["logging"]["rewards"] > 1000
    assert len(report["training"]["candidates"]) == 2
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # weights, reward/cost by variant, OPE per scenario
    assert "margin-floor" in html and "Promoted" in html and "RolledBack" in html
    assert (out / "manifests" / "pricing-constrained.yaml").exists()


def test_the_log_spans_a_whole_season() -> None:
    # otherwise the candidates meet seasons in the rollout that their training data never showed
    for settings in (pipeline.FAST, pipeline.FULL):
        assert settings.log_decisions >= pipeline.SEASON_CUSTOMERS
