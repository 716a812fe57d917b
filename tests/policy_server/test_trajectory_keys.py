"""Trajectory keys on the request path: ``context.episode_id``/``step``/``terminal`` and the reward's ``terminal``.

What is specified: bad keys get a 400 naming the field; accepted keys become the decision log's
nullable columns ``episode_id`` (string), ``step`` (int64), ``terminal`` (bool) through the batch path,
the dict path and the write-ahead log; the reward's ``terminal`` is its own column; bandit rows
(no trajectory keys) keep null columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policy_server import validation
from policy_server.decision_log import read_decisions, read_rewards
from policy_server.decision_log.schema import DecisionBatch
from policy_server.decision_log.wal import WriteAheadLog, recover
from policy_server.decision_log.writer import DecisionLog
from tests.support.policy_server import running

OBS = [0.3, -1.2, 0.5, 0.0, 1.1, -0.4, 0.9, -0.7]


def _act(context: dict) -> bytes:
    return json.dumps({"observation": [0.0, 1.0], "context": context}).encode()


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"episode_id": "e1"}, "'context.episode_id' and 'context.step' go together"),
        ({"step": 3}, "'context.episode_id' and 'context.step' go together"),
        ({"terminal": True}, "'context.episode_id' and 'context.step' go together"),
        ({"episode_id": "", "step": 0}, "'context.episode_id' must be a non-empty string"),
        ({"episode_id": "x" * 257, "step": 0}, "at most 256 characters"),
        ({"episode_id": ["e"], "step": 0}, "'context.episode_id' must be a non-empty string"),
        ({"episode_id": "e", "step": -1}, "'context.step' must be an integer in [0,"),
        ({"episode_id": "e", "step": 1.5}, "'context.step' must be an integer"),
        ({"episode_id": "e", "step": True}, "'context.step' must be an integer"),
        ({"episode_id": "e", "step": 0, "terminal": 1}, "'context.terminal' must be true or false"),
    ],
)
def test_bad_trajectory_keys_are_refused_with_the_field_named(context: dict, message: str) -> None:
    with pytest.raises(validation.BadRequest, match=message.replace("[", r"\[")) as info:
        validation.parse_act(_act(context), (2,), 2)
    assert info.value.status == 400 and "\n" not in str(info.value)


def test_good_trajectory_keys_are_accepted_and_kept_in_the_context() -> None:
    req = validation.parse_act(_act({"episode_id": 7, "step": 0, "terminal": False}), (2,), 2)
    assert json.loads(req.context_json or "") == {"episode_id": 7, "step": 0, "terminal": False}
    bandit = validation.parse_act(_act({"entity": "u1"}), (2,), 2)
    assert bandit.entity == "u1"


def test_the_reward_terminal_flag_is_a_boolean() -> None:
    body = {"request_id": "r", "reward": 1.0, "terminal": True}
    assert validation.parse_reward(json.dumps(body).encode()).terminal is True
    assert validation.parse_reward(b'{"request_id": "r", "reward": 1}').terminal is None
    with pytest.raises(validation.BadRequest, match="'terminal' must be true or false"):
        validation.parse_reward(json.dumps({**body, "terminal": "yes"}).encode())


def _batch(contexts: list[str | None]) -> DecisionBatch:
    n = len(contexts)
    return DecisionBatch(
        request_ids=[f"q{i}" for i in range(n)],
        time=1_700_000_000.0,
        policy_version="v1",
        variant="stable",
        observations=np.zeros((n, 2), np.float32),
        actions=np.arange(n) % 2,
        propensities=np.full(n, 0.5),
        probabilities=np.full((n, 2), 0.5),
        shield_reasons=[[] for _ in range(n)],
        latency_ms=np.ones(n),
        context_json=contexts,
    )


CONTEXTS = ['{"episode_id":"e1","step":0}', '{"episode_id":42,"step":1,"terminal":true}', '{"entity":"u"}', None]
EXPECTED = [("e1", 0, None), ("42", 1, True), (None, None, None), (None, None, None)]


def _columns(table) -> list[tuple]:
    return list(zip(*(table[c].to_pylist() for c in ("episode_id", "step", "terminal")), strict=True))


def test_batches_get_the_trajectory_columns_and_bandit_rows_stay_null(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path), flush_interval_s=3600)
    log.log_decision_batch(_batch(CONTEXTS))
    log.log_decision_batch(_batch([None, None]))
    log.close()
    assert _columns(read_decisions(str(tmp_path))) == [*EXPECTED, (None, None, None), (None, None, None)]


def test_the_dict_path_derives_the_same_columns(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path), flush_interval_s=3600)
    for i, ctx in enumerate(CONTEXTS):
        log.log_decision({"request_id": f"d{i}", "time": 1.0, "policy_version": "v", "variant": "s",
                          "observation": [0.0], "action": 1, "propensity": 1.0, "latency_ms": 0.1,
                          "context_json": ctx})
    log.close()
    assert _columns(read_decisions(str(tmp_path))) == EXPECTED


def test_the_write_ahead_log_round_trips_the_trajectory_keys(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal", commit_interval_s=3600)
    wal.append_decisions(_batch(CONTEXTS))
    wal.append_reward({"request_id": "q1", "time": 2.0, "reward": 1.0, "terminal": True})
    assert wal.commit()
    wal.close(delete=False)  # as after a SIGKILL
    assert recover(tmp_path / "wal", DecisionLog(str(tmp_path / "log"), flush_interval_s=3600)) == 5
    assert _columns(read_decisions(str(tmp_path / "log"))) == EXPECTED
    assert read_rewards(str(tmp_path / "log"))["terminal"].to_pylist() == [True]


@pytest.mark.integration
def test_a_served_episode_is_logged_with_its_keys(tmp_path: Path) -> None:
    from policy_server import artifact

    model = artifact.write_example_model(tmp_path / "m")
    with running(model, variant="stable", log_dir=str(tmp_path / "log")) as srv:
        c = srv.client()
        ids = []
        for step in range(3):
            answer = c.act(OBS, context={"episode_id": "ep-1", "step": step, "terminal": step == 2})
            ids.append(answer["request_id"])
        c.act(OBS)  # a bandit decision beside it
        assert c.post("/v1/reward", {"request_id": ids[2], "reward": 1.0, "terminal": True})[0] == 202
        assert c.post("/v1/reward", {"request_id": ids[0], "reward": 0.5})[0] == 202
        status, body = c.post("/v1/act", {"observation": OBS, "context": {"episode_id": "ep-1", "step": "2"}})
        assert status == 400 and "'context.step' must be an integer" in body["error"]
    decisions = read_decisions(str(tmp_path / "log"))
    assert _columns(decisions) == [("ep-1", 0, False), ("ep-1", 1, False), ("ep-1", 2, True), (None, None, None)]
    rewards = {r["request_id"]: r["terminal"] for r in read_rewards(str(tmp_path / "log")).to_pylist()}
    assert rewards == {decisions["request_id"][2].as_py(): True, decisions["request_id"][0].as_py(): None}
