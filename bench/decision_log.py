"""Decision-log micro-benchmark: what logging costs on the request path, and how fast the writer drains.

Why: the policy server calls ``DecisionLog.log_decision`` on the event-loop thread for every request, so
its cost is added to every decision; the writer thread's conversion (dicts -> Arrow -> zstd Parquet)
competes for the GIL, so its per-record cost matters too.

* ``append_only``: log_decision with the writer idle (only the deque append);
* ``with_writer``: log_decision while the writer rotates segments concurrently (GIL contention included);
* ``drain``: records/s that ``close()`` converts and writes to a local temporary directory.

    .venv/bin/python bench/decision_log.py [--records 300000]

Writes ``bench/results/decision_log.json``. Timings on a shared machine are noisy: compare within a run.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from policy_server.decision_log.reader import read_decisions
from policy_server.decision_log.writer import DecisionLog


def record(i: int) -> dict[str, Any]:
    return {
        "request_id": f"req-{i}",
        "time": time.time(),
        "policy_version": "v2",
        "variant": "candidate",
        "observation": [0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8],
        "action": i % 4,
        "propensity": 0.7,
        "probabilities": [0.1, 0.7, 0.1, 0.1],
        "shield_reasons": [],
        "latency_ms": 0.3,
        "context_json": None,
    }


def time_calls(dlog: DecisionLog, records: list[dict[str, Any]]) -> float:
    log = dlog.log_decision
    start = time.perf_counter()
    for rec in records:
        log(rec)
    return (time.perf_counter() - start) / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decision_log.json")
    args = parser.parse_args()
    n = args.records
    records = [record(i) for i in range(n)]
    results: dict[str, Any] = {"records": n, "python": platform.python_version(), "machine": platform.machine()}

    with tempfile.TemporaryDirectory() as tmp:
        idle = DecisionLog(f"{tmp}/idle", segment_rows=n + 1, flush_interval_s=3600)
        results["append_only_us_per_call"] = time_calls(idle, records) * 1e6
        start = time.perf_counter()
        idle.close()
        drain_s = time.perf_counter() - start
        results["drain_records_per_s"] = n / drain_s
        results["drain_segment_mb"] = sum(p.stat().st_size for p in Path(tmp, "idle").rglob("*.parquet")) / 1e6

        busy = DecisionLog(f"{tmp}/busy", segment_rows=10_000, flush_interval_s=0.5)
        results["with_writer_us_per_call"] = time_calls(busy, records) * 1e6
        busy.close()
        assert read_decisions(f"{tmp}/busy").num_rows == n, "records were lost"

    results["append_only_calls_per_s"] = 1e6 / results["append_only_us_per_call"]
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
