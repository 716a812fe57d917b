"""What the operator asks of the API server, on the real one: reads come from watches, writes only on change.

The audit log counts every request of the operator's ServiceAccount. A finished rollout, and a
rollout waiting for a human, make no call at all once settled (the old daemon read and
re-applied everything every second: about ten calls per second per rollout). A human's action
and an edit of an owned object are seen through the watches and acted on at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rollout_operator import api
from rollout_operator.cluster.control_plane import ControlPlane

from tests.support.kube import ApiCall, wait_for
from tests.support.operator_run import OperatorRun, rollout_manifest
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUIET_SECONDS = 8.0
# kopf's own long-running watches and its peering keep-alive are not reconciles.
_KOPF = {"kopfpeerings", "clusterkopfpeerings"}


def _requests(calls: list[ApiCall]) -> list[ApiCall]:
    return [c for c in calls if c.verb != "watch" and c.resource not in _KOPF]


def _owned_by(call: ApiCall, rollouts: set[str]) -> bool:
    return call.name is not None and any(call.name == r or call.name.startswith(f"{r}-") for r in rollouts)


def test_settled_rollouts_cost_no_api_calls_and_changes_are_acted_on_at_once(
    control_plane: ControlPlane, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    with OperatorRun(control_plane, tmp_path, prometheus.url) as run:
        finished = rollout_manifest("finished", "vector(0)", [{"setWeight": 100}], prometheus.url)
        waiting = rollout_manifest("waiting", "vector(0)", [{"setWeight": 20}, {"approval": {}}, {"setWeight": 100}],
                                   prometheus.url)
        del waiting["spec"]["analysis"]  # no guardrails: nothing is due until a human acts
        waiting["spec"]["allowPromotionWithoutAnalysis"] = True  # which the API wants said explicitly
        run.client.create(finished)
        run.client.create(waiting)
        run.wait_phase("finished", "Promoted")
        run.wait_phase("waiting", "AwaitingApproval")
        time.sleep(2)  # the last Deployment status updates of the settling rollouts

        before = len(run.operator_calls())
        time.sleep(QUIET_SECONDS)
        quiet = _requests(run.operator_calls()[before:])
        assert quiet == [], f"settled rollouts made API calls: {quiet}"

        # A human approves: the watch event wakes the rollout, no poll needed.
        approved = time.monotonic()
        run.kube_api.client.patch(api.API_VERSION, api.KIND, "waiting", "default",
                                  {"metadata": {"annotations": {api.ANNOTATION_ACTION: "approve/1"}}})
        run.wait_phase("waiting", "Promoted", timeout=30)
        assert time.monotonic() - approved < 10

        # Someone edits a Service the operator owns: the Service's watch wakes its rollout, which repairs it.
        service = run.kube_api.get("services", "default", "finished-stable")
        wanted = service["spec"]["selector"]
        run.kube_api.client.patch("v1", "Service", "finished-stable", "default",
                                  {"spec": {"selector": {key: "hijacked" for key in wanted}}})
        wait_for(lambda: run.kube_api.get("services", "default", "finished-stable")["spec"]["selector"] == wanted,
                 15, what="the operator to repair the Service")

        time.sleep(2)
        before = len(run.operator_calls())
        time.sleep(QUIET_SECONDS)
        quiet = _requests(run.operator_calls()[before:])
        assert not [c for c in quiet if _owned_by(c, {"finished", "waiting"})], f"finished rollouts called: {quiet}"

    calls = _requests(run.operator_calls())
    reads = [c for c in calls if c.verb == "get" and c.resource != api.PLURAL]
    assert reads == [], f"reconciles read owned objects from the API instead of the caches: {reads}"
    lists = {c.resource for c in calls if c.verb == "list"}
    assert {"deployments", "services", "httproutes"} <= lists, "each owned kind is listed (then watched) once"
