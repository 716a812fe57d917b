"""Decision log: exact round-trip, segment rotation, no loss under concurrency, retries, joins.

Batches (``log_decision_batch``) are specified against the dict path: the same decisions logged
both ways must read back as the same table.

Waits in these tests poll with a generous deadline (the machine is shared); they never assert
on how long something took.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from policy_server import decision_log
from policy_server.decision_log import _batches, _convert, _records
from policy_server.decision_log.reader import join_rewards, read_decisions, read_rewards
from policy_server.decision_log.schema import DECISION_SCHEMA, REWARD_SCHEMA, SCHEMA_VERSION, DecisionBatch
from policy_server.decision_log.writer import DecisionLog, DecisionLogError

SEGMENT_NAME = re.compile(r"^part-\d{8}T\d{12}Z-\d{6}-[0-9a-f]{8}\.parquet$")


def decision(i: int, **over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "request_id": f"req-{i}",
        "time": 1_700_000_000.0 + i * 0.001,
        "policy_version": "v2",
        "variant": "candidate",
        "observation": [0.1 * i, -1.5, 3.0],
        "action": i % 3,
        "propensity": 0.25,
        "probabilities": [0.25, 0.5, 0.25],
        "shield_reasons": [],
        "latency_ms": 0.75,
        "context_json": None,
    }
    rec.update(over)
    return rec


def batch(start: int, size: int, **over: Any) -> DecisionBatch:
    """``size`` discrete decisions with ids req-<start>..., as the server's hot path hands them over."""
    rows = np.arange(start, start + size)
    probabilities = np.tile([0.25, 0.5, 0.25], (size, 1))
    fields: dict[str, Any] = {
        "request_ids": [f"req-{i}" for i in rows],
        "time": 1_700_000_000.0 + start * 0.001,
        "policy_version": "v2",
        "variant": "candidate",
        "observations": np.stack([0.1 * rows, np.full(size, -1.5), np.full(size, 3.0)], axis=1).astype(np.float32),
        "actions": rows % 3,
        "propensities": probabilities[np.arange(size), rows % 3],
        "probabilities": probabilities,
        "shield_reasons": [[] for _ in rows],
        "latency_ms": 0.5 + 0.01 * rows,
    }
    fields.update(over)
    return DecisionBatch(**fields)


def records_of(b: DecisionBatch) -> list[dict[str, Any]]:
    """The same decisions as ``log_decision`` dicts, built the way the server built them (``tolist()``)."""
    n = len(b.request_ids)
    if n == 0:
        return []
    observations = b.observations.reshape(n, -1).tolist()
    actions = b.actions.tolist()
    probabilities = b.probabilities.tolist() if b.probabilities is not None else [None] * n
    assignment = b.assignment_probability.tolist() if b.assignment_probability is not None else [None] * n
    return [
        {
            "request_id": b.request_ids[i],
            "time": b.time,
            "policy_version": b.policy_version,
            "variant": b.variant,
            "observation": observations[i],
            "action": actions[i],
            "propensity": b.propensities.tolist()[i],
            "probabilities": probabilities[i],
            "shield_reasons": b.shield_reasons[i],
            "latency_ms": b.latency_ms.tolist()[i],
            "context_json": b.context_json[i] if b.context_json is not None else None,
            "assignment_probability": assignment[i],
            "served_by": b.served_by,
        }
        for i in range(n)
    ]


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def run_together(produce: Callable[[int], None], threads_n: int) -> None:
    """``produce(t)`` for t in 0..threads_n-1, in threads released at the same moment; waits for all."""
    start = threading.Barrier(threads_n)

    def released(t: int) -> None:
        start.wait()
        produce(t)

    threads = [threading.Thread(target=released, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def segments(root: Path, stream: str = "decisions") -> list[Path]:
    return sorted(p for p in (root / stream).iterdir() if p.suffix == ".parquet")


@pytest.fixture
def dlogs() -> Iterator[list[DecisionLog]]:
    """Logs created by a test are closed even when it fails (no writer threads left behind)."""
    made: list[DecisionLog] = []
    yield made
    for d in made:
        with contextlib.suppress(DecisionLogError):
            d.close()


@pytest.fixture
def memory_url() -> Iterator[str]:
    path = f"/decision-log-test-{uuid.uuid4().hex}"
    yield f"memory://{path}"
    fs = fsspec.filesystem("memory")
    if fs.exists(path):
        fs.rm(path, recursive=True)


class FlakyFS(LocalFileSystem):
    """A local filesystem whose first ``failures`` writes raise, like a dropped network mount."""

    cachable = False  # fsspec would otherwise hand every test the same instance and counter

    def __init__(self, failures: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures
        self.calls = 0

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise OSError(f"simulated write failure for {path}")
        super().pipe_file(path, value, **kwargs)


class GatedFS(LocalFileSystem):
    """A local filesystem whose writes block until released: the writer is caught mid-write."""

    cachable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = threading.Event()
        self.release = threading.Event()

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        self.entered.set()
        assert self.release.wait(30), "test never released the gated write"
        super().pipe_file(path, value, **kwargs)


# ------------------------------------------------------------------------------------------


def test_decisions_round_trip_exactly(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    records = [
        decision(0),
        decision(1, action=[0.5, -2.0], probabilities=None, shield_reasons=["clip", "max_delta"]),
        decision(2, context_json='{"user": "u1"}', assignment_probability=0.05, served_by="policy-v2-abc"),
        decision(3, observation=[], action=7, propensity=1.0, latency_ms=12.5),
        decision(4, observation=[1, 2], action=[3]),  # ints where floats are expected are widened
    ]
    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600)
    dlogs.append(dlog)
    for rec in records:
        dlog.log_decision(dict(rec))
    dlog.close()

    table = read_decisions(str(tmp_path))
    assert table.schema.equals(DECISION_SCHEMA)
    rows = table.to_pylist()
    assert [r["request_id"] for r in rows] == [r["request_id"] for r in records]
    for got, sent in zip(rows, records, strict=True):
        assert got["schema_version"] == SCHEMA_VERSION
        for key in ("time", "policy_version", "variant", "propensity", "probabilities", "latency_ms", "context_json"):
            assert got[key] == sent[key], key
        assert got["observation"] == [float(x) for x in sent["observation"]]
        assert got["shield_reasons"] == sent["shield_reasons"]
        assert got["assignment_probability"] == sent.get("assignment_probability")
        assert got["served_by"] == sent.get("served_by")
        if isinstance(sent["action"], int):
            assert got["action_index"] == sent["action"]
            assert got["action"] == [float(sent["action"])]
        else:
            assert got["action_index"] is None
            assert got["action"] == [float(a) for a in sent["action"]]
    assert all(type(r["time"]) is float for r in rows)


def test_rewards_round_trip_with_costs_map(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600)
    dlogs.append(dlog)
    dlog.log_reward({"request_id": "a", "time": 10.5, "reward": 1.25, "costs": {"energy": 0.5, "wear": 2.0}})
    dlog.log_reward({"request_id": "b", "time": 11.0, "reward": -3.0, "costs": None})
    dlog.log_reward({"request_id": "c", "time": 12.0, "reward": 0})
    dlog.close()

    table = read_rewards(str(tmp_path))
    assert table.schema.equals(REWARD_SCHEMA)
    rows = table.to_pylist()
    assert [(r["request_id"], r["time"], r["reward"]) for r in rows] == [
        ("a", 10.5, 1.25),
        ("b", 11.0, -3.0),
        ("c", 12.0, 0.0),
    ]
    assert dict(rows[0]["costs"]) == {"energy": 0.5, "wear": 2.0}
    assert rows[1]["costs"] is None and rows[2]["costs"] is None
    assert read_decisions(str(tmp_path)).num_rows == 0


def test_rotation_by_rows(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(str(tmp_path), segment_rows=10, flush_interval_s=3600)
    dlogs.append(dlog)
    for i in range(35):
        dlog.log_decision(decision(i))
    # Three full segments are written by the writer thread; the 5-row remainder waits for the timer.
    wait_until(lambda: len(segments(tmp_path)) == 3 and dlog.buffered == 5, "three full segments")
    assert [pq.read_metadata(p).num_rows for p in segments(tmp_path)] == [10, 10, 10]
    dlog.close()
    files = segments(tmp_path)
    assert [pq.read_metadata(p).num_rows for p in files] == [10, 10, 10, 5]
    assert all(SEGMENT_NAME.match(p.name) for p in files), [p.name for p in files]
    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == [f"req-{i}" for i in range(35)]


def test_rotation_by_time(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(str(tmp_path), segment_rows=1_000, flush_interval_s=0.05)
    dlogs.append(dlog)
    for i in range(3):
        dlog.log_decision(decision(i))
    wait_until(lambda: len(segments(tmp_path)) == 1, "a time-triggered segment")
    for i in range(3, 5):
        dlog.log_decision(decision(i))
    dlog.log_reward({"request_id": "req-0", "time": 1.0, "reward": 1.0})
    wait_until(
        lambda: len(segments(tmp_path)) == 2 and len(segments(tmp_path, "rewards")) == 1 and dlog.buffered == 0,
        "second segments",
    )
    assert [pq.read_metadata(p).num_rows for p in segments(tmp_path)] == [3, 2]


def test_close_flushes_everything_from_concurrent_producers(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    threads_n, per_thread = 4, 25_000
    dlog = DecisionLog(str(tmp_path), segment_rows=7_000, flush_interval_s=0.05)
    dlogs.append(dlog)

    def produce(t: int) -> None:
        for i in range(per_thread):
            n = t * per_thread + i
            dlog.log_decision(decision(n))
            if i % 5 == 0:
                dlog.log_reward({"request_id": f"req-{n}", "time": float(n), "reward": 1.0})

    run_together(produce, threads_n)
    dlog.close()

    table = read_decisions(str(tmp_path))
    ids = table.column("request_id").to_pylist()
    assert len(ids) == threads_n * per_thread
    assert set(ids) == {f"req-{n}" for n in range(threads_n * per_thread)}
    assert read_rewards(str(tmp_path)).num_rows == threads_n * per_thread // 5
    assert all(pq.read_metadata(p).num_rows <= 7_000 for p in segments(tmp_path))
    assert dlog.rows_written == {"decisions": 100_000, "rewards": 20_000}
    assert dlog.buffered == 0 and dlog.errors == 0 and dlog.rejected == 0


def test_close_while_the_writer_is_mid_write_loses_nothing(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    fs = GatedFS()
    dlog = DecisionLog(str(tmp_path), segment_rows=5, flush_interval_s=3600, filesystem=fs)
    dlogs.append(dlog)
    for i in range(5):
        dlog.log_decision(decision(i))
    assert fs.entered.wait(20), "the writer thread never started a write"
    for i in range(5, 12):  # logged while the first segment is still being written
        dlog.log_decision(decision(i))
    closer = threading.Thread(target=dlog.close)
    closer.start()
    time.sleep(0.05)  # let close() reach the lock the writer holds (correct either way)
    fs.release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert sorted(read_decisions(str(tmp_path)).column("request_id").to_pylist()) == sorted(
        f"req-{i}" for i in range(12)
    )


def test_memory_url_round_trip_and_join(memory_url: str, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(memory_url, flush_interval_s=3600)
    dlogs.append(dlog)
    assert fsspec.filesystem("memory").isdir(memory_url.removeprefix("memory://") + "/decisions")
    for i in range(4):
        dlog.log_decision(decision(i))
    dlog.log_reward({"request_id": "req-2", "time": 5.0, "reward": 9.0, "costs": {"c": 1.0}})
    dlog.flush()
    assert read_decisions(memory_url).num_rows == 4
    joined = join_rewards(memory_url)
    assert joined.column("reward").to_pylist() == [None, None, 9.0, None]
    dlog.close()


def test_join_with_missing_duplicate_and_unknown_rewards(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(str(tmp_path), segment_rows=2, flush_interval_s=3600)
    dlogs.append(dlog)
    for i in range(4):
        dlog.log_decision(decision(i))
    # req-0: none; req-1: one; req-2: twice with the later one logged first; req-3: a tie on time.
    dlog.log_reward({"request_id": "req-2", "time": 20.0, "reward": -1.0, "costs": None})
    dlog.log_reward({"request_id": "req-1", "time": 10.0, "reward": 1.0, "costs": {"energy": 0.5}})
    dlog.log_reward({"request_id": "unknown", "time": 11.0, "reward": 100.0})
    dlog.log_reward({"request_id": "req-2", "time": 15.0, "reward": 2.0, "costs": {"energy": 1.5}})
    dlog.log_reward({"request_id": "req-3", "time": 30.0, "reward": 3.0})
    dlog.log_reward({"request_id": "req-3", "time": 30.0, "reward": 4.0})
    dlog.close()

    joined = join_rewards(str(tmp_path))
    assert joined.num_rows == 4
    assert joined.column("request_id").to_pylist() == ["req-0", "req-1", "req-2", "req-3"]
    assert joined.column("reward").to_pylist() == [None, 1.0, 2.0, 3.0]
    assert joined.column("reward_time").to_pylist() == [None, 10.0, 15.0, 30.0]
    costs = joined.column("costs").to_pylist()
    assert costs[0] is None and dict(costs[1]) == {"energy": 0.5} and dict(costs[2]) == {"energy": 1.5}
    assert joined.column("action_index").to_pylist() == [0, 1, 2, 0]
    assert joined.schema.field("costs").type == REWARD_SCHEMA.field("costs").type

    inner = join_rewards((read_decisions(str(tmp_path)), read_rewards(str(tmp_path))), how="inner")
    assert inner.column("request_id").to_pylist() == ["req-1", "req-2", "req-3"]
    assert "unknown" not in inner.column("request_id").to_pylist()
    with pytest.raises(ValueError, match="how must be one of"):
        join_rewards(str(tmp_path), how="outer")


def test_join_of_an_empty_log(tmp_path: Path) -> None:
    joined = join_rewards(str(tmp_path / "nothing-here"))
    assert joined.num_rows == 0
    assert joined.schema.names == [*DECISION_SCHEMA.names, "reward", "costs", "reward_time"]


def test_missing_directory_reads_as_empty_tables(tmp_path: Path) -> None:
    assert read_decisions(str(tmp_path / "absent")).schema.equals(DECISION_SCHEMA)
    assert read_decisions(str(tmp_path / "absent")).num_rows == 0
    assert read_rewards(str(tmp_path / "absent")).schema.equals(REWARD_SCHEMA)


def test_schema_version_in_file_metadata_and_column(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(f"file://{tmp_path}", flush_interval_s=3600)
    dlogs.append(dlog)
    dlog.log_decision(decision(1))
    dlog.log_reward({"request_id": "req-1", "time": 1.0, "reward": 0.5})
    dlog.close()
    for stream in ("decisions", "rewards"):
        (path,) = segments(tmp_path, stream)
        meta = pq.read_metadata(path)
        assert meta.metadata[b"policy_rollouts.schema_version"] == str(SCHEMA_VERSION).encode()
        assert meta.metadata[b"policy_rollouts.stream"] == stream.encode()
        assert meta.row_group(0).column(0).compression == "ZSTD"
        assert pq.read_table(path).column("schema_version").to_pylist() == [SCHEMA_VERSION]
    assert DECISION_SCHEMA.metadata[b"policy_rollouts.schema_version"] == b"2"


def test_write_failure_is_retried_without_loss(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    fs = FlakyFS(failures=1)
    dlog = DecisionLog(str(tmp_path), segment_rows=50, flush_interval_s=0.05, filesystem=fs)
    dlogs.append(dlog)
    for i in range(120):
        dlog.log_decision(decision(i))
    # The background writer hits the failure, backs off and retries by itself.
    wait_until(lambda: dlog.errors == 1 and dlog.buffered == 0, "the writer to retry the failed segment")
    dlog.close()
    ids = read_decisions(str(tmp_path)).column("request_id").to_pylist()
    assert ids == [f"req-{i}" for i in range(120)]  # order kept: the failed segment is retried first
    assert dlog.errors == 1
    assert not [p for p in (tmp_path / "decisions").iterdir() if p.name.startswith("_")]


def test_flush_gives_up_with_a_clear_error_and_keeps_the_records(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    fs = FlakyFS(failures=10**9)
    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600, filesystem=fs, flush_timeout_s=0.2)
    dlogs.append(dlog)
    for i in range(3):
        dlog.log_decision(decision(i))
    with pytest.raises(DecisionLogError, match=r"3 records are still unwritten.*call flush\(\) or close\(\) again"):
        dlog.flush()
    assert dlog.errors >= 1 and dlog.buffered == 3
    fs.failures = 0  # the storage comes back
    dlog.close()
    assert read_decisions(str(tmp_path)).num_rows == 3


def test_bad_records_are_rejected_and_the_rest_is_written(
    tmp_path: Path, dlogs: list[DecisionLog], caplog: pytest.LogCaptureFixture
) -> None:
    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600)
    dlogs.append(dlog)
    dlog.log_decision(decision(0))
    dlog.log_decision({"request_id": "no-time"})
    dlog.log_decision(decision(2, action="left"))
    dlog.log_decision(decision(3, observation=["x"]))
    dlog.log_decision(decision(4))
    dlog.close()
    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == ["req-0", "req-4"]
    assert dlog.rejected == 3
    assert "rejected 3 decisions record(s)" in caplog.text and "docs/decision-log.md" in caplog.text


def test_close_is_idempotent_and_late_records_are_not_lost(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600)
    dlogs.append(dlog)
    dlog.log_decision(decision(0))
    dlog.close()
    dlog.close()
    dlog.log_decision(decision(1))  # e.g. a request that finished during shutdown
    dlog.close()
    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == ["req-0", "req-1"]
    assert len(segments(tmp_path)) == 2


def test_discrete_numpy_action_is_stored_as_index(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    import numpy as np  # a dependency of the package itself

    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600)
    dlogs.append(dlog)
    dlog.log_decision(decision(0, action=np.int64(4), observation=np.array([1.0, 2.0]).tolist()))
    dlog.log_decision(decision(1, action=0.5))
    dlog.close()
    rows = read_decisions(str(tmp_path)).select(["action", "action_index"]).to_pylist()
    assert rows == [{"action": [4.0], "action_index": 4}, {"action": [0.5], "action_index": None}]


def test_unknown_url_scheme_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match="install"):
        DecisionLog("nosuchscheme://bucket/log")


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_rows"):
        DecisionLog(str(tmp_path), segment_rows=0)
    with pytest.raises(ValueError, match="flush_interval_s"):
        DecisionLog(str(tmp_path), flush_interval_s=0)


def test_public_surface() -> None:
    assert set(decision_log.__all__) == {
        "DECISION_SCHEMA",
        "REWARD_SCHEMA",
        "SCHEMA_VERSION",
        "DecisionBatch",
        "DecisionLog",
        "DecisionLogError",
        "join_rewards",
        "read_decisions",
        "read_rewards",
    }
    assert isinstance(DECISION_SCHEMA, pa.Schema) and isinstance(REWARD_SCHEMA, pa.Schema)
    # The package re-exports its modules' objects, so `from policy_server import decision_log` keeps working.
    for name in decision_log.__all__:
        assert getattr(decision_log, name) is globals()[name], name


def test_flush_reports_a_writer_stuck_in_a_hung_write(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    fs = GatedFS()
    dlog = DecisionLog(str(tmp_path), segment_rows=2, flush_interval_s=3600, filesystem=fs, flush_timeout_s=0.2)
    dlogs.append(dlog)
    dlog.log_decision(decision(0))
    dlog.log_decision(decision(1))
    assert fs.entered.wait(20), "the writer thread never started a write"
    with pytest.raises(DecisionLogError, match="stuck in one write"):
        dlog.flush()
    fs.release.set()  # the storage answers again: nothing was lost
    dlog.close()
    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == ["req-0", "req-1"]


# ------------------------------------------------------------------------------------------
# log_decision_batch: numpy columns instead of one dict per decision


def varied_batches() -> list[DecisionBatch]:
    """Every shape of batch the server may log, so that each conversion path is compared with the dict path."""
    return [
        batch(0, 4),
        batch(4, 3, shield_reasons=[["clip"], [], ["clip", "max_delta"]], context_json=['{"u": 1}', None, "{}"]),
        # continuous (B, D) actions, no distribution, float64 observations, router fields
        batch(
            7,
            2,
            actions=np.array([[0.5, -2.0], [1.25, 3.0]]),
            probabilities=None,
            propensities=np.array([1.0, 1.0]),
            observations=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
            assignment_probability=np.array([0.05, 0.05]),
            served_by="policy-v2-abc",
        ),
        batch(9, 0),  # an empty batch writes nothing
        # continuous (B,) actions, (B, 2, 2) observations stored flattened, another policy version
        batch(
            9,
            2,
            actions=np.array([0.5, -0.5], np.float32),
            observations=np.arange(8, dtype=np.float32).reshape(2, 2, 2),
            probabilities=None,
            policy_version="v1",
            variant="stable",
        ),
        batch(11, 2, observations=np.zeros((2, 0), np.float32), actions=np.array([7, 1], np.int32)),
        batch(13, 5),
    ]


@pytest.mark.parametrize("repeats", [1, 200], ids=["seven batches", "1400 batches"])  # 1400: gathered in pieces
def test_batches_write_the_same_parquet_as_records(repeats: int, tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    batches = varied_batches() * repeats
    by_batch = DecisionLog(str(tmp_path / "batches"), flush_interval_s=3600)
    by_record = DecisionLog(str(tmp_path / "records"), flush_interval_s=3600)
    dlogs += [by_batch, by_record]
    for b in batches:
        by_batch.log_decision_batch(b)
        for record in records_of(b):
            by_record.log_decision(record)
    by_batch.close()
    by_record.close()

    from_batches = read_decisions(str(tmp_path / "batches"))
    from_records = read_decisions(str(tmp_path / "records"))
    assert from_records.num_rows == sum(len(b.request_ids) for b in batches) == 18 * repeats
    assert from_batches.equals(from_records)
    (batch_segment,) = segments(tmp_path / "batches")
    (record_segment,) = segments(tmp_path / "records")
    assert pq.read_schema(batch_segment).equals(pq.read_schema(record_segment), check_metadata=True)
    assert pq.read_schema(batch_segment).metadata == DECISION_SCHEMA.metadata
    assert by_batch.rows_written == by_record.rows_written and by_batch.rejected == 0
    # and both are what was logged, not merely the same
    rows = {r["request_id"]: r for r in from_batches.to_pylist()}
    assert rows["req-4"]["shield_reasons"] == ["clip"] and rows["req-4"]["context_json"] == '{"u": 1}'
    assert rows["req-7"]["action"] == [0.5, -2.0] and rows["req-7"]["action_index"] is None
    assert rows["req-7"]["served_by"] == "policy-v2-abc" and rows["req-0"]["served_by"] is None
    assert rows["req-9"]["observation"] == [0.0, 1.0, 2.0, 3.0] and rows["req-11"]["action_index"] == 7
    assert rows["req-13"]["observation"] == [float(np.float32(1.3)), -1.5, 3.0]


def test_records_and_batches_keep_logging_order_across_segments(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(str(tmp_path), segment_rows=5, flush_interval_s=3600)
    dlogs.append(dlog)
    expected: list[str] = []
    next_id = 0
    for size in (3, 0, 7, 1, 12, 2, 5, 4):  # batches cut by segment boundaries, a dict between each
        dlog.log_decision_batch(batch(next_id, size))
        dlog.log_decision(decision(next_id + size))
        expected += [f"req-{i}" for i in range(next_id, next_id + size + 1)]
        next_id += size + 1
    dlog.close()

    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == expected
    sizes = [pq.read_metadata(p).num_rows for p in segments(tmp_path)]
    assert sum(sizes) == len(expected) == 42
    assert all(n <= 5 for n in sizes)
    assert dlog.rows_written["decisions"] == 42 and dlog.buffered == 0 and dlog.rejected == 0


def test_batch_rows_wake_the_writer(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(str(tmp_path), segment_rows=10, flush_interval_s=3600)
    dlogs.append(dlog)
    for start in (0, 4, 8):  # three buffer items, twelve rows
        dlog.log_decision_batch(batch(start, 4))
    wait_until(lambda: len(segments(tmp_path)) == 1 and dlog.buffered == 2, "a full segment cut from the batches")
    assert [pq.read_metadata(p).num_rows for p in segments(tmp_path)] == [10]
    dlog.close()
    assert [pq.read_metadata(p).num_rows for p in segments(tmp_path)] == [10, 2]
    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == [f"req-{i}" for i in range(12)]


def test_buffered_counts_the_rows_of_batches(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600)
    dlogs.append(dlog)
    dlog.log_decision_batch(batch(0, 6))
    dlog.log_decision(decision(6))
    assert dlog.buffered == 7
    dlog.flush()
    assert dlog.buffered == 0 and dlog.rows_written["decisions"] == 7


def test_batches_from_concurrent_producers_are_all_written(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    threads_n, per_thread, size = 4, 1_500, 5
    dlog = DecisionLog(str(tmp_path), segment_rows=7_000, flush_interval_s=0.05)
    dlogs.append(dlog)

    def produce(t: int) -> None:
        for i in range(per_thread):
            first = (t * per_thread + i) * (size + 1)
            dlog.log_decision_batch(batch(first, size))
            dlog.log_decision(decision(first + size))

    run_together(produce, threads_n)
    dlog.close()

    total = threads_n * per_thread * (size + 1)
    ids = read_decisions(str(tmp_path)).column("request_id").to_pylist()
    assert len(ids) == total and set(ids) == {f"req-{i}" for i in range(total)}
    assert all(pq.read_metadata(p).num_rows <= 7_000 for p in segments(tmp_path))
    assert dlog.rows_written["decisions"] == total
    assert dlog.buffered == 0 and dlog.errors == 0 and dlog.rejected == 0


def _bad(**over: Any) -> Callable[[int], Any]:
    return lambda start: batch(start, 3, **over)


MALFORMED_BATCHES = {
    "observations too short": (_bad(observations=np.zeros((2, 3), np.float32)), "observations has 2 rows, expected 3"),
    "shield_reasons too long": (_bad(shield_reasons=[[]] * 4), "shield_reasons has 4 rows, expected 3"),
    "context_json too short": (_bad(context_json=[None]), "context_json has 1 rows, expected 3"),
    "actions of strings": (_bad(actions=np.array(["a", "b", "c"])), "actions must be integers"),
    "boolean actions": (_bad(actions=np.array([True, False, True])), "actions must be integers"),
    "integer actions with two columns": (_bad(actions=np.zeros((3, 2), np.int64)), "one index per row"),
    "one string as request ids": (_bad(request_ids="abc"), "request_ids must be a list"),
    "a missing request id": (_bad(request_ids=["x", None, "z"]), "request_ids must not contain None"),
    "no policy version": (_bad(policy_version=None), "policy_version must be a string"),
    "time as text": (_bad(time="now"), "time must be a number"),
    "observations as lists": (_bad(observations=[[0.0]] * 3), "observations must be numpy arrays"),
    "probabilities per row as scalars": (_bad(probabilities=np.full(3, 0.5)), "probabilities must have 2 dimensions"),
    "a reason that is not a list": (_bad(shield_reasons=[[], "clip", []]), "shield_reasons must hold one list"),
    "not a DecisionBatch": (lambda start: records_of(batch(start, 3))[0], "takes a DecisionBatch, got dict"),
}


@pytest.mark.parametrize("make_bad", list(MALFORMED_BATCHES), ids=list(MALFORMED_BATCHES))
def test_a_malformed_batch_is_rejected_by_its_rows_and_the_rest_is_written(
    make_bad: str, tmp_path: Path, dlogs: list[DecisionLog], caplog: pytest.LogCaptureFixture
) -> None:
    make, reason = MALFORMED_BATCHES[make_bad]
    bad = make(100)
    bad_rows = 1 if isinstance(bad, dict) else 3
    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600)
    dlogs.append(dlog)
    dlog.log_decision_batch(batch(0, 2))
    dlog.log_decision_batch(bad)  # never raises: checked by the writer
    dlog.log_decision(decision(2))
    dlog.log_decision_batch(batch(3, 2))
    dlog.close()

    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == [f"req-{i}" for i in range(5)]
    assert dlog.rejected == bad_rows
    assert f"rejected {bad_rows} decisions record(s)" in caplog.text
    assert reason in caplog.text and "docs/decision-log.md" in caplog.text


def test_a_malformed_batch_cut_by_a_segment_boundary_is_rejected_in_both_parts(
    tmp_path: Path, dlogs: list[DecisionLog], caplog: pytest.LogCaptureFixture
) -> None:
    dlog = DecisionLog(str(tmp_path), segment_rows=4, flush_interval_s=3600)
    dlogs.append(dlog)
    dlog.log_decision_batch(batch(0, 3))
    # rows 3..7: the first part alone would look consistent (obs rows 0:1 of 4 exist)
    dlog.log_decision_batch(batch(3, 5, observations=np.zeros((4, 3), np.float32)))
    dlog.log_decision_batch(batch(8, 2))
    dlog.close()
    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == [
        "req-0",
        "req-1",
        "req-2",
        "req-8",
        "req-9",
    ]
    assert dlog.rejected == 5
    assert "observations has 4 rows, expected 5" in caplog.text


def test_batch_write_failure_is_retried_without_loss(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    fs = FlakyFS(failures=1)
    dlog = DecisionLog(str(tmp_path), segment_rows=50, flush_interval_s=0.05, filesystem=fs)
    dlogs.append(dlog)
    for start in range(0, 120, 8):
        dlog.log_decision_batch(batch(start, 8))
    wait_until(lambda: dlog.errors == 1 and dlog.buffered == 0, "the writer to retry the failed segment")
    dlog.close()
    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == [f"req-{i}" for i in range(120)]


def test_batch_logged_after_close_is_not_lost(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600)
    dlogs.append(dlog)
    dlog.close()
    dlog.log_decision_batch(batch(0, 3))
    assert dlog.buffered == 3
    dlog.close()
    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == ["req-0", "req-1", "req-2"]


def test_a_segment_is_converted_in_chunks_and_stays_in_order(
    tmp_path: Path, dlogs: list[DecisionLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each conversion holds the GIL, so a segment is converted a few rows at a time (batches never cut)."""
    monkeypatch.setattr(_convert, "CONVERT_RECORDS", 4)
    monkeypatch.setattr(_convert, "CONVERT_BATCH_ROWS", 6)
    calls: list[tuple[str, int]] = []

    def counting(module: Any, name: str) -> Callable[..., pa.Table]:
        convert = getattr(module, name)

        def wrapped(items: list[Any], schema: pa.Schema) -> pa.Table:
            table = convert(items, schema)
            calls.append((name, table.num_rows))
            return table

        return wrapped

    for module, name in ((_records, "records_to_table"), (_batches, "slices_to_table")):
        monkeypatch.setattr(module, name, counting(module, name))
    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600)
    dlogs.append(dlog)
    expected = []
    for i in range(10):
        if i == 6:
            dlog.log_decision({"request_id": "bad"})  # rejected alone, its chunk's neighbours are kept
        dlog.log_decision(decision(i))
        expected.append(f"req-{i}")
    for start, size in ((10, 3), (13, 3), (16, 3), (19, 8), (27, 2)):
        dlog.log_decision_batch(batch(start, size))
        expected += [f"req-{i}" for i in range(start, start + size)]
    dlog.close()

    assert read_decisions(str(tmp_path)).column("request_id").to_pylist() == expected
    assert len(segments(tmp_path)) == 1 and dlog.rejected == 1
    records = [n for name, n in calls if name == "records_to_table"]
    batches = [n for name, n in calls if name == "slices_to_table"]
    assert sum(records) == 10 and max(records) <= 4 and len(records) >= 3
    assert batches == [6, 3, 8, 2]  # 3+3 fill a chunk; the 8-row batch is a chunk of its own, never cut


def test_only_repeating_columns_are_dictionary_encoded(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    dlog = DecisionLog(str(tmp_path), flush_interval_s=3600)
    dlogs.append(dlog)
    dlog.log_decision_batch(batch(0, 100))
    dlog.close()
    meta = pq.read_metadata(segments(tmp_path)[0])
    names = meta.schema.to_arrow_schema().names
    group = meta.row_group(0)

    def dictionary(name: str) -> bool:
        return any("DICTIONARY" in e for e in group.column(names.index(name)).encodings)

    assert dictionary("variant") and dictionary("policy_version")
    assert not dictionary("request_id") and not dictionary("time") and not dictionary("propensity")


def test_progress_counts_written_and_rejected_rows_in_logging_order(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    """The write-ahead log's checkpoint: after each segment, how many rows of the stream are settled."""
    seen: list[tuple[str, int]] = []
    dlog = DecisionLog(
        str(tmp_path), segment_rows=2, flush_interval_s=3600, on_progress=lambda s, n: seen.append((s, n))
    )
    dlogs.append(dlog)
    for i in range(3):
        dlog.log_decision(decision(i))
    dlog.log_decision({"request_id": "bad"})  # rejected: still settled, so the WAL may forget it
    dlog.log_reward({"request_id": "req-0", "time": 1.0, "reward": 1.0})
    dlog.close()
    assert seen == [("decisions", 2), ("decisions", 4), ("rewards", 1)]
    assert dlog.rows_accounted == {"decisions": 4, "rewards": 1} and dlog.rows_written["decisions"] == 3


def test_a_failing_store_marks_the_log_failing_until_a_write_succeeds(tmp_path: Path, dlogs: list[DecisionLog]) -> None:
    fs = FlakyFS(failures=3)
    dlog = DecisionLog(str(tmp_path), flush_interval_s=0.05, filesystem=fs, max_backoff_s=0.1)
    dlogs.append(dlog)
    dlog.log_decision(decision(0))
    deadline = time.monotonic() + 30
    while not dlog.failing:
        assert time.monotonic() < deadline, "the failure was never reported"
        time.sleep(0.01)
    while dlog.failing:
        assert time.monotonic() < deadline, "the log never recovered"
        time.sleep(0.01)
    assert dlog.errors >= 1 and dlog.rows_written["decisions"] == 1
