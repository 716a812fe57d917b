"""spec.rewards reaches the offline-evaluation and training Jobs as the reward joiner's flags of
`policy-server ope` / `policy-server train`; unset, the Jobs run exactly as before (the CLIs' defaults)."""

from __future__ import annotations

from typing import Any

import pytest
from rollout_operator import api
from rollout_operator.engine import types
from rollout_operator.resources import jobs as job_resources

from tests.support.kube import policy_rollout_manifest

OPE = {"dataset": "s3://logs/pricing"}
TRAINING = {"dataset": "s3://logs/pricing", "output": "s3://models/pricing"}
FLAGS = ("--reward-window", "--reward-function", "--default-reward", "--exclude-unrewarded")


def _rollout(rewards: dict[str, Any] | None, **spec: Any) -> api.PolicyRollout:
    spec = {"offlineEvaluation": OPE, "training": TRAINING, **spec}
    if rewards is not None:
        spec["rewards"] = rewards
    manifest = policy_rollout_manifest("pricing", steps=[{"setWeight": 50}], **spec)
    return api.PolicyRollout.model_validate(manifest)


def _args(rollout: api.PolicyRollout, kind: types.JobKind) -> list[str]:
    job = job_resources.build(rollout, types.JobRequest(kind, "abc123", version="v3"))
    [container] = job["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


KINDS = [types.JobKind.OFFLINE_EVALUATION, types.JobKind.TRAINING]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_without_spec_rewards_the_jobs_pass_no_joiner_flags(kind: types.JobKind) -> None:
    args = _args(_rollout(None), kind)
    assert not [a for a in args if a.split("=")[0] in FLAGS]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_a_window_and_a_reward_function_reach_both_jobs(kind: types.JobKind) -> None:
    args = _args(_rollout({"window": "1h", "function": "sum"}), kind)
    assert args[args.index("--reward-window") + 1] == "1h"
    assert args[args.index("--reward-function") + 1] == "sum"
    assert "--exclude-unrewarded" in args  # no default reward: unrewarded decisions are left out
    assert not any(a.startswith("--default-reward") for a in args)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_a_default_reward_is_one_argument_even_when_negative(kind: types.JobKind) -> None:
    args = _args(_rollout({"default": -1, "excludeUnrewarded": False}), kind)
    assert "--default-reward=-1.0" in args
    assert "--exclude-unrewarded" not in args
    assert "--reward-window" not in args  # unset: unbounded
    assert args[args.index("--reward-function") + 1] == "first"  # the default


def test_an_empty_rewards_block_spells_out_the_defaults() -> None:
    assert job_resources.reward_args(_rollout({})) == ["--reward-function", "first", "--exclude-unrewarded"]


@pytest.mark.parametrize(("window", "argument"), [
    ("1h", "1h"), ("90m", "90m"), ("1h30m", "90m"), ("24h", "24h"), ("168h", "168h"), ("45s", "45s"),
    ("1.5h", "90m"), ("2m30s", "150s"), ("1500ms", "1500ms"),
])
def test_the_window_is_one_number_in_its_largest_whole_unit(window: str, argument: str) -> None:
    args = job_resources.reward_args(_rollout({"window": window}))
    assert args[:2] == ["--reward-window", argument]


def test_a_custom_training_command_is_left_as_written() -> None:
    rollout = _rollout({"window": "1h"}, training={**TRAINING, "command": ["python", "train.py"], "args": ["--x"]})
    assert _args(rollout, types.JobKind.TRAINING) == ["--x"]


def test_the_rewards_flags_precede_the_users_extra_training_args() -> None:
    """A user's own --reward-window in spec.training.args comes last, so it wins in argparse."""
    rollout = _rollout({"window": "1h"}, training={**TRAINING, "args": ["--reward-window", "2h"]})
    args = _args(rollout, types.JobKind.TRAINING)
    assert args[-2:] == ["--reward-window", "2h"]
    assert args.index("--reward-window") < len(args) - 2
