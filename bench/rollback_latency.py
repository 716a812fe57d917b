"""Rollback latency: first breaching sample queryable in Prometheus -> candidate weight 0 in the HTTPRoute.

Runs the real operator process against a real control plane (kube-apiserver, etcd, controllers
and a kwok node built from Go modules; `--api emulator` for the kmock emulator of earlier runs)
and a real Prometheus scraping an exporter every 100 ms. For each trial a rollout is held at weight 30
(an indefinite pause), the guardrail metric is flipped to a breaching value, and two pollers
timestamp (a) the first instant Prometheus answers the breaching value to the guardrail's
own query and (b) the first instant the stored HTTPRoute gives the candidate weight 0.
The target is one analysis interval + 1 s; results are written as a ratio to that budget.

Usage: .venv/bin/python bench/rollback_latency.py [--trials 5] [--intervals 2s 5s] [--api real|emulator]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rollout_operator import api, kube  # noqa: E402
from rollout_operator.resources import httproute  # noqa: E402

from tests.support.cluster import ClusterAPI, install_crds  # noqa: E402
from tests.support.kube import FakeDeploymentController, KubeAPI, policy_rollout_manifest  # noqa: E402
from tests.support.operator_process import OperatorProcess  # noqa: E402
from tests.support.prometheus import Exporter, PrometheusServer  # noqa: E402

METRIC = "bench_error_ratio"
RESULTS = ROOT / "bench" / "results" / "rollback_latency.json"
README = ROOT / "bench" / "README.md"


def _poll(predicate, timeout: float, step: float = 0.01) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(step)
    raise TimeoutError(f"condition not met within {timeout}s")


@contextlib.contextmanager
def kubernetes_api(kind: str, workdir: Path):  # type: ignore[no-untyped-def]
    """The API the operator talks to: a real control plane, or the emulator with its fake controller."""
    if kind == "real":
        from rollout_operator.cluster.control_plane import ControlPlane

        plane = ControlPlane(workdir / "control-plane").start(lambda m: print(f"[control plane] {m}", flush=True))
        try:
            cluster = ClusterAPI(plane)
            install_crds(cluster.client)
            yield cluster
            cluster.close()
        finally:
            plane.stop()
        return
    kube_api = KubeAPI(workdir).start()
    controller = FakeDeploymentController(kube_api).start()
    try:
        yield kube_api
    finally:
        controller.stop()
        kube_api.stop()


def trial(kube_api: KubeAPI | ClusterAPI, client: kube.Client, exporter: Exporter, prom: PrometheusServer,
          name: str, interval: str) -> dict[str, float]:
    exporter.set(METRIC, 0.0, rollout=name)
    prom.wait_for(f'{METRIC}{{rollout="{name}"}}', lambda v: v == 0.0, timeout=30)
    manifest = policy_rollout_manifest(name=name, steps=[{"setWeight": 30}, {"pause": {}}], analysis={
        "interval": interval,
        "guardrails": [{"name": "errors", "query": f'max({METRIC}{{rollout="{{{{ rollout }}}}"}})',
                        "condition": "< 0.5", "failureLimit": 1}],
    })
    client.create(manifest)

    def status() -> dict:
        return client.get(api.API_VERSION, api.KIND, name, "default").get("status") or {}

    _poll(lambda: status().get("phase") == "Paused" and status().get("canaryWeight") == 30, 60, 0.05)
    rollout = api.PolicyRollout.model_validate(client.get(api.API_VERSION, api.KIND, name, "default"))
    time.sleep(0.5)  # a moment into the step, not aligned with the analysis clock
    exporter.set(METRIC, 1.0, rollout=name)
    query = f'max({METRIC}{{rollout="{name}"}})'
    t_queryable = _poll(lambda: prom.value(query) == 1.0, 30)

    def weight_zero() -> bool:
        route = kube_api.get("httproutes", "default", name)
        weights = httproute.weights_of(route, rollout) if route else None
        return weights is not None and weights.candidate == 0

    t_zero = _poll(weight_zero, 60)
    client.delete(api.API_VERSION, api.KIND, name, "default")  # its daemon stops; the next trial runs alone
    budget = api.parse_duration(interval).total_seconds() + 1.0
    latency = t_zero - t_queryable
    return {"latency_s": latency, "budget_s": budget, "ratio_to_budget": latency / budget}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--intervals", nargs="+", default=["2s", "5s"])
    parser.add_argument("--tick", type=float, default=1.0, help="operator --tick (its default is 1 s)")
    parser.add_argument("--api", choices=["real", "emulator"], default="real",
                        help="a real control plane (default) or the kmock emulator")
    args = parser.parse_args()

    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, kubernetes_api(args.api, Path(tmp)) as kube_api:
        exporter = Exporter()
        prom = PrometheusServer([exporter.target], scrape_interval="100ms").start()
        operator = OperatorProcess(kube_api.kubeconfig_path, prom.url, Path(tmp) / "operator.log",
                                   tick=args.tick).start()
        client = kube.Client.from_kubeconfig(kube_api.kubeconfig_path)
        try:
            for interval in args.intervals:
                results[interval] = []
                for i in range(args.trials):
                    outcome = trial(kube_api, client, exporter, prom, f"bench-{interval}-{i}", interval)
                    results[interval].append(outcome)
                    print(f"interval {interval} trial {i + 1}/{args.trials}: {outcome['latency_s']:.2f} s "
                          f"(budget {outcome['budget_s']:.1f} s)", flush=True)
        finally:
            operator.stop()
            client.close()
            prom.close()
            exporter.close()

    summary = {
        interval: {
            "trials": len(rows),
            "median_s": statistics.median(r["latency_s"] for r in rows),
            "max_s": max(r["latency_s"] for r in rows),
            "budget_s": rows[0]["budget_s"],
            "max_ratio_to_budget": max(r["ratio_to_budget"] for r in rows),
        }
        for interval, rows in results.items()
    }
    when = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"date": when, "machine": platform.processor() or platform.machine(),
                                   "api": args.api, "operator_tick_s": args.tick, "summary": summary,
                                   "trials": results},
                                  indent=2) + "\n")
    rows = "\n".join(
        f"| {iv} | {s['trials']} | {s['median_s']:.2f} | {s['max_s']:.2f} | {s['budget_s']:.1f} | "
        f"{s['max_ratio_to_budget']:.2f} |" for iv, s in summary.items()
    )
    section = (
        "<!-- rollback-latency:begin -->\n## Rollback latency (control plane)\n\n"
        f"{when}; command: `.venv/bin/python bench/rollback_latency.py --trials {args.trials} --intervals "
        f"{' '.join(args.intervals)} --api {args.api}` (raw: `bench/results/rollback_latency.json`).\n\n"
        "Time from the first breaching sample being queryable in Prometheus (the guardrail's own query answers "
        "the breaching value) to the candidate's weight being 0 in the HTTPRoute stored in the API. Real "
        f"operator process (tick {args.tick} s), "
        + ("a real kube-apiserver with etcd, controllers and a kwok node" if args.api == "real"
           else "the Kubernetes emulator over HTTP")
        + ", real Prometheus scraping every "
        "100 ms. Target: one analysis interval + 1 s; the ratio column is latency / target (≤ 1 meets it).\n\n"
        "| analysis interval | trials | median s | max s | target s | max ratio to target |\n"
        "|---|---|---|---|---|---|\n" + rows + "\n<!-- rollback-latency:end -->\n"
    )
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    start, end = "<!-- rollback-latency:begin -->", "<!-- rollback-latency:end -->\n"
    if start in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    README.write_text(text)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
