"""Done-when of the action envelope, for a person: `kubectl policyrollout proposals` lists what a real policy
server replaced, with counts from a real Prometheus that scraped it and examples from its real decision log,
ends with the spec change that would admit them, and records a rejection as an annotation.

The object lives in the real control plane (tests/support/cluster.py), as in test_plugin.py; the server is
the in-process policy server with a candidate that prefers action 3 and an envelope {0, 1, 2}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rollout_operator.cli import plugin, proposals

from tests.support.cluster import ClusterAPI as KubeAPI
from tests.support.cluster import cluster_as_kube_api  # noqa: F401 - the real control plane
from tests.support.envelope_policy import OBS, write_preferring
from tests.support.kube import policy_rollout_manifest
from tests.support.live_guardrails import LabelledPrometheus
from tests.support.policy_server import running
from tests.support.prometheus import _require_binary

pytestmark = pytest.mark.integration

DECISIONS = 30


def run(kube_api: KubeAPI, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = plugin.main([*args, "--kubeconfig", str(kube_api.kubeconfig_path), "--width", "200"])
    out, err = capsys.readouterr()
    return code, out, err


def manifest(log: Path, prometheus_url: str) -> dict[str, Any]:
    return policy_rollout_manifest(
        envelope={"actions": [0, 1, 2]},
        decisionLog={"url": str(log)},
        analysis={"prometheusUrl": prometheus_url},
    )


def test_proposals_lists_counts_examples_and_the_widening_then_records_a_rejection(
    kube_api: KubeAPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _require_binary()
    candidate = write_preferring(tmp_path / "cand", [0.0, 0.5, 1.0, 4.0])
    fallback = write_preferring(tmp_path / "fb", [0.0, 3.0, 0.0, 0.0])
    log = tmp_path / "log"
    with (
        running(
            candidate,
            variant="candidate",
            log_dir=str(log / "candidate"),
            log_flush_interval_s=0.2,
            envelope=json.dumps({"actions": [0, 1, 2]}),
            envelope_fallback_model=str(fallback),
        ) as srv,
        LabelledPrometheus({f"127.0.0.1:{srv.port}": "pricing"}, namespace="default") as prom,
    ):
        kube_api.put("PolicyRollout", manifest(log, prom.url))
        # the pre-created zero is scraped first, so the window holds every proposal
        prom.wait_for('count(policy_envelope_proposals_total{proposed="3"} == 0)', lambda v: v == 1, timeout=40)
        client = srv.client()
        served = [client.act(OBS, context={"entity": f"shop-{i % 4}"}) for i in range(DECISIONS)]
        assert {b["action"] for b in served} == {1}
        query = proposals.promql("pricing", "default", "1h")
        deadline = time.monotonic() + 40  # until Prometheus has scraped every proposal
        while proposals.query_counts(prom.url, query) != {("candidate", "3"): DECISIONS}:
            assert time.monotonic() < deadline, proposals.query_counts(prom.url, query)
            time.sleep(0.25)
        deadline = time.monotonic() + 30  # staged rows reach a Parquet segment within ~1 s
        while len(proposals.read_examples(str(log), 0.0).get("3", [])) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        code, out, _ = run(kube_api, capsys, "proposals", "pricing", "--since", "1h")
    assert code == 0, out
    lines = out.splitlines()
    assert f"proposed 3: candidate {DECISIONS}" in lines
    examples = [line for line in lines if "proposed=3 served=1" in line]
    assert len(examples) == 3 and all("entity=shop-" in line and "id=" in line for line in examples)
    widening = out.split("To approve, widen the envelope in the PolicyRollout (through GitOps):\n", 1)[1]
    spec = yaml.safe_load("\n".join(line[2:] for line in widening.splitlines() if line.startswith("  ")))
    assert spec == {"spec": {"envelope": {"actions": [0, 1, 2, 3]}}}

    code, out, _ = run(kube_api, capsys, "proposals", "pricing", "--reject", "3")
    assert code == 0 and "rejected proposals 3" in out
    obj = kube_api.get("PolicyRollout", "default", "pricing")
    assert obj is not None
    assert obj["metadata"]["annotations"][proposals.ANNOTATION_REJECTED] == "3"
    # Prometheus gone: one line with the flag to pass, and the examples from the log still listed
    code, out, _ = run(kube_api, capsys, "proposals", "pricing", "--prometheus-url", "http://127.0.0.1:9")
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("counts unavailable")]
    assert len(notes) == 1 and "--prometheus-url" in notes[0]
    assert "proposed 3: count unknown  [rejected]" in out and "proposed=3 served=1" in out
    assert "To approve" not in out  # a rejected action is not offered for widening
