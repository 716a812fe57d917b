"""The dataset step of `policy-server ope` and `train`: the log goes through the reward joiner, and its rules
come from `--reward-window`, `--reward-function`, `--default-reward` / `--exclude-unrewarded`.

Defaults keep the behaviour from before the joiner: no window, the first reward of a decision, decisions
without a reward left out. Logs are written with `DecisionLog`, as the policy server writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policy_server import cli
from policy_server.decision_log.writer import DecisionLog
from policy_server.join import JoinOptions, RewardFunction
from policy_server.ope import cli as ope_cli
from policy_server.ope import logged as ope_logged

T = 1_700_000_000.0


def decision(i: int) -> dict[str, Any]:
    return {"request_id": f"r{i}", "time": T + i, "policy_version": "v1", "variant": "stable",
            "observation": [float(i)], "action": 1, "propensity": 0.5, "probabilities": [0.5, 0.5],
            "shield_reasons": [], "latency_ms": 0.5}


@pytest.fixture
def url(tmp_path: Path) -> str:
    """r0: two events (1 after 10 s, 3 after 20 s); r1: one event 2 h late; r2: none."""
    with DecisionLog(str(tmp_path), flush_interval_s=3600) as dlog:
        for i in range(3):
            dlog.log_decision(decision(i))
        for rid, delay, reward, event in (("r0", 10.0, 1.0, "a"), ("r0", 20.0, 3.0, "b"), ("r1", 7200.0, 5.0, None)):
            dlog.log_reward({"request_id": rid, "time": T + delay, "reward": reward, "event_id": event,
                             "decision_time": T + int(rid[1:])})
    return str(tmp_path)


def test_the_defaults_keep_the_first_reward_without_a_window_and_leave_unrewarded_decisions_out(url: str) -> None:
    data = ope_logged.load_logged(url)
    assert data.rewards.tolist() == [1.0, 5.0]
    assert data.observations[:, 0].tolist() == [0.0, 1.0]


def test_the_window_the_reward_function_and_the_default_reward_shape_the_dataset(url: str) -> None:
    options = JoinOptions(window=3600.0, reward_function=RewardFunction.SUM, default_reward=0.0)
    data = ope_logged.load_logged(url, options=options)
    assert data.rewards.tolist() == [4.0, 0.0, 0.0]  # r1's reward came after the window: defaulted
    assert data.observations[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert data.actions.dtype == np.int64


@pytest.mark.parametrize("command", [["ope", "--policy", "p"], ["train", "--out", "o", "--version", "v"]])
def test_ope_and_train_read_the_join_rules_from_their_flags(command: list[str]) -> None:
    args = cli.build_parser().parse_args([*command, "--logs", "l", "--reward-window", "90m",
                                          "--reward-function", "max", "--default-reward", "-1"])
    options = ope_cli.dataset_options(args)
    assert (options.window, options.reward_function, options.default_reward) == (5400.0, RewardFunction.MAX, -1.0)
    plain = ope_cli.dataset_options(cli.build_parser().parse_args([*command, "--logs", "l"]))
    assert (plain.window, plain.reward_function, plain.default_reward) == (None, RewardFunction.FIRST, None)


def test_default_reward_and_exclude_unrewarded_cannot_both_be_given(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["ope", "--logs", "l", "--policy", "p", "--default-reward", "0",
                                       "--exclude-unrewarded"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_an_unreadable_reward_window_exits_2_with_one_line(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["ope", "--logs", url, "--policy", "nowhere", "--reward-window", "soon"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("policy-server ope: cannot read the duration 'soon'")
    assert len(err.strip().splitlines()) == 1
