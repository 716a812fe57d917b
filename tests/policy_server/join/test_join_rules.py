"""The join's rules, on small hand-built logs, held by both engines: in memory (`join_log`, the dataset step
of `ope`/`train`) and streaming (`stream.join_to_dataset`, `policy-server join`), read back from Parquet.

Rules: rewards from any writer join decisions from any writer by request id; a repeated (request_id, event_id)
is a duplicate, counted once; distinct events combine by the reward function (and costs by name); a reward
after the window is late; a decision without a reward gets the default or is excluded; a decision whose
window is open at as_of is pending; a reward whose decision is nowhere is an orphan; schema-1 reward rows
(no attribution) still join; rows logged after as_of are ignored.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from policy_server.join import JoinOptions, RewardFunction, join_log, stream
from tests.policy_server.join.conftest import T0, LogBuilder

ENGINES = ["memory", "stream"]
AS_OF = T0 + 86400.0


def run(engine: str, url: str, tmp_path: Path, **options: Any) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Joined rows by request id, and the summary, from one engine."""
    opts = JoinOptions(**{"as_of": AS_OF, **options})
    if engine == "memory":
        table, summary = join_log(url, opts)
    else:
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        summary = stream.join_to_dataset(url, str(out), opts)
        table = ds.dataset(str(out), format="parquet", partitioning="hive").to_table() if out.exists() else None
    rows = {r["request_id"]: r for r in table.to_pylist()} if table is not None else {}
    return rows, summary.to_dict()


@pytest.mark.parametrize("engine", ENGINES)
def test_rewards_logged_by_any_writer_join_decisions_of_any_writer(engine: str, log: LogBuilder,
                                                                   tmp_path: Path) -> None:
    log.decision("a", T0 + 10, writer="w1")
    log.decision("b", T0 + 20, writer="w2", variant="candidate")
    log.reward("a", T0 + 15, 1.0, writer="w2")
    log.reward("b", T0 + 25, 2.0, writer="w1")
    rows, summary = run(engine, log.write(), tmp_path)
    assert {k: (r["reward"], r["variant"], r["reward_events"], r["defaulted"]) for k, r in rows.items()} == {
        "a": (1.0, "stable", 1, False), "b": (2.0, "candidate", 1, False)}
    assert rows["a"]["first_reward_time"] == T0 + 15 and rows["a"]["observation"] == [10.0, 1.0]
    assert summary["decisions"] == summary["rewarded"] == 2
    assert summary["variants"]["candidate"]["rewarded"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_repeated_event_is_a_duplicate_counted_once_and_the_earliest_copy_wins(engine: str, log: LogBuilder,
                                                                                tmp_path: Path) -> None:
    log.decision("a", T0 + 10)
    log.reward("a", T0 + 12, 1.0, event="e1", writer="w2")
    log.reward("a", T0 + 11, 1.0, event="e1", writer="w3")  # the same post, retried against another replica
    log.reward("a", T0 + 13, 1.0, event="e1", writer="w2")
    rows, summary = run(engine, log.write(), tmp_path, reward_function=RewardFunction.SUM)
    assert rows["a"]["reward"] == 1.0 and rows["a"]["reward_events"] == 1
    assert rows["a"]["first_reward_time"] == T0 + 11
    assert summary["duplicates"] == 2 and summary["rewarded"] == 1


EVENTS = [(T0 + 30, 2.0, {"cost": 5.0}), (T0 + 11, 1.0, {"cost": 1.0, "latency": 7.0}), (T0 + 50, 4.0, None)]
EXPECTED = {  # over events in time order: rewards 1, 2, 4; cost 1, 5; latency 7
    RewardFunction.SUM: (7.0, {"cost": 6.0, "latency": 7.0}),
    RewardFunction.FIRST: (1.0, {"cost": 1.0, "latency": 7.0}),
    RewardFunction.LAST: (4.0, {"cost": 5.0, "latency": 7.0}),
    RewardFunction.MEAN: (statistics.mean([1.0, 2.0, 4.0]), {"cost": 3.0, "latency": 7.0}),
    RewardFunction.MAX: (4.0, {"cost": 5.0, "latency": 7.0}),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("function", list(RewardFunction))
def test_distinct_events_of_one_decision_combine_by_the_reward_function_and_costs_by_name(
        engine: str, function: RewardFunction, log: LogBuilder, tmp_path: Path) -> None:
    log.decision("a", T0 + 10)
    for i, (t, r, costs) in enumerate(EVENTS):
        log.reward("a", t, r, event=f"e{i}", costs=costs, writer=f"w{i}")
    log.reward("a", T0 + 60, 100.0, event="e0", writer="w9")  # a duplicate of e0 with another value: ignored
    rows, summary = run(engine, log.write(), tmp_path, reward_function=function)
    reward, costs = EXPECTED[function]
    assert rows["a"]["reward"] == pytest.approx(reward)
    assert dict(rows["a"]["costs"]) == pytest.approx(costs)
    assert rows["a"]["reward_events"] == 3 and rows["a"]["first_reward_time"] == T0 + 11
    assert summary["duplicates"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_reward_after_the_window_is_late_counted_and_not_joined(engine: str, log: LogBuilder,
                                                                  tmp_path: Path) -> None:
    log.decision("edge", T0 + 10)
    log.decision("late", T0 + 20)
    log.reward("edge", T0 + 70, 1.0)  # exactly the window after: counts
    log.reward("late", T0 + 81, 1.0)  # a second after: late
    rows, summary = run(engine, log.write(), tmp_path, window=60.0)
    assert set(rows) == {"edge"}
    assert summary["late"] == 1 and summary["rewarded"] == 1 and summary["excluded"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_without_a_reward_a_decision_gets_the_default_or_is_excluded(engine: str, log: LogBuilder,
                                                                     tmp_path: Path) -> None:
    log.decision("rewarded", T0 + 10)
    log.decision("silent", T0 + 20)
    log.reward("rewarded", T0 + 11, 1.0)
    url = log.write()
    rows, summary = run(engine, url, tmp_path, window=60.0, default_reward=-0.5)
    assert rows["silent"]["reward"] == -0.5 and rows["silent"]["defaulted"] is True
    assert rows["silent"]["reward_events"] == 0 and rows["silent"]["first_reward_time"] is None
    assert rows["rewarded"]["defaulted"] is False
    assert (summary["defaulted"], summary["excluded"]) == (1, 0)
    rows, summary = run(engine, url, tmp_path, window=60.0)
    assert set(rows) == {"rewarded"} and (summary["defaulted"], summary["excluded"]) == (0, 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_decision_whose_window_is_open_at_as_of_is_pending_and_left_out(engine: str, log: LogBuilder,
                                                                           tmp_path: Path) -> None:
    log.decision("closed", T0 + 10)
    log.decision("open", T0 + 100)
    log.decision("open-rewarded", T0 + 110)
    log.reward("open-rewarded", T0 + 115, 1.0)
    rows, summary = run(engine, log.write(), tmp_path, window=60.0, default_reward=0.0, as_of=T0 + 120)
    assert set(rows) == {"closed"} and rows["closed"]["defaulted"] is True
    assert summary["pending"] == 2
    assert summary["decisions"] == sum(summary[k] for k in ("rewarded", "defaulted", "excluded", "pending"))


@pytest.mark.parametrize("engine", ENGINES)
def test_rewards_logged_after_as_of_are_ignored(engine: str, log: LogBuilder, tmp_path: Path) -> None:
    log.decision("a", T0 + 10)
    log.reward("a", T0 + 20, 1.0, event="e1")
    log.reward("a", T0 + 40, 5.0, event="e2")
    rows, summary = run(engine, log.write(), tmp_path, reward_function=RewardFunction.SUM, as_of=T0 + 30)
    assert rows["a"]["reward"] == 1.0 and rows["a"]["reward_events"] == 1
    assert (summary["rewarded"], summary["late"], summary["duplicates"]) == (1, 0, 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_reward_whose_decision_is_nowhere_is_an_orphan(engine: str, log: LogBuilder, tmp_path: Path) -> None:
    log.decision("a", T0 + 10)
    log.reward("a", T0 + 11, 1.0)
    log.reward("ghost", T0 + 12, 1.0, decision_time=T0 + 5)  # attributed to this hour, never logged
    log.reward("ghost-far", T0 + 12, 1.0, decision_time=T0 - 7200)  # attributed to an hour with no decisions
    log.reward("ghost-v1", T0 + 13, 1.0, schema=1)  # no attribution at all
    rows, summary = run(engine, log.write(), tmp_path)
    assert set(rows) == {"a"}
    assert summary["orphans"] == 3 and summary["decisions"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_schema_1_reward_rows_still_join_by_request_id(engine: str, log: LogBuilder, tmp_path: Path) -> None:
    log.decision("a", T0 + 10)
    log.decision("b", T0 + 20)
    log.reward("a", T0 + 11, 3.0, schema=1)
    log.reward("a", T0 + 12, 9.0, schema=1)  # no event id: the same event as the first, a duplicate
    log.reward("b", T0 + 21, 4.0)  # a schema-2 row beside them
    rows, summary = run(engine, log.write(), tmp_path, window=60.0)
    assert (rows["a"]["reward"], rows["b"]["reward"]) == (3.0, 4.0)
    assert summary["duplicates"] == 1 and summary["orphans"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_a_decision_a_millisecond_before_the_hour_keeps_its_reward(engine: str, log: LogBuilder,
                                                                   tmp_path: Path) -> None:
    # The signed id carries milliseconds: the reward's decision_time rounds into the next hour.
    log.decision("edge", T0 + 3599.9996)
    log.reward("edge", T0 + 3700, 1.0)
    rows, summary = run(engine, log.write(), tmp_path)
    assert rows["edge"]["reward"] == 1.0
    assert summary["orphans"] == 0 and summary["rewarded"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_decision_logged_twice_by_a_replay_counts_once(engine: str, log: LogBuilder, tmp_path: Path) -> None:
    log.decision("a", T0 + 10, segment=0)
    log.decision("a", T0 + 10, segment=1)  # the write-ahead log replayed a segment that had been written
    log.reward("a", T0 + 11, 1.0)
    rows, summary = run(engine, log.write(), tmp_path)
    assert rows["a"]["reward"] == 1.0
    assert (summary["decisions"], summary["rewarded"], summary["duplicates"]) == (1, 1, 0)
