"""`policy-server ope` on a synthetic decision log with a known truth (tests/support/decision_logs.py).

The log is written by `DecisionLog` from a real behaviour artifact run through `Policy.decide`,
rewards come from a known linear function, so the right verdict of each candidate is known:
the argmax of the truth passes, its argmin fails, a candidate that picks an action the
behaviour never took (or one judged with too little data) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from policy_server import cli
from policy_server.ope import evaluate as ope_evaluate
from policy_server.ope import logged as ope_logged
from tests.support import decision_logs


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ope-cli")
    behaviour = decision_logs.behaviour(root / "behaviour")
    return {
        "root": root,
        "behaviour": behaviour,
        "log": decision_logs.write_log(root / "log", behaviour, n=3000),
        "masked_log": decision_logs.write_log(root / "masked", behaviour, n=1500, seed=1, mask_last_action=True),
        "costed_log": decision_logs.write_log(root / "costed", behaviour, n=2000, seed=2,
                                              cost_per_action=(0.0, 0.02, 0.6)),
        **{kind: decision_logs.candidate(root / kind, kind) for kind in ("good", "bad", "unsupported")},
    }


def _ope(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any] | None, str]:
    code = cli.main(["ope", *args, "--json", "--resamples", "200"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def _true_value(data: dict[str, Any], kind: str) -> float:
    logged = ope_logged.load_logged(data["log"].url)
    probs, _ = ope_evaluate.policy_probabilities(str(data[kind]), logged.observations)
    return float((probs * decision_logs.expected_reward(logged.observations)).sum(axis=1).mean())


def test_better_candidate_passes_with_estimates_intervals_and_diagnostics(
    data: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result_file = tmp_path / "termination-log"
    code, result, _ = _ope(capsys, "--logs", data["log"].url, "--policy", str(data["good"]),
                           "--baseline", str(data["behaviour"]), "--estimators", "snips,dr,dm,ips",
                           "--bound", "student_t", "--write-result", str(result_file))
    assert code == 0 and result is not None
    assert result["verdict"] == "pass" and result["candidate"] == "v2" and result["baselineVersion"] == "v1"
    assert result["n"] == data["log"].n and 50 < result["ess"] <= result["n"]
    assert result["unsupportedMass"] == 0.0
    truth = _true_value(data, "good")
    by_name = {e["estimator"]: e for e in result["estimates"]}
    assert set(by_name) == {"snips", "dr", "dm", "ips"}
    for name, e in by_name.items():
        assert e["ciLow"] <= e["value"] <= e["ciHigh"], name
        assert e["lowerBound"] <= e["value"] and e["lowerBound"] > e["baselineValue"], name
        assert e["verdict"] == "pass"
    assert abs(by_name["dr"]["value"] - truth) < 0.1, (by_name["dr"], truth)
    assert by_name["dr"]["ciLow"] - 0.05 <= truth <= by_name["dr"]["ciHigh"] + 0.05
    # The baseline is the fallback's value by the same estimator, close to the logged mean reward.
    assert abs(by_name["dr"]["baselineValue"] - data["log"].mean_reward) < 0.1
    # What the Job reports through its termination message: the same result, compact, under 4 KiB.
    written = result_file.read_text()
    assert len(written.encode()) <= 4096 and "\n" not in written
    assert json.loads(written) == result


def test_the_default_bernstein_bound_runs_from_the_cli_and_is_named_in_the_reason(
    data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--bound bernstein` exited 2 for every input: the CLI never passed the range the bound needs."""
    code, result, err = _ope(capsys, "--logs", data["log"].url, "--policy", str(data["good"]),
                             "--baseline", "logged", "--estimators", "snips,dr,ips", "--bound", "bernstein")
    assert code == 0 and result is not None, err
    assert result["bound"] == "bernstein" and "empirical Bernstein" in result["reason"]
    for e in result["estimates"]:  # valid, hence below the approximate Student-t bound on the same data
        assert e["lowerBound"] is not None and e["lowerBound"] < e["value"]
    code, narrow, _ = _ope(capsys, "--logs", data["log"].url, "--policy", str(data["good"]), "--baseline", "logged",
                           "--estimators", "ips", "--reward-range=-100,100")
    assert code == 0 and narrow is not None and narrow["bound"] == "bernstein"
    assert narrow["estimates"][0]["lowerBound"] < result["estimates"][2]["lowerBound"]  # a wider range, a lower bound
    code, _, err = _ope(capsys, "--logs", data["log"].url, "--policy", str(data["good"]), "--reward-range", "0,0.1")
    assert code == 2 and "outside the reward range" in err


def test_a_cost_over_budget_fails_the_gate_from_the_cli(
    data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # `unsupported` always picks the last action, the one that violates the margin 60 % of the time.
    code, result, _ = _ope(capsys, "--logs", data["costed_log"].url, "--policy", str(data["unsupported"]),
                           "--baseline", str(data["behaviour"]), "--bound", "student_t",
                           "--constraint", "cost=margin_violation,max=0.1")
    assert code == 0 and result is not None and result["verdict"] == "fail"
    assert {c["criterion"] for c in result["constraints"]} == {"cost:margin_violation"}
    assert all(c["verdict"] == "fail" and c["upperBound"] > 0.1 for c in result["constraints"])
    assert all(abs(c["value"] - 0.6 * (0.9 + 0.1 / 3)) < 0.1 for c in result["constraints"])


def test_a_constraint_on_a_cost_the_log_lacks_refuses(data: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = _ope(capsys, "--logs", data["log"].url, "--policy", str(data["good"]),
                           "--baseline", str(data["behaviour"]), "--bound", "student_t",
                           "--constraint", "cost=margin_violation,max=0.1")
    assert code == 0 and result is not None and result["verdict"] == "refuse"
    assert "cost:margin_violation" in result["reason"] and "never reported" in result["reason"]


def test_worse_candidate_fails(data: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = _ope(capsys, "--logs", data["log"].url, "--policy", str(data["bad"]), "--baseline", "logged")
    assert code == 0 and result is not None
    assert result["verdict"] == "fail" and "below the required" in result["reason"]
    assert result["baseline"] == "logged"
    assert result["baselineValue"] == pytest.approx(data["log"].mean_reward)
    assert all(e["lowerBound"] < e["required"] for e in result["estimates"])
    assert _true_value(data, "bad") < data["log"].mean_reward


def test_unsupported_candidate_is_refused(data: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = _ope(capsys, "--logs", data["masked_log"].url, "--policy", str(data["unsupported"]))
    assert code == 0 and result is not None
    assert result["verdict"] == "refuse" and "deficient support" in result["reason"]
    assert result["unsupportedMass"] > 0.5
    assert all(e["lowerBound"] is None for e in result["estimates"])


def test_too_few_effective_samples_is_refused_not_passed(data: dict[str, Any],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = _ope(capsys, "--logs", data["log"].url, "--policy", str(data["good"]),
                           "--min-ess", str(data["log"].n + 1))
    assert code == 0 and result is not None
    assert result["verdict"] == "refuse" and "effective sample size" in result["reason"]


def test_stricter_margin_turns_pass_into_fail(data: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = _ope(capsys, "--logs", data["log"].url, "--policy", str(data["good"]),
                           "--estimators", "dr", "--min-lower-bound-delta", "5")
    assert code == 0 and result is not None and result["verdict"] == "fail"
    assert result["required"] == pytest.approx(data["log"].mean_reward + 5)


@pytest.mark.parametrize(("args", "words"), [
    (["--logs", "{root}/nowhere", "--policy", "{good}"], "no rewarded, served discrete decisions"),
    (["--logs", "{log}", "--policy", "{root}/no-artifact"], "manifest.json"),
    (["--logs", "{log}", "--policy", "{good}", "--estimators", "magic"], "unknown estimator"),
])
def test_bad_inputs_exit_2_with_a_reason(data: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         args: list[str], words: str) -> None:
    values = {"root": str(data["root"]), "good": str(data["good"]), "log": data["log"].url}
    result_file = tmp_path / "result"
    code = cli.main(["ope", *(a.format(**values) for a in args), "--write-result", str(result_file)])
    _, err = capsys.readouterr()
    assert code == 2 and words in err
    assert words in json.loads(result_file.read_text())["error"]

