"""Lineage overhead: the dataset hash `policy-server train` adds, against the join it already does.

Why: every training run now hashes its dataset (the sorted segment list with each footer's rows and
time range, docs/offline-gate-and-training.md#lineage). The claim is that this is cheap because it
reads footers only; the peer is the in-memory join `policy-server train` runs on the same log
(`policy_server.join.join_log`), measured in the same run, so the ratio is what matters.

    PYTHONPATH=operator:. python bench/lineage.py --quick     # 200 k decisions, 80 segments per stream

Writes ``bench/results/lineage.json`` (``lineage-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import join as join_bench

from policy_server import join
from policy_server.train import lineage


def _synthesise(root: Path, total: int, segment_rows: int) -> dict[str, int]:
    """bench/join.py's log, written without the trajectory columns its synthesiser predates (readers fill them)."""
    import pyarrow as pa

    full = join_bench.DECISION_SCHEMA, join_bench.REWARD_SCHEMA
    newer = ("episode_id", "step", "terminal", "predicted_value", "proposed_action")
    join_bench.DECISION_SCHEMA, join_bench.REWARD_SCHEMA = (pa.schema([f for f in s if f.name not in newer])
                                                            for s in full)
    try:
        return join_bench.synthesise(root, total, segment_rows)
    finally:
        join_bench.DECISION_SCHEMA, join_bench.REWARD_SCHEMA = full


def _best_of(repeats: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="200 k decisions in 10 k-row segments")
    p.add_argument("--decisions", type=int, default=2_000_000)
    p.add_argument("--segment-rows", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    total = 200_000 if args.quick else args.decisions
    with tempfile.TemporaryDirectory(prefix="bench-lineage-") as tmp:
        root = Path(tmp) / "log"
        counts = _synthesise(root, total, args.segment_rows // (4 if args.quick else 1))
        segments = len(list((root / "decisions").glob("*.parquet")))
        url = str(root)
        hash_s = _best_of(args.repeats, lambda: lineage.dataset_of_log(url, 0))
        join_s = _best_of(args.repeats, lambda: join.join_log(url, join.JoinOptions()))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "decisions": counts["decisions"], "segments_per_stream": segments,
        "hash_seconds": round(hash_s, 4), "join_seconds": round(join_s, 4),
        "hash_over_join": round(hash_s / join_s, 4),
    }
    out = Path(__file__).parent / "results" / ("lineage-quick.json" if args.quick else "lineage.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
