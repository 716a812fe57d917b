"""`kubectl policyrollout` against rollouts a real operator process runs (emulator + real Prometheus).

Reuses the end-to-end scenario fixtures of tests/operator/test_scenarios.py: the report is drawn
from a rollout that the operator rolled back after a real guardrail breach, and the actions are
applied by the operator itself (`--wait` reports what it did, or why it refused).
"""

from __future__ import annotations

import base64
import re
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rollout_operator.cli import plugin, report

from tests.operator import test_scenarios
from tests.support.cluster import ClusterAPI as KubeAPI
from tests.support.cluster import cluster_as_kube_api  # noqa: F401 - the real control plane
from tests.support.prometheus import PrometheusServer

pytestmark = pytest.mark.integration

# The scenario fixtures (a real operator process, a kube client, a rollout driver), used as they are.
operator = test_scenarios.operator
scenario = test_scenarios.scenario
NAMESPACE = test_scenarios.NAMESPACE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(kube_api: KubeAPI, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = plugin.main([*args, "--kubeconfig", str(kube_api.kubeconfig_path), "--width", "200"])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_of_a_rolled_back_rollout(
    scenario: Any, kube_api: KubeAPI, prometheus: PrometheusServer, tmp_path: Path, capsys: Any
) -> None:
    s = scenario([{"setWeight": 20}, {"setWeight": 40}, {"pause": {}}, {"setWeight": 100}])
    s.wait(lambda st: st.get("currentStepIndex") == 2 and st.get("phase") == "Paused", 40, "the pause at 40%")
    s.set_metric(0.5)
    s.wait_phase("RolledBack", timeout=40)

    out_dir = tmp_path / "report"
    code, out, err = run(kube_api, capsys, "report", s.name, "--out", str(out_dir), "--prometheus-url", prometheus.url)
    assert code == 0, err
    png, page = out_dir / "timeline.png", out_dir / "report.html"
    assert f"wrote {png} and {page}" in out

    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 1000 and height >= 500 and len(data) > 30_000, (width, height, len(data))

    html = page.read_text()
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert embedded and base64.b64decode(embedded.group(1)) == data, "the page carries the PNG itself"
    assert "http://" not in html.split("<body>")[1].replace(prometheus.url, ""), "no external resources"
    guardrail_row = re.search(r'<tr><td>error-rate</td><td>&lt; 0.05</td><td>0.5</td><td class="Fail">Fail</td>', html)
    assert guardrail_row, "the guardrail row shows its last value against its condition"
    assert "RolledBack" in html and "<td>20%</td>" in html and "<td>40%</td>" in html
    assert '<td class="Warning">Warning</td>' in html and "error-rate" in html.split("<h2>Events</h2>")[1]
    assert "No offline evaluation" in html

    # The plot's guardrail panel is the series Prometheus holds for the rollout's own query.
    body = s.body()
    events = [e for e in kube_api.objects("events", NAMESPACE) if e["involvedObject"]["name"] == s.name]
    timeline = report.timeline(body, events, datetime.now(tz=UTC), prometheus.url)
    values = [v for _, v in timeline.guardrails[0].points]
    assert values and min(values) == pytest.approx(0.01) and max(values) == pytest.approx(0.5)
    assert [w for _, w, _ in timeline.weights][:3] == [0, 20, 40]


def test_actions_report_and_undo_through_the_operator(
    scenario: Any, kube_api: KubeAPI, prometheus: PrometheusServer, tmp_path: Path, capsys: Any
) -> None:
    s = scenario([{"setWeight": 10}, {"pause": {}}, {"approval": {}}, {"setWeight": 100}])
    s.wait_phase("Paused")

    code, out, err = run(kube_api, capsys, "approve", s.name, "--wait", "--timeout", "30")
    assert code == 1, out
    assert "the operator refused it: action approve/" in err and "the current step is not an approval" in err

    code, out, err = run(kube_api, capsys, "promote", s.name, "--wait", "--timeout", "30")
    assert code == 0, err
    assert f"done: {s.name} is AwaitingApproval at step 3/4 (approval), weight 10%" in out

    code, out, err = run(kube_api, capsys, "approve", s.name, "--wait", "--timeout", "30")
    assert code == 0, err
    s.wait_phase("Promoted", timeout=40)
    code, out, _ = run(kube_api, capsys, "history", s.name)
    assert "Approved" in out and "s3://policies/v2.pt2" in out, "the promoted revision is listed"

    code, _, err = run(kube_api, capsys, "report", s.name, "--out", str(tmp_path / "promoted"),
                       "--prometheus-url", prometheus.url)
    assert code == 0, err
    assert (tmp_path / "promoted" / "timeline.png").read_bytes().startswith(PNG_SIGNATURE)
    html = (tmp_path / "promoted" / "report.html").read_text()
    assert '<span class="phase" style="background:#74c476">Promoted</span>' in html
    assert "<td>ManualPromote</td>" in html and "<td>Approved</td>" in html
    assert "<td>v2</td><td>s3://policies/v2.pt2</td>" in html, "the promoted revision"
    assert '<td class="Pass">Pass</td>' in html

    code, out, err = run(kube_api, capsys, "undo", s.name)
    assert code == 0, err
    assert "back to v1 (the fallback" in out
    status = s.wait(lambda st: st if st.get("candidateVersion") == "v1" else None, 30, "a rollout of v1")
    assert status["stableVersion"] == "v2" and [r["version"] for r in status["revisions"]] == ["v2"]
