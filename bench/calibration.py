"""Calibration benchmark (issue #20): do the offline gate's bounds and the sequential judge mean what they say?

Usage: .venv/bin/python bench/calibration.py [--quick] [--out bench/results/calibration.json] [--no-readme]

Reruns, against known ground truth and through the library's own code:

* coverage of each lower bound the gate offers on heavy-weight DR terms, at stated 95 % (`calibration_ope`);
* coverage and width of SNIPS intervals, fixed normaliser (the CLI before #20) against the ratio bootstrap;
* the gate's verdict on a candidate that lives where the logger (almost) never goes, before and after #20;
* false rollbacks of the sequential judge per reward stream (negative, zero-mean, a restart midway, sticky
  autocorrelation phi = 0.5 and 0.9) for the pre-#20 reset rule, per-interval looks and batch means
  (`calibration_judges`), and how many intervals batching costs to catch 2 % and 5 % regressions.

Writes bench/results/calibration.json and the "Calibration" section of bench/README.md (between its markers).
`--quick` runs each simulation small (about 20 s): the shape of the result, not its precision.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "operator")) if p not in sys.path]
sys.path.append(str(ROOT / "bench"))  # last: bench/ holds scripts (ope.py, router.py) that must shadow nothing

import calibration_judges as judges  # noqa: E402
import calibration_ope as ope  # noqa: E402

BEGIN, END = "<!-- calibration:begin -->", "<!-- calibration:end -->"
SEED = 20261206
FULL = {"bound_runs": 2000, "boot_runs": 500, "resamples": 1000, "snips_runs": 500, "aa_runs": 2000,
        "detect_runs": 300}
QUICK = {"bound_runs": 150, "boot_runs": 30, "resamples": 200, "snips_runs": 40, "aa_runs": 60, "detect_runs": 20}


def run(sizes: dict[str, int], seed: int = SEED) -> dict[str, object]:
    started = time.perf_counter()
    result = {
        "sizes": sizes,
        "seed": seed,
        "bounds": ope.bound_coverage(sizes["bound_runs"], sizes["boot_runs"], sizes["resamples"], seed),
        "snips": ope.snips_intervals(sizes["snips_runs"], sizes["resamples"], seed + 1),
        "near_deficient": ope.near_deficient_verdicts(seed + 2),
        "judge_false_rollbacks": judges.false_rollbacks(sizes["aa_runs"], seed + 3),
        "judge_detection": judges.detection(sizes["detect_runs"], seed + 4),
        "judge_setup": {"n_candidate": judges.N_C, "n_stable": judges.N_S, "horizon": judges.HORIZON,
                        "alpha": 0.05, "min_detectable_effect": 0.05},
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def table(res: dict) -> str:
    """The result as Markdown tables (what bench/README.md shows)."""
    lines = ["| heavy-weight DR (median skewness "
             f"{res['bounds'][0]['median_skewness']:.0f}), stated 95 % | runs | coverage | mean distance below truth |",
             "| --- | ---: | ---: | ---: |"]
    for r in res["bounds"]:
        lines.append(f"| `{r['bound']}` | {r['runs']} | {_pct(r['coverage'])} (± {_pct(r['se'])}) | "
                     f"{r['mean_gap_below_truth']:.3f} |")
    lines += ["", "| SNIPS interval, stated 95 % | runs | coverage | mean width |", "| --- | ---: | ---: | ---: |"]
    for r in res["snips"]:
        lines.append(f"| {r['interval']} | {r['runs']} | {_pct(r['coverage'])} (± {_pct(r['se'])}) | "
                     f"{r['mean_width']:.4f} |")
    nd = res["near_deficient"]
    lines += ["", f"Near-deficient logger (probability 1e-10 on the action the candidate takes 94 % of the time; true "
              f"value {nd['truth']:.3f}, baseline {nd['baseline']:.3f}, DR estimate {nd['estimate']:.3f}, ESS "
              f"{nd['ess']:.0f}, mean weight {nd['mean_weight']:.3f}): before #20 **{nd['before']}**; now "
              f"**{nd['after']}** ({nd['after_reason']}); with the support floor off, the self-normalisation "
              f"check alone: **{nd['weight_only']}**.", ""]
    names = list(dict.fromkeys(r["judge"] for r in res["judge_false_rollbacks"]))
    lines += ["| A/A false rollbacks, alpha 5 % | " + " | ".join(names) + " |",
              "| --- |" + " ---: |" * len(names)]
    for stream in dict.fromkeys(r["stream"] for r in res["judge_false_rollbacks"]):
        cells = {r["judge"]: r for r in res["judge_false_rollbacks"] if r["stream"] == stream}
        lines.append(f"| {stream} | " + " | ".join(_pct(cells[n]["false_rollback_rate"]) for n in names) + " |")
    lines += ["", "| regression caught within 150 intervals | judge | 2 %: caught, median intervals | "
              "5 %: caught, median intervals |", "| --- | --- | ---: | ---: |"]
    det = res["judge_detection"]
    for stream in dict.fromkeys(r["stream"] for r in det):
        for judge in dict.fromkeys(r["judge"] for r in det):
            cells = {r["gap"]: r for r in det if r["stream"] == stream and r["judge"] == judge}
            parts = [f"{_pct(c['detect_rate'])}, {c['median_intervals'] if c['median_intervals'] else '-'}"
                     for c in cells.values()]
            lines.append(f"| {stream} | {judge} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def readme_section(res: dict, command: str) -> str:
    when = res.get("finished", "")
    runs = res["sizes"]["aa_runs"]
    return "\n".join([
        "## Calibration",
        "",
        "`bench/calibration.py` reruns issue #20's simulations against known ground truth through the library's",
        "own code: each bound's coverage on heavy-weight DR terms, SNIPS intervals, the gate on a near-deficient",
        f"logger, and the sequential judge's false rollbacks ({runs} A/A rollouts of 150 intervals per cell, 200",
        "candidate and 1,800 stable rewards of sd 1 per interval) and detection speed per reward stream. Sticky",
        "streams give each variant's interval means their own AR(1) noise (all of it persistent: the worst case).",
        "",
        f"Reproduce: `{command}` ({res['seconds']:.0f} s; `--quick` in about 20 s). Run {when} on {res['machine']}.",
        "",
        table(res),
        "",
        *notes(res),
    ])


def notes(res: dict) -> list[str]:
    """How to read the tables, with the numbers of this run."""
    bounds = {r["bound"]: r for r in res["bounds"]}
    snips = res["snips"]
    aa = {(r["stream"], r["judge"]): r["false_rollback_rate"] for r in res["judge_false_rollbacks"]}
    worst_batched = max(v for (_, judge), v in aa.items() if judge.startswith("batch means"))
    width = snips[0]["mean_width"] / snips[1]["mean_width"]
    lines = [
        f"* The gate's default bound, `bernstein`, covers {_pct(bounds['bernstein']['coverage'])} at stated 95 % on",
        "  the heavy-weight case (its range comes from the largest weight the two policies allow and the reward",
        f"  range, so it is loose: {bounds['bernstein']['mean_gap_below_truth']:.3f} below the truth on average);",
        f"  `student_t` covers {_pct(bounds['student_t']['coverage'])}"
        + (f", `bootstrap` {_pct(bounds['bootstrap']['coverage'])}" if "bootstrap" in bounds else "")
        + (f", `bootstrap_t` {_pct(bounds['bootstrap_t']['coverage'])}" if "bootstrap_t" in bounds else "")
        + ".",
        f"* SNIPS: the fixed normaliser covers {_pct(snips[0]['coverage'])} with intervals {width:.2f}x as wide as",
        f"  the ratio bootstrap's, which covers {_pct(snips[1]['coverage'])}.",
        f"* Batch means keep every stream at or below alpha (worst {_pct(worst_batched)}). The per-interval judge's",
        "  'catches' on sticky streams are mostly the same false alarms as in the A/A table, not speed.",
    ]
    return lines


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"


def write_readme(path: Path, section: str) -> None:
    block = f"{BEGIN}\n{section}\n{END}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        path.write_text(head + block + ("\n" + tail if tail else ""))
    else:
        path.write_text(text.rstrip("\n") + "\n\n" + block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small simulations (about 20 s), for tests")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration.json")
    parser.add_argument("--readme", type=Path, default=ROOT / "bench" / "README.md")
    parser.add_argument("--no-readme", action="store_true", help="only print the table and write the JSON")
    parser.add_argument("--render", type=Path, default=None, help="write the README section of this JSON; no run")
    opts = parser.parse_args(argv)
    if opts.render is not None:
        res = json.loads(opts.render.read_text())
    else:
        res = run(QUICK if opts.quick else FULL)
        res["finished"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        res["machine"] = machine()
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    if not opts.no_readme:
        command = "python bench/calibration.py" + (" --quick" if res["sizes"] == QUICK else "")
        write_readme(opts.readme, readme_section(res, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
