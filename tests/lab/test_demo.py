"""`policy-rollouts demo --fast`, the README's first command, run as a user runs it.

It must stop the reward-hacking candidate at the offline gate (its margin-violation budget) before
it serves anyone, promote the honest one through a judged shadow and the canary steps, roll back
the honest one in a market that shifts once it is live (guardrail margin-floor), and write a
report whose numbers tell that story.
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


def _scenarios(report: dict) -> dict[str, dict]:
    return {s["candidate"]: s for s in report["scenarios"]}


def test_the_reward_hacker_is_stopped_by_the_offline_gate_before_any_customer(demo: tuple[Path, dict, str]) -> None:
    _, report, stdout = demo
    hacker = _scenarios(report)["conversion-only"]
    assert hacker["outcome"] == "Failed", hacker["message"]
    assert hacker["stopped_at"] == "offline-gate" and hacker["candidate_live_decisions"] == 0
    gate = hacker["offlineEvaluation"]
    assert gate["phase"] == "Failed"
    assert all(e["verdict"] == "pass" for e in gate["estimates"]), "on conversions alone it would have passed"
    assert gate["constraints"] and all(
        c["cost"] == "margin_violation" and c["verdict"] == "fail" and c["upperBound"] > c["budget"]
        for c in gate["constraints"])
    assert "margin_violation" in hacker["message"] and "budget" in hacker["message"]
    assert max(s["weight"] for s in hacker["timeline"]) == 0
    assert "conversion-only: Failed, stopped by the offline gate before any traffic; 0 decisions" in stdout


def test_honest_candidate_passes_gate_and_shadow_and_is_promoted(demo: tuple[Path, dict, str]) -> None:
    _, report, _ = demo
    honest = _scenarios(report)["constrained"]
    assert honest["outcome"] == "Promoted", honest["message"]
    assert honest["stopped_at"] is None and honest["candidate_live_decisions"] > 0
    assert "guardrail" not in honest
    assert all(g["verdict"] == "Pass" for g in honest["guardrails"])
    assert all(c["verdict"] == "pass" for c in honest["offlineEvaluation"]["constraints"])
    assert honest["shadowAnalysis"]["passed"] is True
    reasons = [h["reason"] for h in honest["history"]]
    assert "ShadowPassed" in reasons
    phases = [h["phase"] for h in honest["history"]]
    for phase in ("OfflineEvaluation", "Shadow", "Progressing", "Promoted"):
        assert phase in phases
    assert {20, 50, 80} <= {s["weight"] for s in honest["timeline"]}
    assert honest["trafficWhileLive"]["candidate"]["violationRate"] < 0.05
    assert honest["analyses"] and honest["judgeSeries"]


def test_a_market_shift_after_the_shadow_is_caught_live_by_a_guardrail(demo: tuple[Path, dict, str]) -> None:
    _, report, stdout = demo
    drift = _scenarios(report)["drift"]
    assert drift["outcome"] == "RolledBack", drift["message"]
    assert drift["offlineEvaluation"]["phase"] == "Passed" and drift["shadowAnalysis"]["passed"] is True
    assert drift["guardrail"] == "margin-floor" and drift["stopped_at"].startswith("step-")
    assert drift["candidate_live_decisions"] > 0
    failing = next(g for g in drift["guardrails"] if g["name"] == "margin-floor")
    assert failing["verdict"] == "Fail" and failing["value"] > 0.05
    assert "drift: RolledBack, rolled back at step-" in stdout and "guardrail margin-floor" in stdout


def test_the_constraint_sees_what_the_reward_cannot(demo: tuple[Path, dict, str]) -> None:
    _, report, _ = demo
    gates = {c: s["offlineEvaluation"] for c, s in _scenarios(report).items()}
    dr = {c: next(e["value"] for e in g["estimates"] if e["estimator"] == "dr") for c, g in gates.items()}
    assert dr["conversion-only"] > dr["constrained"], "the proxy reward favours the hacker offline"
    cost = {c: next(x["value"] for x in g["constraints"] if x["estimator"] == "dr") for c, g in gates.items()}
    assert cost["conversion-only"] > 3 * max(cost["constrained"], 0.01), "its margin violations do not"
    for gate in gates.values():
        for e in gate["estimates"]:
            assert e["ciLow"] <= e["value"] <= e["ciHigh"]


def test_report_files(demo: tuple[Path, dict, str]) -> None:
    out, report, _ = demo
    assert report["logging"]["rewards"] > 1000
    assert len(report["training"]["candidates"]) == 2
    assert [s["candidate"] for s in report["scenarios"]] == ["conversion-only", "constrained", "drift"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "margin-floor" in html and "Promoted" in html and "RolledBack" in html
    assert (out / "manifests" / "pricing-constrained.yaml").exists()


def test_the_log_spans_a_whole_season() -> None:
    # otherwise the candidates meet seasons in the rollout that their training data never showed
    for settings in (pipeline.FAST, pipeline.FULL):
        assert settings.log_decisions >= pipeline.SEASON_CUSTOMERS


def test_every_reward_posted_is_joined_across_replicas_swaps_and_the_rollback(demo: tuple[Path, dict, str]) -> None:
    # 2 replicas per variant, feedback up to longer than a step: no reward may be lost on the way to the dataset
    _, report, stdout = demo
    for s in report["scenarios"]:
        by_variant = s["rewards_by_variant"]
        assert s["rewards_posted"] == s["rewards_joined"] + s["rewards_lost"], s["candidate"]
        assert s["rewards_lost"] == 0, (s["candidate"], by_variant)
        assert s["rewards_posted"] == sum(c["posted"] for c in by_variant.values()) > 0
        for counts in by_variant.values():
            assert counts["posted"] == counts["accepted"] == counts["joined"]
        assert f"rewards posted {s['rewards_posted']}, joined {s['rewards_joined']}, lost 0" in stdout
    scenarios = _scenarios(report)
    # the promoted and the rolled-back candidates' rewards were posted and joined too
    for name in ("constrained", "drift"):
        assert scenarios[name]["rewards_by_variant"]["candidate"]["joined"] > 0
    assert "rewards lost" in (demo[0] / "report.html").read_text()
