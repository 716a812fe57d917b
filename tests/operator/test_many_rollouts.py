"""Many PolicyRollouts on one operator process, on the real control plane.

A rollout's daemon used to hold one of asyncio's default executor threads (cpu_count + 4: six on
two cores) for as long as the rollout existed, so the 7th rollout was never reconciled and
deleting finished ones never completed (the event and delete handlers needed those threads too).
"""

from __future__ import annotations

from typing import Any

import pytest
from rollout_operator import api

from tests.support.cluster import ClusterAPI
from tests.support.kube import policy_rollout_manifest
from tests.support.operator_process import OperatorProcess, poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLLOUTS = 50


def _manifest(index: int) -> dict[str, Any]:
    manifest = policy_rollout_manifest(name=f"many-{index}", steps=[{"setWeight": 50}, {"setWeight": 100}])
    manifest["spec"]["policy"]["replicas"] = manifest["spec"]["fallback"]["replicas"] = 1
    return manifest


def test_fifty_rollouts_all_reach_their_end_and_deletions_complete(
    cluster: ClusterAPI, operator: OperatorProcess
) -> None:
    names = [f"many-{i}" for i in range(ROLLOUTS)]
    for index in range(ROLLOUTS):
        cluster.client.create(_manifest(index))

    def phases() -> dict[str, str | None]:
        return {o["metadata"]["name"]: (o.get("status") or {}).get("phase")
                for o in cluster.objects("policyrollouts", "default")}

    def unfinished() -> list[str]:
        seen = phases()
        return [n for n in names if seen.get(n) != "Promoted"]

    poll(lambda: not unfinished(), 300, interval=1.0, what=f"all {ROLLOUTS} rollouts Promoted",
         on_timeout=lambda: f"not promoted: {unfinished()}\n{operator.log_tail()}")
    for name in names:
        cluster.client.delete(api.API_VERSION, api.KIND, name, "default")
    poll(lambda: not phases(), 120, interval=1.0, what="every deletion to complete (the finalizer ran)",
         on_timeout=lambda: f"left: {sorted(phases())}\n{operator.log_tail()}")
    # Each finalizer removed its HTTPRoute, and no reconcile in flight at the deletion wrote one back
    # (they share a lock), so none is left for the garbage collector.
    assert [r["metadata"]["name"] for r in cluster.objects("httproutes", "default")] == []
