"""Reward joiner benchmark: decisions/s and peak RSS of `policy-server join` on a synthetic multi-writer log.

Why: the joiner must handle logs larger than RAM (issue #15: 100 million decisions, peak RSS <= 2 GB)
and its speed decides how long the offline-evaluation and training Jobs wait for their dataset.

The log is synthesised once (vectorised numpy/pyarrow) under ``--dir`` and reused with ``--reuse``:
4 writers (replicas), decisions over ``decisions / 500k`` hours, 30 % rewarded, a fifth of those with
2-3 distinct events, 3 % of reward rows retried (duplicates), 2 % of events late (after the 1 h
window, up to a day), 0.5 % orphans. Each join runs in a child process so its peak RSS (VmHWM) is its
own. ``--peer`` also runs the naive in-memory join (``decision_log.reader.join_rewards``, everything
in memory) on the same log: the ratio is the point, both measured in the same run.

    PYTHONPATH=operator:. python bench/join.py --quick            # 1 M decisions, streaming vs naive
    PYTHONPATH=operator:. nice python bench/join.py --decisions 100000000 --reuse

Writes ``bench/results/join.json`` (``join-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from policy_server.decision_log.schema import DECISION_SCHEMA, REWARD_SCHEMA

WRITERS = 4
PER_HOUR = 500_000
START = 1_780_000_000.0  # 2026-05-28, an hour boundary is not special
WINDOW = 3600.0


def _lists(values: np.ndarray, width: int, n: int, value_type: pa.DataType) -> pa.Array:
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(values, value_type))


# A bandit log: the trajectory columns of schema 2 (episode_id, step, terminal) are null, as the server logs them,
# and so are the columns of a policy without a value (predicted_value) or an envelope (proposed_action)
_BANDIT_NULLS = [
    name
    for name in ("episode_id", "step", "terminal", "predicted_value", "proposed_action")
    if name in DECISION_SCHEMA.names
]


def _decisions(rng: np.random.Generator, writer: int, seq: np.ndarray, times: np.ndarray) -> pa.Table:
    n = len(seq)
    ids = pc.binary_join_element_wise(f"r1.w{writer}.", pc.utf8_lpad(pa.array(seq).cast(pa.string()), 12, "0"), "")
    actions = rng.integers(0, 2, n)
    return pa.table(
        {
            "schema_version": pa.array(np.full(n, 2, np.int16)),
            "request_id": ids,
            "time": pa.array(times),
            "policy_version": pa.repeat("v1", n),
            "variant": pa.DictionaryArray.from_arrays(pa.array((rng.random(n) < 0.1).astype(np.int8)),
                                                      ["stable", "candidate"]).cast(pa.string()),
            "observation": _lists(rng.standard_normal(4 * n), 4, n, pa.float64()),
            "action": _lists(actions.astype(np.float64), 1, n, pa.float64()),
            "action_index": pa.array(actions),
            "propensity": pa.array(np.full(n, 0.5)),
            "probabilities": pa.nulls(n, pa.list_(pa.float64())),
            "shield_reasons": _lists(np.array([], dtype=object), 0, n, pa.string()),
            "latency_ms": pa.array(rng.random(n)),
            "context_json": pa.nulls(n, pa.string()),
            "assignment_probability": pa.nulls(n, pa.float64()),
            "served_by": pa.repeat(f"w{writer}", n),
            **{name: pa.nulls(n, DECISION_SCHEMA.field(name).type) for name in _BANDIT_NULLS},
        }
    ).cast(DECISION_SCHEMA)


def _rewards(rng: np.random.Generator, decisions: pa.Table) -> pa.Table:
    """30 % rewarded; 1-3 distinct events each; 2 % of events late; 3 % of rows retried; 0.5 % orphans."""
    n = decisions.num_rows
    chosen = np.flatnonzero(rng.random(n) < 0.3)
    events = np.where(rng.random(len(chosen)) < 0.2, rng.integers(2, 4, len(chosen)), 1)
    rows = np.repeat(chosen, events)
    event_no = np.arange(len(rows)) - np.repeat(np.cumsum(events) - events, events)
    retried = np.flatnonzero(rng.random(len(rows)) < 0.03)
    rows, event_no = np.concatenate([rows, rows[retried]]), np.concatenate([event_no, event_no[retried]])
    d_time = decisions["time"].to_numpy()[rows]
    late = rng.random(len(rows)) < 0.02
    delay = np.where(late, WINDOW + rng.random(len(rows)) * 86400.0, rng.random(len(rows)) * WINDOW * 0.9)
    ids = decisions["request_id"].take(pa.array(rows))
    n_orphans = int(len(chosen) * 0.005)
    ids = pa.concat_arrays([ids.combine_chunks(), pc.binary_join_element_wise(
        "orphan-", pa.array(rng.integers(0, 2**62, n_orphans)).cast(pa.string()), "")])
    d_time = np.concatenate([d_time, d_time[:n_orphans]])
    delay = np.concatenate([delay, delay[:n_orphans]])
    event_no = np.concatenate([event_no, np.zeros(n_orphans, np.int64)])
    m = len(d_time)
    table = pa.table(
        {
            "schema_version": pa.array(np.full(m, 2, np.int16)),
            "request_id": ids,
            "time": pa.array(d_time + delay),
            "reward": pa.array(rng.random(m)),
            "costs": pa.nulls(m, REWARD_SCHEMA.field("costs").type),
            "variant": pa.nulls(m, pa.string()),
            "policy_version": pa.repeat("v1", m),
            "decision_time": pa.array(np.round(d_time * 1000) / 1000),
            "received_by": pa.repeat("stable", m),
            "event_id": pc.binary_join_element_wise("e", pa.array(event_no).cast(pa.string()), ""),
            **{name: pa.nulls(m, REWARD_SCHEMA.field(name).type) for name in _BANDIT_NULLS
               if name in REWARD_SCHEMA.names},
        }
    ).cast(REWARD_SCHEMA)
    return table.sort_by("time")


def synthesise(root: Path, total: int, segment_rows: int, seed: int = 0) -> dict[str, int]:
    """Write ``total`` decisions (and their rewards) as segments of every writer under ``root``."""
    if root.exists():
        shutil.rmtree(root)
    (root / "decisions").mkdir(parents=True)
    (root / "rewards").mkdir()
    rng = np.random.default_rng(seed)
    hours = max(4, total // PER_HOUR)
    per_writer = total // WRITERS
    counts = {"decisions": 0, "reward_rows": 0}
    for w in range(WRITERS):
        times = np.sort(START + rng.random(per_writer) * hours * 3600.0)
        for k, lo in enumerate(range(0, per_writer, segment_rows)):
            seq = np.arange(lo, min(lo + segment_rows, per_writer))
            decisions = _decisions(rng, w, seq, times[seq])
            rewards = _rewards(rng, decisions)
            pq.write_table(decisions, root / "decisions" / f"part-{k:06d}-w{w}.parquet", compression="zstd")
            pq.write_table(rewards, root / "rewards" / f"part-{k:06d}-w{w}.parquet", compression="zstd")
            counts["decisions"] += decisions.num_rows
            counts["reward_rows"] += rewards.num_rows
    (root / "meta.json").write_text(json.dumps(counts))
    return counts


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(kind: str, logs: str, out: str) -> dict[str, Any]:
    """One join in this process: its seconds and peak RSS."""
    began = time.perf_counter()
    if kind == "stream":
        from policy_server.join import JoinOptions, stream

        opts = JoinOptions(window=WINDOW, as_of=START + 1e7)
        summary = stream.join_to_dataset(logs, out, opts, memory_limit="1GB",
                                         progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))
        result: dict[str, Any] = summary.to_dict()
        result.pop("variants")
    else:
        from policy_server.decision_log import reader

        table = reader.join_rewards(logs, how="inner")
        result = {"rewarded": table.num_rows}
    return {"kind": kind, "seconds": time.perf_counter() - began, "peak_rss_mb": _vmhwm_mb(), "result": result}


def _run_child(kind: str, logs: Path, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", kind, "--dir", str(logs), "--out-dir", str(out)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--decisions", type=int, default=100_000_000)
    p.add_argument("--quick", action="store_true", help="1 M decisions, with the naive peer")
    p.add_argument("--peer", action="store_true", help="also run the naive in-memory join (keep it to ~1 M)")
    p.add_argument("--dir", default=None, help="where the synthetic log lives (default /tmp/join-bench-N)")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--reuse", action="store_true", help="reuse the log under --dir if it is there")
    p.add_argument("--child", choices=["stream", "naive"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    total = 1_000_000 if args.quick else args.decisions
    logs = Path(args.dir or f"/tmp/join-bench-{total}")
    out = Path(args.out_dir or f"{logs}-out")
    if args.child:
        print(json.dumps(child(args.child, str(logs), str(out))))
        return 0
    began = time.perf_counter()
    if args.reuse and (logs / "meta.json").exists():
        counts = json.loads((logs / "meta.json").read_text())
        generated = None
    else:
        counts = synthesise(logs, total, segment_rows=max(25_000, min(250_000, total // 400)))
        generated = time.perf_counter() - began
    runs = [_run_child("stream", logs, out)]
    if args.quick or args.peer:
        runs.append(_run_child("naive", logs, out))
    stream_run = runs[0]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "log": {**counts, "writers": WRITERS, "hours": max(4, total // PER_HOUR),
                "bytes": sum(f.stat().st_size for f in logs.rglob("*.parquet"))},
        "generate_seconds": generated,
        "runs": runs,
        "decisions_per_second": counts["decisions"] / stream_run["seconds"],
    }
    if len(runs) == 2:
        report["ratio_vs_naive"] = {"seconds": stream_run["seconds"] / runs[1]["seconds"],
                                    "peak_rss": stream_run["peak_rss_mb"] / runs[1]["peak_rss_mb"]}
    name = "join-quick.json" if args.quick else "join.json"
    path = Path(__file__).parent / "results" / name
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
