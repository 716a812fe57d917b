"""The fairness groups' cost on the request path (docs/policy-server.md, "Fairness groups").

    python bench/groups.py [--n 200000]

Times, per request, what `--group-key` adds to /v1/act: folding the context value into a group, building
the id's extras (`g=<group>`) and signing the longer payload, against generating the id without extras;
and the per-batch group counting (a list append per micro-batch, folded with numpy at scrape time), per
request at batch 32 with 32 groups and 4 actions. Best of 5 runs, one core.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from policy_server import attribution, group_metrics, groups, request_ids


def per_call_us(f: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    ids = request_ids.RequestIds(1000, attribution.RewardKeys.parse("b" * 40))
    ids.serve("candidate", "v1")
    spec = groups.parse("region", [f"g{i}" for i in range(groups.MAX_GROUPS)])
    assert spec is not None
    context = {"region": "g7", "other": 1}
    now = time.time()
    plain = per_call_us(lambda: ids.generate(now), args.n)
    grouped = per_call_us(lambda: ids.generate(now, groups.id_extras(spec.fold(context), None)), args.n)
    metrics = group_metrics.GroupMetrics(spec, variant="candidate", actions=["0", "1", "2", "3"])
    batch, actions = ["g7"] * 32, np.zeros(32, dtype=np.int64)
    batches = max(args.n // 32, 1)
    start = time.perf_counter()
    for _ in range(batches):
        metrics.record_batch(batch, actions)
    metrics.fold()
    counting = (time.perf_counter() - start) / (batches * 32) * 1e6
    print(
        f"id without group {plain:.2f} us, with fold + g= {grouped:.2f} us (+{grouped - plain:.2f} us); "
        f"group counting {counting:.3f} us per request"
    )


if __name__ == "__main__":
    main()
