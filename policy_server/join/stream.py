"""The bounded-memory join: a log larger than RAM joined hour by hour into a partitioned Parquet dataset.

Why a module of its own: this is `policy-server join` in a Job. Memory stays bounded by one hour of
decisions plus its rewards, whatever the log's size: the footers say which decision segments overlap
the hour (``segments``), the rewards were regrouped by decision hour once (``shuffle``), and DuckDB
joins the hour (``block``) under a memory limit. The output is hive-partitioned,
``OUT/hour=YYYYMMDDHH/variant=NAME/part-0.parquet``, one directory per hour, replaced when the hour is
joined again, so shards (``--shard I/N``, the hours with ``hash(hour) % N == I``) never write the same
files and a rerun is idempotent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from policy_server.decision_log import _storage
from policy_server.decision_log.schema import DECISION_SCHEMA
from policy_server.join import block, duck, segments, shuffle
from policy_server.join.summary import Summary
from policy_server.join.window import JoinError, JoinOptions

__all__ = ["Shard", "hour_label", "join_to_dataset"]


@dataclass(frozen=True)
class Shard:
    """This pod's share of the hours: ``index`` of ``count`` (an Indexed Job's JOB_COMPLETION_INDEX)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        try:
            index, count = (int(v) for v in text.split("/"))
        except ValueError:
            raise JoinError(f"--shard must be I/N with integers (e.g. 0/4), got {text!r}") from None
        if not 0 <= index < count:
            raise JoinError(f"--shard {text}: I must be in 0..N-1")
        return cls(index, count)

    def owns(self, hour: int) -> bool:
        """Whether this shard joins ``hour``: a stable hash (not Python's salted one), so pods agree."""
        if self.count == 1:
            return True
        digest = hashlib.blake2b(str(hour).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index


def hour_label(hour: int) -> str:
    """``YYYYMMDDHH`` (UTC) of an hour number (Unix seconds // 3600)."""
    return dt.datetime.fromtimestamp(hour * segments.HOUR, dt.UTC).strftime("%Y%m%d%H")


Progress = Callable[[str], None]


def join_to_dataset(
    logs: str,
    out: str,
    options: JoinOptions,
    *,
    shard: Shard = Shard(),
    filesystem: fsspec.AbstractFileSystem | None = None,
    temp_dir: str | None = None,
    memory_limit: str = "1GB",
    progress: Progress | None = None,
) -> Summary:
    """Join every decision and reward segment under ``logs`` into the dataset at ``out``; the counts."""
    log = segments.open_log(logs, filesystem)
    if not log.decisions and not log.rewards:
        raise JoinError(f"no decision log segments under {logs!r}: --logs must hold decisions/ and rewards/")
    say = progress or (lambda _line: None)
    say(f"{len(log.decisions)} decision segments, {len(log.rewards)} reward segments")
    missing = [s.path for s in log.decisions if s.lo is None or s.hi is None]
    if missing:
        raise JoinError(f"decision segment {missing[0]} has no `time` statistics in its footer; rewrite it with "
                        "statistics (pyarrow's default)")
    hours = sorted({h for s in log.decisions for h in s.hours() if shard.owns(h)})
    out_fs, out_root = _storage.resolve(out, None)
    summary = Summary(shard=f"{shard.index}/{shard.count}" if shard.count > 1 else None)
    with tempfile.TemporaryDirectory(prefix="policy-join-", dir=temp_dir) as tmp, \
            duck.connect(memory_limit=memory_limit, temp_dir=f"{tmp}/duckdb") as con:
        buckets = shuffle.shuffle_rewards(log, f"{tmp}/spill", shard.owns)
        say(f"rewards regrouped by decision hour: {buckets.rows} rows")
        hours = sorted(set(hours) | set(buckets.hours))
        began, done = time.monotonic(), 0
        for n, hour in enumerate(hours, 1):
            start, end = hour * segments.HOUR, (hour + 1) * segments.HOUR
            decisions = _decisions(log, start - shuffle.EDGE, end + shuffle.EDGE)
            joined, counts = block.join_block(con, decisions, buckets.read(hour), options, block.Block(start, end))
            _write_hour(out_fs, out_root, hour, joined, tmp)
            summary.merge(counts)
            summary.hours += 1
            done += counts.total.decisions
            rate = done / max(time.monotonic() - began, 1e-9)
            say(f"hour {hour_label(hour)} ({n}/{len(hours)}): {counts.total.decisions} decisions, {rate:,.0f}/s")
        if buckets.unattributed and shard.index == 0:
            _count_loose_orphans(log, buckets, options, summary)
    return summary


def _decisions(log: segments.Log, start: float, end: float) -> pa.Table:
    """The decisions with ``time`` in ``[start, end)``, reading only the segments whose footer overlaps it."""
    paths = [s.path for s in log.decisions if s.overlaps(start, end)]
    if not paths:
        return DECISION_SCHEMA.empty_table()
    dataset = ds.dataset(paths, schema=DECISION_SCHEMA, format="parquet", filesystem=log.filesystem)
    return dataset.to_table(filter=(pc.field("time") >= start) & (pc.field("time") < end))


def _write_hour(fs: fsspec.AbstractFileSystem, root: str, hour: int, joined: pa.Table, tmp: str) -> None:
    """Replace ``root/hour=YYYYMMDDHH/`` with this hour's rows, one file per variant."""
    target = _storage.join(root, f"hour={hour_label(hour)}")
    if fs.exists(target):
        fs.rm(target, recursive=True)
    if joined.num_rows == 0:
        return
    local = "file" in _storage.protocols(fs)
    base = target if local else f"{tmp}/out"
    partitioning = ds.partitioning(pa.schema([("variant", pa.string())]), flavor="hive")
    ds.write_dataset(joined, base, format="parquet", partitioning=partitioning, basename_template="part-{i}.parquet",
                     existing_data_behavior="delete_matching",
                     file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"))
    if not local:
        fs.put(base, target, recursive=True)
        shutil.rmtree(base)


def _count_loose_orphans(log: segments.Log, buckets: shuffle.Buckets, options: JoinOptions, summary: Summary) -> None:
    """Rewards without ``decision_time`` (schema 1) whose request id no decision has: one pass over the ids."""
    loose = ds.dataset([s.path for s in buckets.unattributed], format="parquet").to_table(
        columns=["request_id", "variant"], filter=pc.field("time") <= options.as_of)
    seen = pa.array([False] * loose.num_rows)
    ids = loose["request_id"]
    for segment in log.decisions:
        table = ds.dataset([segment.path], schema=DECISION_SCHEMA, format="parquet", filesystem=log.filesystem)
        seen = pc.or_(seen, pc.is_in(ids, value_set=table.to_table(columns=["request_id"])["request_id"]))
    orphans = loose.filter(pc.invert(seen))["variant"].fill_null("unknown")
    for entry in pc.value_counts(orphans).to_pylist():
        summary.variant(entry["values"]).orphans += entry["counts"]
        summary.total.orphans += entry["counts"]
