"""`policy-server ope --trajectories` end to end, on a log written by a real policy server with episode keys.

A server (the production PolicyServer on its own loop) serves the behaviour artifact of
tests/support/decision_logs.py to 300 episodes of 3 steps (tests/support/trajectory_logs.py).
Specified: the logger judged against itself gets PDIS and WPDIS equal to its logged discounted
return and passes with a margin; the argmin candidate is refused for too few effective
trajectories; a budget below the logged cost ``risk`` fails; the compact result file is written;
a missing ``--gamma`` exits 2 with one line.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from policy_server import cli
from tests.support import decision_logs, trajectory_logs

pytestmark = pytest.mark.integration
EPISODES, STEPS, GAMMA = 300, 3, 0.9


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("traj-cli")
    behaviour = decision_logs.behaviour(root / "behaviour")
    log = trajectory_logs.serve_episodes(root / "log", behaviour, episodes=EPISODES, steps=STEPS)
    return {"root": root, "log": log, "behaviour": behaviour, "bad": decision_logs.candidate(root / "bad", "bad")}


def _ope(capsys: pytest.CaptureFixture[str], served: dict[str, Any], policy: str, *extra: str) -> tuple[int, Any]:
    code = cli.main(["ope", "--trajectories", "--gamma", str(GAMMA), "--logs", served["log"], "--policy",
                     str(served[policy]), "--resamples", "50", "--json", *extra])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else err


def test_the_logger_against_itself_matches_its_logged_return_and_passes(
    served: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    result_file = served["root"] / "result.json"
    code, result = _ope(capsys, served, "behaviour", "--min-lower-bound-delta=-1", "--agreement-tolerance=0.5",
                        "--write-result", str(result_file))
    assert code == 0 and result["verdict"] == "pass", result["reason"]
    assert result["n"] == EPISODES and result["steps"] == EPISODES * STEPS and result["truncated"] == 0
    by_name = {e["estimator"]: e for e in result["estimates"]}
    assert set(by_name) == {"pdis", "wpdis", "dr", "fqe"}
    assert by_name["pdis"]["value"] == pytest.approx(result["loggedValue"], rel=1e-6)  # weights 1 (float32 probs)
    assert by_name["wpdis"]["value"] == pytest.approx(result["loggedValue"], rel=1e-6)
    assert result["ess"] == pytest.approx(EPISODES) and result["unsupportedMass"] == 0.0
    assert json.loads(result_file.read_text())["verdict"] == "pass"


def test_a_candidate_far_from_the_logger_is_refused_for_its_effective_trajectories(
    served: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = _ope(capsys, served, "bad", "--min-effective-trajectories", "150")
    assert code == 0 and result["verdict"] == "refuse" and result["ess"] < 150, result["reason"]
    assert result["reason"].startswith("effective number of trajectories")


def test_a_cost_budget_below_the_logged_cost_fails(served: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, result = _ope(capsys, served, "behaviour", "--min-lower-bound-delta=-1", "--constraint=cost=risk,max=0.1")
    assert code == 0 and result["verdict"] == "fail" and result["reason"].startswith("cost:risk")
    assert all(c["upperBound"] > 0.1 for c in result["constraints"])


def test_a_missing_gamma_exits_2_with_one_line(served: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["ope", "--trajectories", "--logs", served["log"], "--policy", str(served["behaviour"])])
    err = capsys.readouterr().err
    assert code == 2 and "needs --gamma" in err and err.count("\n") == 1
