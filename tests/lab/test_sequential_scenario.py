"""The sequential demo scenario (`policy-rollouts demo --scenario sequential --fast`), end to end on real processes.

Specification (issue #19, "Done when"): days of the cooling environment are logged under the thermostat
through a real policy server; two candidates are trained with `constrained-cql`, one without a cost
budget and one within it; the trajectory gate refuses the unconstrained one on its overheat budget
before it serves a single step, and passes the constrained one, which is shadowed, canaried under
guardrails and promoted. The simulator, which the gate never sees, agrees with the gate's ordering.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from rollout_lab.demo import sequential
from rollout_lab.local import view

from tests.support import requirements

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    requirements.prometheus()
    out = tmp_path_factory.mktemp("sequential")
    quiet = view.LiveView(Console(file=io.StringIO(), width=120))
    result = sequential.run_sequential(out, fast=True, seed=0, live=quiet)
    assert json.loads((Path(out) / "report.json").read_text())["scenario"] == "sequential"
    result["html"] = (Path(out) / "report.html").read_text()
    return result


def _rollouts(report: dict) -> dict[str, dict]:
    return {s["candidate"]: s for s in report["scenarios"]}


def test_days_are_logged_under_the_fallback_as_episodes(report: dict) -> None:
    logging = report["logging"]
    assert logging["episodes"] == sequential.FAST.episodes and logging["failedEpisodes"] == 0
    assert logging["decisions"] == logging["rewards"] == sequential.FAST.episodes * 24


def test_both_candidates_are_trained_with_constrained_cql(report: dict) -> None:
    trained = {c["name"]: c for c in report["training"]["candidates"]}
    assert set(trained) == {"unconstrained", "constrained"}
    for c in trained.values():
        assert c["result"]["algorithm"] == "constrained-cql" and c["result"]["steps"] == sequential.FAST.train_steps
    assert trained["unconstrained"]["result"]["lambdas"] == {}
    assert trained["constrained"]["result"]["budgets"] == {"overheat": sequential.FAST.budget}
    assert trained["constrained"]["result"]["lambdas"]["overheat"] > 0  # the budget bound during training


def test_the_unconstrained_candidate_is_refused_by_the_gate_on_its_overheat_budget(report: dict) -> None:
    unconstrained = _rollouts(report)["unconstrained"]
    assert unconstrained["outcome"] == "Failed", unconstrained["message"]
    assert unconstrained["stopped_at"] == "offline-gate" and unconstrained["candidate_live_decisions"] == 0
    gate = unconstrained["gate"]
    assert gate["verdict"] == "fail" and "overheat" in gate["reason"]
    assert {e["estimator"] for e in gate["estimates"]} == set(sequential.ESTIMATORS)
    assert all(e["verdict"] == "pass" for e in gate["estimates"]), "on energy alone it would have passed"
    failing = [c for c in gate["costs"] if c["verdict"] == "fail"]
    assert failing and all(c["upperBound"] > c["budget"] == sequential.FAST.gate_max for c in failing)


def test_the_constrained_candidate_passes_the_gate_and_is_promoted(report: dict) -> None:
    constrained = _rollouts(report)["constrained"]
    assert constrained["outcome"] == "Promoted", constrained["message"]
    assert constrained["stopped_at"] is None and constrained["candidate_live_decisions"] > 0
    gate = constrained["gate"]
    assert gate["verdict"] == "pass", gate["reason"]
    assert gate["costs"] and all(c["upperBound"] <= c["budget"] for c in gate["costs"])
    for e in gate["estimates"]:
        assert e["ciLow"] <= e["value"] <= e["ciHigh"]
    assert constrained["trafficWhileLive"]["candidate"]["rewards"] > 0


def test_the_simulator_agrees_with_the_gate(report: dict) -> None:
    """True discounted overheat per day, from days the gate never saw: above the budget and within it."""
    truth = report["simulated"]
    assert truth["unconstrained"]["overheat"] > report["gateMax"] > truth["constrained"]["overheat"]
    assert truth["unconstrained"]["overheat"] > truth["fallback"]["overheat"]  # hotter than the thermostat, too


def test_the_html_report_shows_the_gate_the_truth_and_the_curves(report: dict) -> None:
    page = report["html"]
    assert "cooling-unconstrained: Failed" in page and "cooling-constrained: Promoted" in page
    assert "Truth in the simulator" in page and "Kish effective trajectories" in page
    assert page.count("data:image/png;base64,") >= 3  # training curves, gate charts, weights
