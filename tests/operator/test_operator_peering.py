"""Two operator replicas as the chart runs them (kopf peering): one acts, the other takes over.

The chart's Deployment has two replicas with `--peering`; each picks a random priority, the
higher one works and the lower one pauses. Here the priorities are fixed so the test knows who
leads. When the leader stops (SIGTERM, as in a rolling update or a drained node) it leaves the
peering, and the follower resumes the rollout from its status.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rollout_operator.cluster.control_plane import ControlPlane

from tests.support.kube import wait_for
from tests.support.operator_process import OperatorProcess
from tests.support.operator_run import OperatorRun, rollout_manifest
from tests.support.prometheus import PrometheusServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _log(process: OperatorProcess) -> str:
    return process.log_path.read_text(errors="replace")


def _settled_paused(log: str, peering: str) -> bool:
    """Paused for a higher-priority peer: it said so last, or it never resumed and has kept alive since;
    and its PolicyRollout watch-stream is paused too (kopf pauses the stream a moment after saying so)."""
    stream = "the watch-stream for policyrollouts"
    if log.rfind(f"Resuming {stream}") > log.rfind(f"Pausing {stream}"):
        return False
    paused, resumed = log.rfind("Pausing operations in favour of"), log.rfind("Resuming operations")
    if resumed < 0:
        return f"Keep-alive in '{peering}'" in log
    return paused > resumed


def test_the_follower_pauses_then_takes_over_when_the_leader_leaves(
    control_plane: ControlPlane, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    leader_args = ("--metrics-port", "0", "--priority", "200")
    with OperatorRun(control_plane, tmp_path, prometheus.url, extra_args=leader_args) as run:
        leader = run.operator
        assert leader is not None
        assert run.rbac is not None
        follower = OperatorProcess(run.rbac.kubeconfig, prometheus.url, tmp_path / "follower.log",
                                   extra_args=("--metrics-port", "0", "--peering", run.peering, "--priority", "100"))
        follower.start()
        try:
            # kopf starts every replica paused until it has read the peering; the follower stays so once it
            # has seen the leader (in the first instants it may not have, and resume briefly: harmless,
            # status is the only state, but the test waits for the settled situation).
            wait_for(lambda: "Resuming operations" in _log(leader), 30, what="the leader to start working")
            wait_for(lambda: _settled_paused(_log(follower), run.peering), 30,
                     what="the follower to pause for the leader")
            mark = len(_log(follower))
            run.client.create(rollout_manifest(
                "handover", "vector(0)", [{"setWeight": 20}, {"pause": {"duration": "10s"}}, {"setWeight": 100}],
                prometheus.url))
            run.wait_phase("handover", "Paused")
            assert "handover" not in _log(follower), "the paused follower must not touch the rollout"
            assert "Resuming operations" not in _log(follower)[mark:]

            leader.stop()  # SIGTERM: kopf removes itself from the peering on the way out
            assert run.status("handover")["phase"] == "Paused", "the leader left mid-rollout"
            wait_for(lambda: "Resuming operations" in _log(follower), 30, what="the follower to resume")
            status = run.wait_phase("handover", "Promoted", timeout=60)
        finally:
            follower.stop()
    assert "handover" in _log(follower), "the follower finished the rollout"
    assert [h["phase"] for h in status["history"]].count("Paused") == 1, "the pause was not started over"
    peering = run.operator_calls()
    assert any(c.resource == "clusterkopfpeerings" and c.verb == "patch" for c in peering)
