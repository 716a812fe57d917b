"""The sequential scenario's report.html: gate tables, the simulator's truth and training curves, from report.json."""

from __future__ import annotations

from pathlib import Path

from rollout_lab.demo import sequential_report


def _gate(verdict: str, upper: float) -> dict:
    return {
        "verdict": verdict, "reason": f"cost:overheat (wpdis): upper bound {upper}", "ess": 12.5, "n": 400,
        "estimates": [{"estimator": "wpdis", "value": 11.6, "ciLow": 11.5, "ciHigh": 11.7, "lowerBound": 11.52,
                       "required": 10.3, "verdict": "pass"}],
        "costs": [{"criterion": "cost:overheat", "estimator": "wpdis", "value": upper / 2, "upperBound": upper,
                   "budget": 0.1, "verdict": "pass" if upper <= 0.1 else "fail"}],
    }


def _rollout(name: str, outcome: str, gate: dict) -> dict:
    return {"rollout": f"cooling-{name}", "candidate": name, "outcome": outcome, "message": "m",
            "stopped_at": None if outcome == "Promoted" else "offline-gate", "candidate_live_decisions": 0,
            "gate": gate, "offlineEvaluation": None, "timeline": []}


def _result() -> dict:
    curves = {"lambda/overheat": [[50, 0.5], [100, 1.5]], "cost/overheat": [[50, 0.3], [100, 0.06]]}
    return {
        "environment": "policy_rollouts/Cooling-v0", "gamma": 0.95, "budget": 0.05, "gateMax": 0.1,
        "wallSeconds": 180.0, "logging": {"episodes": 400, "decisions": 9600, "seconds": 28.0},
        "training": {"algorithm": "constrained-cql", "steps": 2000, "seconds": 35.0, "candidates": [
            {"name": "unconstrained", "curves": {"loss/td": [[50, 1.0], [100, 0.5]]}},
            {"name": "constrained", "curves": curves}]},
        "simulated": {"fallback": {"reward": 11.47, "overheat": 0.13},
                      "constrained": {"reward": 11.6, "overheat": 0.001}},
        "scenarios": [_rollout("unconstrained", "Failed", _gate("fail", 0.34)),
                      _rollout("constrained", "Promoted", _gate("pass", 0.05))],
    }


def test_the_page_has_each_rollouts_gate_numbers_and_verdict(tmp_path: Path) -> None:
    sequential_report.write_html(_result(), tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "cooling-unconstrained: Failed" in page and "cooling-constrained: Promoted" in page
    assert "<td>0.34</td>" in page and "<td>fail</td>" in page  # the unconstrained upper bound over its budget
    assert "[11.5, 11.7]" in page  # an estimator's interval
    assert "Kish effective trajectories 12.5 of 400" in page


def test_the_page_shows_the_simulators_truth_and_the_training_curves(tmp_path: Path) -> None:
    sequential_report.write_html(_result(), tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "<td>constrained</td><td>11.6</td><td>0.001</td>" in page
    assert page.count("data:image/png;base64,") == 1  # the curves (these rollouts carry no timeline)


def test_curves_are_drawn_only_for_tags_the_trainer_wrote() -> None:
    assert sequential_report.curves_chart([{"name": "a", "curves": {}}]) is None
    assert sequential_report.curves_chart([{"name": "a", "curves": {"lambda/overheat": [[1, 0.1]]}}])
