"""bench-judges: the simulation, the bench-only baseline judges and the result's shape, on a tiny setup."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from rollout_lab.judge_bench import baselines
from rollout_lab.judge_bench import judges as bench
from rollout_operator import api
from rollout_operator.cli import main as cli
from rollout_operator.engine.judges import base
from rollout_operator.engine.types import Measurement

TINY = bench.Setup(horizon=40, aa_runs=30, detect_runs=20, calibration_runs=200, n_candidate=2000, n_stable=18000)


def test_simulated_ratio_is_centred_on_the_gap() -> None:
    data = bench.simulate(dataclasses.replace(TINY, horizon=200), 200, 0.05, seed=1)
    assert bench.ratio(data, TINY).mean() == pytest.approx(0.95, abs=0.002)


def test_mann_whitney_z_is_negative_when_the_candidate_ranks_lower() -> None:
    rng = np.random.default_rng(0)
    low, high = rng.normal(0, 1, 30), rng.normal(1, 1, 30)
    assert baselines.mann_whitney_z(low, high) < -3 < 3 < baselines.mann_whitney_z(high, low)


def test_failed_checks_judge_counts_failures_cumulatively() -> None:
    spec = baselines.argo_spec(bench._spec(TINY), "> 0.9", 1)
    judge = baselines.FailedChecksJudge(3)
    status = api.PolicyRolloutStatus()
    outcomes = []
    for value in (0.5, 1.0, 0.5, 1.0, 0.5):
        judgement = judge.judge(spec, status, {"reward-ratio": Measurement(value)}, bench.T0)
        status.judge = judgement.state
        outcomes.append(judgement.rollback is not None)
    assert outcomes == [False, False, False, False, True]


def test_mann_whitney_judge_decides_only_at_its_horizon() -> None:
    judge = baselines.MannWhitneyJudge(horizon=5, critical_z=-1.0)
    status = api.PolicyRolloutStatus()
    rolled = []
    for i in range(5):
        m = {
            base.SERIES_PREFIX + "candidate_mean": Measurement(0.5 + i * 0.01),
            base.SERIES_PREFIX + "stable_mean": Measurement(1.0 + i * 0.01),
        }
        judgement = judge.judge(bench._spec(TINY), status, m, bench.T0)
        status.judge = judgement.state
        rolled.append(judgement.rollback is not None)
    assert rolled == [False, False, False, False, True]


def test_run_reports_every_method_in_the_documented_shape(tmp_path: Path) -> None:
    result = bench.run(TINY)
    assert result["alpha"] == 0.05 and result["sequential_method"] == "sequential"
    assert set(result["methods"]) == {"sequential", "argo-threshold", "flagger-failed-checks", "kayenta-mann-whitney"}
    assert result["best_fixed_method"] in result["methods"] and result["best_fixed_method"] != "sequential"
    for entry in result["methods"].values():
        assert 0 <= entry["false_rollback_rate"] <= 1
        assert set(entry["detect_decisions_median"]) == {"0.02", "0.05"}
    # 10x the traffic of the default setup: a 5% regression is caught by the sequential judge
    assert result["methods"]["sequential"]["detect_rate"]["0.05"] == 1.0
    path = tmp_path / "judges.png"
    bench.plot(result, path)
    assert path.stat().st_size > 10_000
    json.dumps(result)


def test_cli_declares_the_subcommand_and_refuses_a_bad_alpha(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench-judges", "--out", str(tmp_path / "x.json"), "--alpha", "0.7"]) == 2
    assert "--alpha must be in (0, 0.5)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench-judges", "--help"])
    assert "--quick" in capsys.readouterr().out
