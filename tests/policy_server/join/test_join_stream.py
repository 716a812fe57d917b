"""The streaming join (`stream.join_to_dataset`): its partitioned output, its shards, and what it reads.

A log of several hours and writers: the output is hive-partitioned by decision hour and variant and reads
back as the in-memory join does; shards (`hash(hour) % N == I`) write disjoint hours that together make
the whole; each hour opens only the decision segments whose footers overlap it, and each reward segment is
read once (memory is bounded by an hour, not by the log).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import fsspec.implementations.local
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from policy_server.join import JoinOptions, join_log, stream
from tests.policy_server.join.conftest import T0, LogBuilder

HOURS = 5
WRITERS = ("w1", "w2", "w3")
OPTIONS = JoinOptions(window=1800.0, default_reward=0.0, as_of=T0 + 30 * 3600)


def build(log: LogBuilder) -> str:
    """Each writer logs one decision segment per hour, 6 decisions in it; rewards arrive up to an hour late."""
    for h in range(HOURS):
        for w, writer in enumerate(WRITERS):
            for i in range(6):
                rid = f"{writer}-{h}-{i}"
                t = T0 + h * 3600 + 60 + 580 * i + w  # none within a second of an hour boundary
                log.decision(rid, t, writer=writer, segment=h, variant="candidate" if i % 3 == 0 else "stable")
                if i % 2 == 0:  # rewards land in the segment of the hour they arrive in, from another writer
                    arrival = t + 900 * (i % 4 + 1)
                    log.reward(rid, arrival, float(i), writer=WRITERS[(w + 1) % 3], segment=int((arrival - T0) // 3600))
    return log.write()


def read(out: Path) -> list[dict[str, Any]]:
    return sorted(ds.dataset(str(out), format="parquet", partitioning="hive").to_table().to_pylist(),
                  key=lambda r: r["request_id"])


def test_the_output_is_partitioned_by_hour_and_variant_and_reads_back_as_the_in_memory_join(
        log: LogBuilder, tmp_path: Path) -> None:
    url = build(log)
    summary = stream.join_to_dataset(url, str(tmp_path / "out"), OPTIONS)
    dirs = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").glob("*/*"))
    labels = [stream.hour_label(int(T0 // 3600) + h) for h in range(HOURS)]
    assert dirs == [f"hour={label}/variant={v}" for label in labels for v in ("candidate", "stable")]
    rows = read(tmp_path / "out")
    table, expected = join_log(url, OPTIONS)
    assert [(r["request_id"], r["reward"], r["defaulted"]) for r in rows] == sorted(
        (r["request_id"], r["reward"], r["defaulted"]) for r in table.to_pylist())
    assert summary.to_dict() | {"hours": 0} == expected.to_dict()
    assert {r["hour"] for r in rows} == {int(label) for label in labels}
    for name in ("observation", "propensity", "reward", "costs", "reward_events", "defaulted", "first_reward_time"):
        assert name in rows[0]


def test_joining_again_replaces_the_hours_it_wrote(log: LogBuilder, tmp_path: Path) -> None:
    url = build(log)
    stream.join_to_dataset(url, str(tmp_path / "out"), OPTIONS)
    stream.join_to_dataset(url, str(tmp_path / "out"), OPTIONS)
    rows = read(tmp_path / "out")
    assert len(rows) == len({r["request_id"] for r in rows}) == HOURS * len(WRITERS) * 6


def test_shards_write_disjoint_hours_that_together_make_the_whole(log: LogBuilder, tmp_path: Path) -> None:
    url = build(log)
    whole = stream.join_to_dataset(url, str(tmp_path / "whole"), OPTIONS)
    total = whole.__class__()
    files: list[set[str]] = []
    for i in range(3):
        out = tmp_path / f"shard-{i}"
        part = stream.join_to_dataset(url, str(out), OPTIONS, shard=stream.Shard(i, 3))
        total.merge(part)
        files.append({str(p.relative_to(out)) for p in out.rglob("*.parquet")})
    assert all(not (a & b) for i, a in enumerate(files) for b in files[i + 1:])
    whole_files = {str(p.relative_to(tmp_path / "whole")) for p in (tmp_path / "whole").rglob("*.parquet")}
    assert set().union(*files) == whole_files
    assert total.to_dict() == whole.to_dict()
    assert sum(1 for f in files if f) > 1  # the hours really are spread over the shards


@pytest.mark.parametrize("text, error", [("3/3", "I must be in 0..N-1"), ("x", "I/N with integers")])
def test_a_bad_shard_says_how_to_write_one(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        stream.Shard.parse(text)


class CountingFS(fsspec.implementations.local.LocalFileSystem):
    """A local filesystem that records every file it opens, in order (a spy on what the join reads)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.opened: list[str] = []

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        self.opened.append(path)
        return super()._open(path, mode, **kwargs)


def test_each_hour_opens_only_the_decision_segments_it_overlaps_and_rewards_are_read_once(
        log: LogBuilder, tmp_path: Path) -> None:
    url = build(log)
    phases = spied_join(url, tmp_path / "out")
    reward_segments = {str(p) for p in Path(url, "rewards").iterdir()}
    assert phases["rewards regrouped by decision hour"] == reward_segments  # every reward segment, in one pass
    assert all(not (opened & reward_segments) for name, opened in phases.items() if name.startswith("hour "))
    for h in range(HOURS):
        opened = phases[f"hour {stream.hour_label(int(T0 // 3600) + h)}"]
        assert opened == {f"{url}/decisions/part-{h:04d}-{w}.parquet" for w in WRITERS}


def test_the_output_can_be_any_fsspec_url(log: LogBuilder, tmp_path: Path) -> None:
    url = build(log)
    out = f"memory://joined-{tmp_path.name}"
    stream.join_to_dataset(url, out, OPTIONS)
    fs = fsspec.filesystem("memory")
    try:
        written = sorted(p.split("/joined-")[1].split("/", 1)[1] for p in fs.find(out))
        local = _local(url, tmp_path)
        assert written == sorted(str(p.relative_to(local)) for p in local.rglob("*.parquet"))
    finally:
        fs.rm(out, recursive=True)


def _local(url: str, tmp_path: Path) -> Path:
    """The same join written to a local directory, to compare with."""
    stream.join_to_dataset(url, str(tmp_path / "local"), OPTIONS)
    return tmp_path / "local"


def test_a_log_url_without_segments_says_what_it_must_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("--logs must hold decisions/ and rewards/")):
        stream.join_to_dataset(str(tmp_path / "nowhere"), str(tmp_path / "out"), OPTIONS)


def spied_join(url: str, out: Path, **kwargs: Any) -> dict[str, set[str]]:
    """Run the join through a CountingFS; the files opened in each phase, keyed by its progress line."""
    fs = CountingFS(skip_instance_cache=True)
    phases: dict[str, set[str]] = {}
    mark = 0

    def progress(line: str) -> None:  # called after each phase: what was opened since belongs to it
        nonlocal mark
        phases[line.split(":")[0].split(" (")[0]] = set(fs.opened[mark:])
        mark = len(fs.opened)

    stream.join_to_dataset(url, str(out), OPTIONS, filesystem=fs, progress=progress, **kwargs)
    return phases


def test_a_shard_reads_only_the_reward_segments_whose_footers_can_hold_its_hours(log: LogBuilder,
                                                                               tmp_path: Path) -> None:
    url = build(log)
    hours_in = {p.name: {int(t // 3600) for t in pq.read_table(p)["decision_time"].to_pylist()}
                for p in Path(url, "rewards").iterdir()}
    for i in range(3):
        shard = stream.Shard(i, 3)
        phases = spied_join(url, tmp_path / "out", shard=shard)
        read = {p.rsplit("/", 1)[1] for p in phases["rewards regrouped by decision hour"]}
        assert read == {name for name, hours in hours_in.items() if any(shard.owns(h) for h in hours)}
        assert read != set(hours_in)  # some segments were skipped
