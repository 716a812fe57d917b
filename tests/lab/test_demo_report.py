"""The demo's HTML report, read as a user reads it: rendered by headless Chromium.

A synthetic report.json with the demo's three scenarios (the reward hacker stopped by the
offline gate, the honest candidate promoted, the drifting one rolled back live) is written with
`write_html`; the tests assert on the text Chromium renders (explanations with their numbers,
the summary table, the gate's criteria, the breach, times relative to each rollout's start) and
that every chart is a real image on screen. An old-format report must still render.
"""

from __future__ import annotations

import contextlib
import datetime
import html.parser
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image
from rollout_lab.demo import charts, report

from tests.support import requirements

T0 = 1_765_000_000.0  # the first rollout's start (epoch s); each scenario starts 100 s after the previous one
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
# Reads each image's decoded size into an attribute once the page has loaded; --dump-dom then shows it.
PROBE = ("<script>addEventListener('load', () => { document.body.dataset.images = JSON.stringify("
         "[...document.images].map(i => [i.alt, i.naturalWidth, i.naturalHeight])); });</script>")


# ---------------------------------------------------------------------------------- the report.json


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


def _timeline(t0: float, phases: list[tuple[str, int, int, bool]]) -> list[dict[str, Any]]:
    """Samples once a second: (phase, seconds, weight, shadow) runs in order."""
    rows, t = [], t0
    for phase, seconds, weight, shadow in phases:
        for _ in range(seconds):
            rows.append({"time": t, "phase": phase, "step": 0, "weight": weight, "shadow": shadow,
                         "actual_weight": weight})
            t += 1
    return rows


def _traffic(t0: float, seconds: int, candidate_from: int | None, violation: float) -> list[dict[str, Any]]:
    rows = []
    for s in range(seconds):
        rows.append({"t": t0 + s, "variant": "stable", "decisions": 20, "rewards": 18, "reward_sum": 4.0,
                     "violations": 0, "errors": 0})
        if candidate_from is not None and s >= candidate_from:
            rows.append({"t": t0 + s, "variant": "candidate", "decisions": 5, "rewards": 5, "reward_sum": 1.2,
                         "violations": round(5 * violation), "errors": 0})
    return rows


def _gate(phase: str, violation: float, upper: float, verdict: str, message: str) -> dict[str, Any]:
    return {
        "phase": phase, "message": message, "baseline": "policy", "baselineValue": 0.21, "required": 0.189,
        "ess": 812.4, "n": 4500, "meanWeight": 1.01, "bound": "bernstein",
        "estimates": [{"estimator": "snips", "value": 0.26, "lowerBound": 0.23, "ciLow": 0.24, "ciHigh": 0.28,
                       "verdict": "pass"},
                      {"estimator": "dr", "value": 0.25, "lowerBound": 0.22, "ciLow": 0.23, "ciHigh": 0.27,
                       "verdict": "pass"}],
        "constraints": [{"cost": "margin_violation", "estimator": "snips", "value": violation, "upperBound": upper,
                         "budget": 0.05, "baselineValue": 0.02, "verdict": verdict},
                        {"cost": "margin_violation", "estimator": "dr", "value": violation - 0.01,
                         "upperBound": upper - 0.01, "budget": 0.05, "baselineValue": 0.02, "verdict": verdict}],
    }


GUARDRAILS = {"margin-floor": "< 0.05", "conversion": "> 0.9", "errors": "< 0.02"}


def _analyses(t0: float, shadow_at: list[int], live_at: list[int], margin: dict[int, float]) -> list[dict[str, Any]]:
    """Every guardrail judged at each time; margin-floor's value is `margin` where given, else 0.02."""
    rows = []
    for at, shadow in [(t, True) for t in shadow_at] + [(t, False) for t in live_at]:
        for name, condition in GUARDRAILS.items():
            value = {"margin-floor": margin.get(at, 0.02), "conversion": 1.01, "errors": 0.0}[name]
            fail = name == "margin-floor" and value >= 0.05
            rows.append({"t": t0 + at, "guardrail": name, "value": value, "verdict": "Fail" if fail else "Pass",
                         "condition": condition, "shadow": shadow})
    return rows


def _shadow(passed: bool) -> dict[str, Any]:
    values = {"margin-floor": 0.02, "conversion": 1.01, "errors": 0.0}
    return {"passed": passed, "guardrails": [{"name": n, "value": values[n], "verdict": "Pass", "condition": c}
                                             for n, c in GUARDRAILS.items()]}


def _events(rollout: str, t0: float, reasons: list[tuple[int, str, str]]) -> list[dict[str, Any]]:
    return [{"time": t0 + at, "rollout": rollout, "type": "Warning" if reason in (
        "OfflineEvaluationFailed", "GuardrailFailed", "GuardrailBreached", "RolledBack") else "Normal",
        "reason": reason, "message": message} for at, reason, message in reasons]


def _judge_series(t0: float, times: list[int], decision: str) -> list[dict[str, Any]]:
    return [{"t": t0 + at, "estimate": 0.004, "lower": -0.05 + 0.001 * i, "upper": 0.06 - 0.001 * i,
             "decision": decision if i == len(times) - 1 else "Collecting"} for i, at in enumerate(times)]


def _rewards(**posted_joined: tuple[int, int]) -> dict[str, Any]:
    """report.json's reward counts from (posted, joined) per variant; lost = posted - joined, all accepted."""
    by_variant = {v: {"posted": p, "accepted": p, "joined": j, "lost": p - j} for v, (p, j) in posted_joined.items()}
    total = {k: sum(c[k] for c in by_variant.values()) for k in ("posted", "accepted", "joined", "lost")}
    return {"rewards_posted": total["posted"], "rewards_accepted": total["accepted"],
            "rewards_joined": total["joined"], "rewards_lost": total["lost"], "rewards_by_variant": by_variant}


def _hacker(t0: float) -> dict[str, Any]:
    reason = ("cost:margin_violation (snips): 95% upper bound 0.31 of cost 'margin_violation' is above its budget "
              "0.05 (estimate 0.27, baseline 0.02, bernstein bound)")
    return {
        "candidate": "conversion-only", "version": "conversion-only-v1", "description": "Maximises conversion only.",
        "rollout": "pricing-conversion-only", "outcome": "Failed",
        "message": f"offline evaluation failed: {reason}; the candidate got no traffic", "timedOut": False,
        "seconds": 6.0, "started_at": t0, "stopped_at": "offline-gate", "candidate_live_decisions": 0,
        "offlineEvaluation": _gate("Failed", 0.27, 0.31, "fail", reason), "guardrails": [], "judge": None,
        "history": [{"time": _iso(t0), "phase": "Pending", "step": None, "weight": 0, "reason": "Created",
                     "message": ""},
                    {"time": _iso(t0 + 1), "phase": "OfflineEvaluation", "step": None, "weight": 0,
                     "reason": "OfflineEvaluationStarted", "message": "Job ope-1"},
                    {"time": _iso(t0 + 6), "phase": "Failed", "step": None, "weight": 0,
                     "reason": "OfflineEvaluationFailed", "message": reason}],
        "trafficWhileLive": {}, "errors": 0,
        "timeline": _timeline(t0, [("Pending", 1, 0, False), ("OfflineEvaluation", 5, 0, False),
                                   ("Failed", 1, 0, False)]),
        "trafficSeries": _traffic(t0, 7, None, 0.0), "analyses": [], "judgeSeries": [], "shadowAnalysis": None,
        "manifest": "/tmp/demo/manifests/pricing-conversion-only.yaml", **_rewards(stable=(140, 140)),
    }


def _honest(t0: float) -> dict[str, Any]:
    live = list(range(12, 34, 3))
    return {
        "candidate": "constrained", "version": "constrained-v1", "description": "Keeps the margin floor.",
        "rollout": "pricing-constrained", "outcome": "Promoted", "message": "promoted constrained-v1",
        "timedOut": False, "seconds": 34.0, "started_at": t0, "stopped_at": None, "candidate_live_decisions": 2480,
        "offlineEvaluation": _gate("Passed", 0.02, 0.03, "pass", "all criteria passed"),
        "guardrails": [{"name": n, "value": 0.02, "verdict": "Pass", "message": "", "consecutiveFailures": 0,
                        "consecutiveInconclusive": 0, "measuredAt": _iso(t0 + 33)} for n in GUARDRAILS],
        "judge": {"kind": "sequential", "estimate": 0.004, "lower": -0.018, "upper": 0.026,
                  "decision": "NoWorseThanMargin", "message": "no worse than 10 % of the stable mean"},
        "history": [{"time": _iso(t0 + 34), "phase": "Promoted", "step": 7, "weight": 100, "reason": "Promoted",
                     "message": "promoted"}],
        "trafficWhileLive": {"stable": {"decisions": 1200, "rewards": 1100, "conversion": 0.21, "violationRate": 0.0},
                             "candidate": {"decisions": 2480, "rewards": 2300, "conversion": 0.22,
                                           "violationRate": 0.02}},
        "errors": 0,
        "timeline": _timeline(t0, [("OfflineEvaluation", 3, 0, False), ("Shadow", 6, 0, True),
                                   ("Progressing", 9, 20, False), ("Paused", 9, 50, False),
                                   ("Paused", 7, 80, False), ("Promoted", 1, 100, False)]),
        "trafficSeries": _traffic(t0, 35, 9, 0.02), "analyses": _analyses(t0, [3, 6], live, {}),
        "judgeSeries": _judge_series(t0, live, "NoWorseThanMargin"), "shadowAnalysis": _shadow(True),
        "manifest": "/tmp/demo/manifests/pricing-constrained.yaml",
        **_rewards(candidate=(2300, 2300), stable=(1800, 1800)),
    }


def _drift(t0: float) -> dict[str, Any]:
    return {
        "candidate": "drift", "version": "drift-v1", "description": "Looks fine offline; the market drifts.",
        "rollout": "pricing-drift", "outcome": "RolledBack",
        "message": "rolled back to list-price-v1: guardrail margin-floor failed 2 times in a row", "timedOut": False,
        "seconds": 19.0, "started_at": t0, "stopped_at": "step-3", "candidate_live_decisions": 412,
        "guardrail": "margin-floor", "offlineEvaluation": _gate("Passed", 0.02, 0.03, "pass", "all criteria passed"),
        "guardrails": [{"name": "margin-floor", "value": 0.29, "verdict": "Fail", "message": "0.29 is not < 0.05",
                        "consecutiveFailures": 2, "consecutiveInconclusive": 0, "measuredAt": _iso(t0 + 18)}],
        "judge": {"kind": "sequential", "estimate": -0.01, "lower": -0.04, "upper": 0.02, "decision": "Collecting",
                  "message": "collecting"},
        "history": [{"time": _iso(t0 + 19), "phase": "RolledBack", "step": 3, "weight": 0, "reason": "RolledBack",
                     "message": "rolled back"}],
        "trafficWhileLive": {"candidate": {"decisions": 412, "rewards": 400, "conversion": 0.24,
                                           "violationRate": 0.28}},
        "errors": 0,
        "timeline": _timeline(t0, [("OfflineEvaluation", 3, 0, False), ("Shadow", 6, 0, True),
                                   ("Progressing", 3, 20, False), ("Paused", 7, 20, False),
                                   ("RolledBack", 1, 0, False)]),
        "trafficSeries": _traffic(t0, 20, 9, 0.28),
        "analyses": _analyses(t0, [3, 6], [12, 15, 18], {12: 0.03, 15: 0.29, 18: 0.29}),
        "judgeSeries": _judge_series(t0, [12, 15, 18], "Collecting"), "shadowAnalysis": _shadow(True),
        "manifest": "/tmp/demo/manifests/pricing-drift.yaml", **_rewards(candidate=(400, 397), stable=(900, 900)),
    }


def demo_result() -> dict[str, Any]:
    """A small report.json of the demo's three scenarios, as the pipeline writes it."""
    hacker, honest, drift = _hacker(T0), _honest(T0 + 100), _drift(T0 + 200)
    events = (_events("pricing-conversion-only", T0, [(0, "RolloutStarted", "started"),
                                                      (6, "OfflineEvaluationFailed", hacker["message"])])
              + _events("pricing-constrained", T0 + 100, [(0, "RolloutStarted", "started"),
                                                          (3, "OfflineEvaluationPassed", "passed"),
                                                          (9, "ShadowPassed", "shadow passed"),
                                                          (34, "Promoted", "promoted constrained-v1")])
              + _events("pricing-drift", T0 + 200, [(0, "RolloutStarted", "started"),
                                                    (9, "ShadowPassed", "shadow passed"),
                                                    (15, "GuardrailFailed", "margin-floor 0.29"),
                                                    (18, "GuardrailBreached", "margin-floor failed twice"),
                                                    (19, "RolledBack", drift["message"])]))
    return {"fast": True, "seed": 0, "wallSeconds": 310.2,
            "environment": "policy_rollouts/Pricing-v0 (conversion reward, margin_violation cost)",
            "logging": {"decisions": 4500, "rewards": 4400, "conversion": 0.21, "violationRate": 0.02,
                        "seconds": 20.0, "log": "/tmp/demo/decision-log"},
            "training": {"seconds": 30.0, "steps": 1500}, "scenarios": [hacker, honest, drift], "events": events}


# ------------------------------------------------------------------------------ rendering in Chromium


class _Page(html.parser.HTMLParser):
    """The visible text of a dumped DOM (no style, script or attributes), its tables and its body data."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.body: dict[str, str | None] = {}
        self._hidden = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script"):
            self._hidden += 1
        elif tag == "body":
            self.body = dict(attrs)
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("p", "h1", "h2", "h3", "tr"):
            self.text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._hidden -= 1
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("p", "td", "th", "h2", "h3"):
            self.text.append("\n" if tag != "td" else " ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)
            if self._cell is not None:
                self._cell.append(data)


def _chromium(tmp: Path, *args: str) -> str:
    """Run headless Chromium with `args`, return its stdout; its whole process group is ended afterwards."""
    proc = subprocess.Popen([requirements.chromium(), *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # renderer and zygote processes left behind
        proc.wait()
    assert proc.returncode == 0, err[-2000:]
    return out


def _render(result: dict[str, Any], tmp: Path) -> tuple[_Page, str]:
    """Write the report, load it in Chromium and parse what it shows; also return the written HTML."""
    page_path = tmp / "report.html"
    report.write_html(result, page_path)
    written = page_path.read_text()
    probed = tmp / "probed.html"
    probed.write_text(written.replace("</body>", PROBE + "</body>"))
    page = _Page()
    page.feed(_chromium(tmp, "--dump-dom", probed.as_uri()))
    return page, written


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[_Page, str, Path]:
    tmp = tmp_path_factory.mktemp("report")
    page, _ = _render(demo_result(), tmp)
    return page, re.sub(r"[ \t]+", " ", "".join(page.text)), tmp


def _section(text: str, candidate: str) -> str:
    start = text.index(f"\npricing-{candidate}:")
    end = text.find("\npricing-", start + 1)
    return text[start:] if end < 0 else text[start:end]


# ------------------------------------------------------------------------------------------ the tests


def test_summary_table_gives_each_candidate_its_outcome_stop_and_live_decisions(rendered: Any) -> None:
    page, _, _ = rendered
    assert [row[:5] for row in page.tables[0]] == [
        ["candidate", "outcome", "stopped at", "live decisions", "guardrail"],
        ["conversion-only", "Failed", "offline-gate", "0", ""],
        ["constrained", "Promoted", "— (promoted)", "2480", ""],
        ["drift", "RolledBack", "step-3", "412", "margin-floor"],
    ]


def test_summary_table_gives_rewards_posted_joined_and_lost_with_their_split_per_variant(rendered: Any) -> None:
    page, _, _ = rendered
    assert [row[5:] for row in page.tables[0]] == [
        ["rewards posted", "rewards joined", "rewards lost"],
        ["140 (stable 140)", "140 (stable 140)", "0 (stable 0)"],
        ["4100 (candidate 2300, stable 1800)", "4100 (candidate 2300, stable 1800)", "0 (candidate 0, stable 0)"],
        ["1300 (candidate 400, stable 900)", "1297 (candidate 397, stable 900)", "3 (candidate 3, stable 0)"],
    ]


def test_reward_hacker_explained_as_stopped_by_the_gate_with_the_budget_it_broke(rendered: Any) -> None:
    _, text, _ = rendered
    assert ("conversion-only was stopped by the offline gate before serving any customer: its 95 % upper bound "
            "of margin_violation, 0.31, exceeds the budget 0.05 (estimate 0.27; fallback 0.02; snips).") in text


def test_drift_explained_as_rolled_back_by_the_breaching_guardrail(rendered: Any) -> None:
    _, text, _ = rendered
    assert ("drift was rolled back at step 3 (20 %) at t = 19 s after guardrail margin-floor measured 0.29 twice "
            "against '< 0.05'; it had served 412 customers.") in text


def test_honest_candidate_explained_as_promoted_with_the_judges_interval(rendered: Any) -> None:
    _, text, _ = rendered
    assert ("constrained was promoted at t = 34 s after passing the offline gate, the shadow and 3 canary steps "
            "(20 %, 50 %, 80 %); the judge's final interval [-0.018, 0.026] (estimate 0.004) decided "
            "NoWorseThanMargin; it served 2480 customers.") in text


def test_offline_gate_shows_each_criterion_with_its_bound_and_budget(rendered: Any) -> None:
    page, text, _ = rendered
    hacker = _section(text, "conversion-only")
    assert "Verdict Failed: cost:margin_violation (snips): 95% upper bound 0.31" in hacker
    rows = [r for t in page.tables for r in t]
    assert ["snips", "0.26", "[0.24, 0.28]", "0.23", "0.189", "0.21", "pass"] in rows  # reward: lower bound vs required
    assert ["margin_violation", "snips", "0.27", "0.31", "0.05", "0.02", "fail"] in rows  # cost: upper bound vs budget
    assert ["margin_violation", "dr", "0.26", "0.3", "0.05", "0.02", "fail"] in rows


def test_breaching_guardrail_named_with_threshold_and_breach_time(rendered: Any) -> None:
    page, _, _ = rendered
    rows = [r for t in page.tables for r in t]
    assert ["margin-floor", "live", "< 0.05", "3", "2", "0.29 Fail", "breached at t = 18 s (0.29)"] in rows
    assert ["margin-floor", "shadow", "< 0.05", "2", "0", "0.02 Pass", ""] in rows
    assert ["conversion", "live", "> 0.9", "3", "0", "1.01 Pass", ""] in rows


def test_rollback_and_promotion_marked_on_the_weight_timeline(rendered: Any) -> None:
    _, text, _ = rendered
    assert "Rolled back at t = 19 s." in _section(text, "drift")
    assert "Promoted at t = 34 s." in _section(text, "constrained")
    assert "Rolled back at" not in _section(text, "conversion-only")


def test_shadow_analysis_and_judge_verdict_shown(rendered: Any) -> None:
    page, text, _ = rendered
    assert "The shadow passed." in _section(text, "drift")
    assert "No shadow analysis recorded." in _section(text, "conversion-only")
    rows = [r for t in page.tables for r in t]
    assert ["margin-floor", "< 0.05", "0.02", "Pass"] in rows
    assert ["sequential", "0.004", "-0.018", "0.026", "NoWorseThanMargin", "no worse than 10 % of the stable mean"] \
        in rows


def test_times_are_relative_to_each_rollouts_start(rendered: Any) -> None:
    _, text, _ = rendered
    assert str(int(T0))[:5] not in text  # no epoch seconds anywhere
    dates = re.findall(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}", text)
    assert dates == ["2025-12-06 05:46", "2025-12-06 05:48", "2025-12-06 05:50"]  # one "Started at" per rollout
    assert text.count("Started at ") == 3
    assert "t = 15 s" in _section(text, "drift")  # the GuardrailFailed Event, 15 s after the drift rollout started


def test_every_chart_renders_as_an_image(rendered: Any) -> None:
    page, _, _ = rendered
    images = json.loads(page.body["data-images"] or "[]")
    assert [alt for alt, _, _ in images] == [
        "weight chart", "offline gate chart", "traffic chart",  # the gate-stopped hacker: no guardrails, no judge
        *["weight chart", "guardrails chart", "offline gate chart", "judge chart", "traffic chart"] * 2]
    assert all(width > 200 and height > 100 for _, width, height in images), images


def test_screenshot_shows_the_charts(rendered: Any) -> None:
    _, _, tmp = rendered
    shot = tmp / "shot.png"
    _chromium(tmp, f"--screenshot={shot}", "--window-size=1100,2200", (tmp / "report.html").as_uri())
    pixels = (image.imread(shot)[..., :3] * 255).astype(int)
    blue = np.abs(pixels - np.array([31, 119, 180])).max(axis=-1) < 25  # the fallback's line: only charts use blue
    assert blue.sum() > 100
    assert pixels.std() > 20  # not a blank page


@pytest.mark.parametrize(("text", "parsed"), [
    ("< 0.05", ("<", 0.05)), (">= 0.9", (">=", 0.9)), (" > .5 ", (">", 0.5)), ("!= 1e-3", ("!=", 0.001)),
    ("about 3", None), (None, None),
])
def test_guardrail_conditions_parse_into_threshold_lines(text: str | None, parsed: tuple[str, float] | None) -> None:
    assert charts.condition(text) == parsed


def test_old_report_without_the_new_fields_still_renders(tmp_path: Path) -> None:
    old = _drift(T0)
    for key in ("started_at", "stopped_at", "candidate_live_decisions", "analyses", "judgeSeries", "shadowAnalysis",
                "rewards_posted", "rewards_accepted", "rewards_joined", "rewards_lost", "rewards_by_variant"):
        del old[key]
    old["offlineEvaluation"] = {k: v for k, v in old["offlineEvaluation"].items() if k != "constraints"}
    gate_only = {"candidate": "gated", "rollout": "pricing-gated", "outcome": "Failed", "message": "refused",
                 "offlineEvaluation": {"phase": "Refused", "message": "ESS 12 below 50"}, "timeline": [],
                 "history": [], "trafficSeries": [], "trafficWhileLive": {}}
    page, _ = _render({"scenarios": [old, gate_only]}, tmp_path)
    text = "".join(page.text)
    assert page.tables[0][1:] == [["drift", "RolledBack", "—", "n/a", "margin-floor", "n/a", "n/a", "n/a"],
                                  ["gated", "Failed", "offline-gate", "n/a", "", "n/a", "n/a", "n/a"]]
    assert ("drift was rolled back at 20 % at t = 19 s after guardrail margin-floor measured 0.29 with 2 failures in a "
            "row; it had served 412 customers.") in text
    assert "gated was stopped by the offline gate before serving any customer: the gate refused to judge it: " \
           "ESS 12 below 50." in text
    assert "No shadow analysis recorded." in text
    assert ["margin-floor", "0.29", "Fail", "2"] in page.tables[1]
    assert all(width > 0 for _, width, _ in json.loads(page.body["data-images"] or "[]"))


def _shadow_stopped(summary: bool) -> dict[str, Any]:
    s = _drift(T0) | {"stopped_at": "shadow", "candidate_live_decisions": 0, "guardrail": None,
                      "history": [{"time": _iso(T0 + 9), "phase": "RolledBack", "reason": "ShadowFailed"}]}
    s["analyses"] = _analyses(T0, [3, 6], [], {3: 0.2, 6: 0.3})
    s["shadowAnalysis"] = {"passed": False, "guardrails": [
        {"name": "margin-floor", "value": 0.3, "verdict": "Fail", "condition": "< 0.05"},
        {"name": "conversion", "value": 1.01, "verdict": "Pass", "condition": "> 0.9"}]} if summary else None
    return s


@pytest.mark.parametrize("summary", [True, False], ids=["shadow-analysis", "judged-series-only"])
def test_shadow_stop_explained_by_the_failing_shadow_guardrail(summary: bool) -> None:
    assert report.explain(_shadow_stopped(summary), [], T0) == (
        "drift was stopped in shadow at t = 9 s before serving any customer: shadow guardrail margin-floor measured "
        "0.3 against '< 0.05'.")


def test_rollback_by_the_judge_explained_with_its_interval() -> None:
    s = _drift(T0) | {"guardrail": "judge", "analyses": [], "judge": {
        "kind": "sequential", "estimate": -0.04, "lower": -0.07, "upper": -0.01, "decision": "Harm"}}
    assert report.explain(s, _events("pricing-drift", T0, [(19, "RolledBack", "rolled back")]), T0) == (
        "drift was rolled back at step 3 (20 %) at t = 19 s after the judge decided Harm (estimate -0.04, interval "
        "[-0.07, -0.01]); it had served 412 customers.")


def test_gate_failed_on_the_reward_explained_with_the_lower_bound() -> None:
    s = _hacker(T0)
    s["offlineEvaluation"]["constraints"] = []
    s["offlineEvaluation"]["estimates"][0] |= {"value": 0.2, "lowerBound": 0.17, "verdict": "fail"}
    assert report.explain(s, [], T0) == (
        "conversion-only was stopped by the offline gate before serving any customer: its lower bound of the reward "
        "by snips, 0.17, is below the required 0.189 (estimate 0.2; fallback 0.21).")
