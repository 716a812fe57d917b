"""Operator at scale: memory, CPU, API calls, timer lag and a rollback wave with N PolicyRollouts.

For each N in --sizes, a fresh real control plane (kube-apiserver, etcd, controllers, kwok nodes
built from Go modules) and a real Prometheus scraping an exporter every second. The operator runs
as a process, as the Helm chart runs it: the chart's ServiceAccount, RBAC and peering, tick 1 s.
N Gateway API rollouts are created (40 % progressing through setWeight steps under a 1-minute
analysis, 20 % paused indefinitely, 20 % awaiting approval, 20 % promoted at once) plus 10
"breach" rollouts held at weight 30 in a namespace of their own. Once every rollout is in its
intended phase, a measurement window samples the operator's VmRSS and CPU, counts its API
requests from the API server's side (the audit log, filtered to the chart ServiceAccount), and
reads timer lag from the operator's `policyrollouts_workqueue_wait_seconds` histogram (null if
the operator has none). Then the 10 breach guardrails flip together and each rollback's latency
is timed: breaching value queryable in Prometheus -> candidate weight 0 in the stored HTTPRoute.

`--baseline-rev REV` also runs the operator of an older commit (a `git worktree`, with its own
CRD and chart RBAC) on `--baseline-sizes`; that operator polls every rollout every tick, so only
small N are feasible for it.

Usage: .venv/bin/python bench/operator_scale.py [--sizes 100 500 2000] [--window 180]
           [--baseline-rev 4ef72dd --baseline-sizes 100] [--namespaces 1] [--no-readme]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import math
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from rollout_operator import api, kube  # noqa: E402
from rollout_operator.cluster.control_plane import ControlPlane  # noqa: E402
from rollout_operator.resources import httproute  # noqa: E402

from tests.support import helm_chart  # noqa: E402
from tests.support.cluster import ChartRBAC, audit_events, install_crds, service_account_kubeconfig  # noqa: E402
from tests.support.kube import policy_rollout_manifest  # noqa: E402
from tests.support.operator_process import OperatorProcess  # noqa: E402
from tests.support.prometheus import Exporter, PrometheusServer, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "operator_scale.json"
README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- operator-scale:begin -->", "<!-- operator-scale:end -->"
OK_METRIC, BREACH_METRIC = "bench_scale_errors", "bench_scale_breach"
INTERVAL, INTERVAL_S = "1m", 60.0
BREACHES, BREACH_NS = 10, "scale-breach"
LAG_METRIC = "policyrollouts_workqueue_wait_seconds"
# Targets at 2,000 rollouts (the rollback one holds at any N).
TARGETS = {"rss_mb": 500.0, "timer_lag_p99_s": 2.0, "rollback_latency_p99_s": INTERVAL_S + 2.0,
           "api_calls_per_rollout_s": 0.1}
# Mix of the N rollouts: group -> (share, phase it settles in).
GROUPS = {"progressing": (0.4, "Progressing"), "paused": (0.2, "Paused"), "approval": (0.2, "AwaitingApproval"),
          "finished": (0.2, "Promoted")}


def say(label: str, message: str) -> None:
    print(f"[{label}] {message}", flush=True)


# ------------------------------------------------------------------------------------ manifests


def manifest(name: str, namespace: str, group: str) -> dict[str, Any]:
    """A Gateway API rollout of `group`; one replica per variant."""
    query = f'max({BREACH_METRIC}{{rollout="{{{{ rollout }}}}"}})' if group == "breach" else f"max({OK_METRIC})"
    analysis = {"interval": INTERVAL, "guardrails": [{"name": "errors", "query": query, "condition": "< 0.5"}]}
    steps: list[dict[str, Any]] = {
        # A new weight after each passing analysis (every minute or two): Progressing for the whole run.
        "progressing": [{"setWeight": w} for w in range(2, 100, 2)] + [{"setWeight": 100}],
        "paused": [{"setWeight": 20}, {"pause": {}}],
        "approval": [{"setWeight": 20}, {"approval": {}}],
        "finished": [{"setWeight": 100}],
        "breach": [{"setWeight": 30}, {"pause": {}}],
    }[group]
    body = policy_rollout_manifest(name=name, namespace=namespace, steps=steps,
                                   **({} if group == "finished" else {"analysis": analysis}))
    body["spec"]["policy"]["replicas"] = body["spec"]["fallback"]["replicas"] = 1
    body["spec"]["traffic"]["gatewayAPI"]["hostnames"] = [f"{name}.{namespace}.example.com"]
    body["metadata"]["labels"] = {"bench-group": group}
    return body


def plan(n: int, namespaces: int) -> list[tuple[str, str, str]]:
    """(name, namespace, group) of every rollout: the N of the mix, then the breach ones."""
    groups = [g for g, (share, _) in GROUPS.items() for _ in range(round(n * share))]
    groups = (groups + ["progressing"] * n)[:n]
    rollouts = [(f"r-{i:05d}", f"scale-{i % namespaces}", g) for i, g in enumerate(groups)]
    return rollouts + [(f"breach-{i:02d}", BREACH_NS, "breach") for i in range(BREACHES)]


# ------------------------------------------------------------------------------ HTTP and metrics


def admin_http(plane: ControlPlane) -> httpx.Client:
    """An HTTP client to the API server with the admin's client certificate (fast raw LISTs, /metrics)."""
    config = yaml.safe_load(plane.kubeconfig.read_text())
    user = config["users"][0]["user"]
    context = ssl.create_default_context(cafile=config["clusters"][0]["cluster"]["certificate-authority"])
    context.load_cert_chain(user["client-certificate"], user["client-key"])
    return httpx.Client(base_url=plane.server, verify=context, timeout=30.0)


def items(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    response = http.get(path)
    response.raise_for_status()
    return list(response.json().get("items") or [])


def scrape(http: httpx.Client, url: str, prefix: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of `url` whose name starts with `prefix`: (name, labels) -> value."""
    text = "\n".join(line for line in http.get(url).text.splitlines() if line.startswith(prefix)) + "\n"
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets; None if empty."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower  # the highest finite bound, as Prometheus answers
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = le, count
    return lower


def timer_lag(before: dict[Any, float], after: dict[Any, float]) -> dict[str, dict[str, float | None]] | None:
    """p50/p99 of the wait histogram over the window, all priorities and per priority; None if absent."""
    deltas: dict[str, dict[float, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    for (name, labels), value in after.items():
        if name != f"{LAG_METRIC}_bucket":
            continue
        label = dict(labels)
        delta = value - before.get((name, labels), 0.0)
        for key in ("all", label.get("priority", "")):
            deltas[key][float(label["le"])] += delta
    if not deltas:
        return None
    return {key: {"count": max(b.values()), "p50_s": histogram_quantile(0.5, list(b.items())),
                  "p99_s": histogram_quantile(0.99, list(b.items()))} for key, b in sorted(deltas.items())}


# ------------------------------------------------------------------------------- operator process


def proc_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory field of /proc/PID/status (VmRSS: now, VmHWM: the peak since start) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached `git worktree` of `rev`, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="operator-scale-baseline-"))
    added = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                           capture_output=True, text=True)
    if added.returncode != 0:
        raise SystemExit(f"git worktree add {rev} failed: {added.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False,
                       capture_output=True)


class ChartOperator(OperatorProcess):
    """`OperatorProcess` with the chart's flags: no --verbose (a debug line per request costs the CPU measured
    here), and optionally the `rollout_operator` of another tree, ahead of the editable install."""

    def __init__(self, *args: Any, tree: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tree = tree

    def start(self) -> ChartOperator:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KUBECONFIG", None)
        if self.tree is not None:
            env["PYTHONPATH"] = f"{self.tree / 'operator'}{os.pathsep}{self.tree}"
        command = [sys.executable, "-m", "rollout_operator.cli.main", "operator", "--kubeconfig", str(self.kubeconfig),
                   "--prometheus-url", self.prometheus_url, "--tick", str(self.tick), *self.extra_args]
        with self.log_path.open("ab") as log:  # `python -m` puts the cwd first on sys.path: the tree's packages
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.tree or ROOT, start_new_session=True)
        self.starts += 1
        return self


@contextlib.contextmanager
def chart_from(tree: Path | None) -> Iterator[None]:
    """While installing the RBAC: the chart of `tree` rendered instead of ours."""
    if tree is None:
        yield
        return
    saved = helm_chart.CHART
    helm_chart.CHART = tree / "charts" / "policy-rollouts"
    helm_chart.chart.cache_clear()
    try:
        yield
    finally:
        helm_chart.CHART = saved
        helm_chart.chart.cache_clear()


# ------------------------------------------------------------------------------------ audit log


def audit_calls(path: Path, start: int, end: int, user: str, finished: set[tuple[str, str]]) -> dict[str, Any]:
    """The operator's requests between two offsets of the audit log; a watch counts once, when it starts."""
    by_verb: collections.Counter[str] = collections.Counter()
    by_resource: collections.Counter[str] = collections.Counter()
    on_finished = 0
    for event in audit_events(path, start, end):
        ref, verb, stage = event.get("objectRef"), event.get("verb"), event.get("stage")
        if not ref or event.get("user", {}).get("username") != user:
            continue
        if not (stage == "ResponseStarted" if verb == "watch" else stage == "ResponseComplete"):
            continue
        by_verb[verb] += 1
        by_resource["/".join(filter(None, (ref.get("resource"), ref.get("subresource"))))] += 1
        name, namespace = ref.get("name") or "", ref.get("namespace") or ""
        owner = name.removesuffix("-stable").removesuffix("-candidate").split(".")[0]
        on_finished += (namespace, owner) in finished
    return {"total": sum(by_verb.values()), "by_verb": dict(by_verb.most_common()),
            "by_resource": dict(by_resource.most_common()), "on_finished": on_finished}


# --------------------------------------------------------------------------------- one measurement


def run_size(n: int, args: argparse.Namespace, tree: Path | None, rev: str | None) -> dict[str, Any]:
    label = f"N={n}" + (f" baseline {rev}" if rev else "")
    rollouts = plan(n, args.namespaces)
    namespaces = sorted({ns for _, ns, _ in rollouts})
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        plane = ControlPlane(work / "control-plane")
        stack.callback(plane.stop)
        plane.start(lambda m: say(f"{label} control plane", m))
        client = kube.Client.from_kubeconfig(plane.kubeconfig)
        stack.callback(client.close)
        http = admin_http(plane)
        stack.callback(http.close)
        install_crds(client)
        if tree is not None:  # the baseline's own CRD (installed over ours)
            for crd in yaml.safe_load_all((tree / "crds" / "policyrollout.yaml").read_text()):
                if crd:
                    client.apply(crd)
        for ns in namespaces:
            client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        with chart_from(tree):
            rbac = ChartRBAC(plane, work)  # thrown away with the control plane
        kubeconfig = service_account_kubeconfig(plane, rbac.namespace, rbac.account, work / "operator.kubeconfig",
                                                expiration_s=6 * 3600)
        peering = next(o["metadata"]["name"] for o in rbac.objects if o["kind"] in ("ClusterKopfPeering",
                                                                                      "KopfPeering"))
        exporter = Exporter()
        stack.callback(exporter.close)
        exporter.set(OK_METRIC, 0.0)
        for name, _, group in rollouts:
            if group == "breach":
                exporter.set(BREACH_METRIC, 0.0, rollout=name)
        prom = PrometheusServer([exporter.target], scrape_interval="1s")
        stack.callback(prom.close)
        prom.start()
        prom.wait_for(f"max({OK_METRIC})", lambda v: v == 0.0, timeout=60)
        metrics_port = free_port()
        operator = ChartOperator(kubeconfig, prom.url, work / "operator.log", tick=args.tick, tree=tree,
                                 extra_args=("--peering", peering, "--metrics-port", str(metrics_port)))
        stack.callback(operator.stop)
        operator.start()
        assert operator.process is not None
        pid = operator.process.pid
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if http.get(metrics_url).status_code == 200:
                    break
            if not operator.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"operator metrics not served at {metrics_url}:\n{operator.log_tail()}")
            time.sleep(0.5)
        for ns in namespaces:  # pods are admitted once their namespace's default ServiceAccount exists
            while client.find("v1", "ServiceAccount", "default", ns) is None:
                time.sleep(0.2)
        say(label, f"operator pid {pid} up as {rbac.user}; creating {len(rollouts)} rollouts "
                   f"({n} + {BREACHES} breach) in {len(namespaces)} namespace(s)")

        # ---- create, then wait for the mix to settle
        started = time.monotonic()
        local = threading.local()
        clients: list[kube.Client] = []
        created = 0
        lock = threading.Lock()
        every = max(1, min(250, len(rollouts) // 4))

        def create(item: tuple[str, str, str]) -> None:
            nonlocal created
            if not hasattr(local, "client"):
                local.client = kube.Client.from_kubeconfig(plane.kubeconfig)
                with lock:
                    clients.append(local.client)
            local.client.create(manifest(*item))
            with lock:
                created += 1
                if created % every == 0 or created == len(rollouts):
                    say(label, f"created {created}/{len(rollouts)} ({time.monotonic() - started:.0f} s)")

        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(create, rollouts))
        finally:
            for c in clients:
                c.close()
        create_s = time.monotonic() - started
        intended = {(ns, name): (GROUPS[g][1] if g in GROUPS else "Paused") for name, ns, g in rollouts}
        settle_timeout = args.settle_timeout or 240 + 0.6 * len(rollouts)
        settled, last_print = False, 0.0
        while True:
            stored = [r for ns in namespaces
                      for r in items(http, f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{ns}/{api.PLURAL}")]
            phases = {(r["metadata"]["namespace"], r["metadata"]["name"]): (r.get("status") or {}) for r in stored}
            done = sum(phases.get(key, {}).get("phase") == phase for key, phase in intended.items())
            breach_ready = all(phases.get((ns, name), {}).get("canaryWeight") == 30
                               for name, ns, g in rollouts if g == "breach")
            elapsed = time.monotonic() - started
            if done == len(intended) and breach_ready:
                settled = True
                break
            if elapsed - last_print >= 15:
                last_print = elapsed
                counts = collections.Counter(s.get("phase", "-") for s in phases.values())
                say(label, f"settling: {done}/{len(intended)} in their phase after {elapsed:.0f} s "
                           f"({', '.join(f'{p} {c}' for p, c in sorted(counts.items()))})")
            if elapsed > settle_timeout:
                say(label, f"WARNING: not settled within {settle_timeout:.0f} s; measuring anyway")
                break
            if not operator.alive():
                raise RuntimeError(f"operator exited:\n{operator.log_tail()}")
            time.sleep(5)
        settle_s = time.monotonic() - started
        phase_counts = collections.Counter(s.get("phase", "-") for s in phases.values())
        say(label, f"settled={settled} in {settle_s:.0f} s (created in {create_s:.0f} s): {dict(phase_counts)}")
        finished = {(ns, name) for name, ns, g in rollouts if g == "finished"}

        # ---- the measurement window: nothing of ours calls the API server but the two /metrics scrapes
        if args.window < 2 * INTERVAL_S:
            say(label, f"note: window {args.window:.0f} s is shorter than two analysis intervals")
        lag_before = scrape(http, metrics_url, LAG_METRIC)
        api_before = scrape(http, "/metrics", "apiserver_request_total")
        audit_start = plane.audit_log.stat().st_size
        cpu_before, t0 = proc_cpu_s(pid), time.monotonic()
        rss = [proc_mb(pid)]
        while (left := args.window - (time.monotonic() - t0)) > 0:
            time.sleep(min(1.0, left))
            rss.append(proc_mb(pid))
            if len(rss) % 30 == 0:
                say(label, f"window {time.monotonic() - t0:.0f}/{args.window:.0f} s, RSS {rss[-1]:.0f} MB")
        window_s = time.monotonic() - t0
        cpu_s = proc_cpu_s(pid) - cpu_before
        audit_end = plane.audit_log.stat().st_size
        api_after = scrape(http, "/metrics", "apiserver_request_total")
        lag_after = scrape(http, metrics_url, LAG_METRIC)
        hwm = proc_mb(pid, "VmHWM")
        calls = audit_calls(plane.audit_log, audit_start, audit_end, rbac.user, finished)
        lag = timer_lag(lag_before, lag_after)
        api_delta = sum(v - api_before.get(k, 0.0) for k, v in api_after.items())
        say(label, f"window {window_s:.0f} s: RSS peak {max(rss):.0f} MB, CPU {100 * cpu_s / window_s:.1f} %, "
                   f"{calls['total']} operator calls ({calls['total'] / window_s / len(rollouts):.4f}/rollout/s), "
                   f"{calls['on_finished']} on finished rollouts, timer lag "
                   + ("n/a (no histogram)" if lag is None else f"p99 {lag['all']['p99_s']}"))

        # ---- the rollback wave
        rollback = rollback_wave(label, http, plane, prom, exporter,
                                 [name for name, _, g in rollouts if g == "breach"])
        if not operator.alive():
            say(label, "WARNING: the operator exited during the run")

    latencies = [v for v in rollback["latencies_s"].values() if v is not None]
    return {
        "operator": f"baseline {rev}" if rev else "after", "baseline": bool(rev), "rev": rev or current_rev(),
        "rollouts": n, "breach_rollouts": BREACHES, "managed_rollouts": len(rollouts), "namespaces": args.namespaces,
        "tick_s": args.tick,
        "settled": settled, "settle_s": round(settle_s, 1), "create_s": round(create_s, 1),
        "phases_at_window": dict(phase_counts), "window_s": round(window_s, 1),
        "rss_mb": round(max(rss), 1), "rss_end_mb": round(rss[-1], 1), "rss_hwm_mb": round(hwm, 1),
        "cpu_percent": round(100 * cpu_s / window_s, 1),
        "timer_lag_p50_s": lag["all"]["p50_s"] if lag else None,
        "timer_lag_p99_s": lag["all"]["p99_s"] if lag else None, "timer_lag": lag,
        "api_calls": calls["total"], "api_calls_per_rollout_s": calls["total"] / window_s / len(rollouts),
        "api_calls_by_verb": calls["by_verb"], "api_calls_by_resource": calls["by_resource"],
        "finished_rollout_calls": calls["on_finished"], "apiserver_requests_total_delta": round(api_delta),
        "rollback_latency_p50_s": float(np.percentile(latencies, 50)) if latencies else None,
        "rollback_latency_p99_s": float(np.percentile(latencies, 99)) if latencies else None,
        "rollback_latency_max_s": max(latencies) if latencies else None,
        "rollback_missed": len(rollback["latencies_s"]) - len(latencies), "rollback": rollback,
    }


def rollback_wave(label: str, http: httpx.Client, plane: ControlPlane, prom: PrometheusServer, exporter: Exporter,
                  names: list[str]) -> dict[str, Any]:
    """Flip every breach series at once; time (a) queryable in Prometheus and (b) weight 0 in the HTTPRoute."""
    models = {r["metadata"]["name"]: api.PolicyRollout.model_validate(r)
              for r in items(http, f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{BREACH_NS}/{api.PLURAL}")}
    queryable: dict[str, float] = {}
    zero: dict[str, float] = {}
    stop = threading.Event()

    def poll(step: float, check: Callable[[], None]) -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a slow or failed poll retries
                check()
            time.sleep(step)

    def check_prometheus() -> None:
        for name in names:
            if name not in queryable and prom.value(f'max({BREACH_METRIC}{{rollout="{name}"}})') == 1.0:
                queryable[name] = time.monotonic()

    routes_http = admin_http(plane)

    def check_routes() -> None:
        for route in items(routes_http, f"/apis/gateway.networking.k8s.io/v1/namespaces/{BREACH_NS}/httproutes"):
            name = route["metadata"]["name"]
            if name in models and name not in zero:
                weights = httproute.weights_of(route, models[name])
                if weights is not None and weights.candidate == 0:
                    zero[name] = time.monotonic()

    threads = [threading.Thread(target=poll, args=(0.05, check_prometheus), daemon=True),
               threading.Thread(target=poll, args=(0.1, check_routes), daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    say(label, f"rollback wave: {len(names)} guardrails breach now")
    flipped = time.monotonic()
    for name in names:
        exporter.set(BREACH_METRIC, 1.0, rollout=name)
    deadline = flipped + 3 * INTERVAL_S + 30
    while len(zero) < len(names) and time.monotonic() < deadline:
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(10)
    routes_http.close()
    latencies = {n: (zero[n] - queryable[n]) if n in zero and n in queryable else None for n in names}
    done = [v for v in latencies.values() if v is not None]
    say(label, f"rollback wave: {len(done)}/{len(names)} at weight 0; latency max "
               f"{max(done) if done else float('nan'):.1f} s")
    return {"latencies_s": latencies,
            "queryable_after_flip_s": {n: t - flipped for n, t in queryable.items()}}


def current_rev() -> str:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


# ------------------------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, target: float) -> str:
    return "n/a" if value is None else f"{value / target:.2f}"


def readme_section(document: dict[str, Any]) -> str:
    rows = document["rows"]
    after = {r["rollouts"]: r for r in rows if not r["baseline"]}
    lines = [
        BEGIN, "## Operator at scale (real control plane)", "",
        f"{document['date']} on {document['machine']}; command: `{document['command']}` "
        "(raw: `bench/results/operator_scale.json`).", "",
        "For each N, a fresh control plane (kube-apiserver, etcd, controllers, kwok nodes) and Prometheus "
        "(1 s scrape); the operator as the chart runs it (its ServiceAccount, RBAC and peering, tick 1 s). "
        "N Gateway API rollouts, one replica per variant: 40 % progressing (a setWeight step per passing "
        "1-minute analysis), 20 % paused indefinitely and 20 % awaiting approval (both analysed every minute), "
        "20 % promoted at once; plus 10 breach rollouts at weight 30. Once all are in their phase, a window "
        "measures the operator's VmRSS (peak) and CPU, its API requests as the API server's audit log records "
        "them for the chart ServiceAccount (a watch counts once; `apiserver_request_total` delta, all clients, "
        "as a cross-check; per rollout = over all N + 10 rollouts the operator manages), requests naming a finished "
        "rollout or its objects, and timer lag from the operator's "
        f"`{LAG_METRIC}` histogram (due -> worker start; n/a when the operator has none). Then the 10 breach "
        "guardrails flip together: rollback latency = breaching value queryable in Prometheus -> candidate "
        "weight 0 in the stored HTTPRoute. The breach rollouts were created together, so their analyses run in step "
        "and the wave lands at one point of their interval: each latency is mostly the wait for the next analysis "
        "(0 to 60 s), the same for all 10.", "",
        "Targets at 2,000 rollouts: RSS <= 500 MB, timer lag p99 <= 2 s, rollback latency p99 <= interval + 2 s "
        "(62 s), API calls <= 0.1 per rollout per second, no calls from finished rollouts; ratio = measured / "
        "target (<= 1 meets it). The baseline operator reads every rollout every tick (9.7 API calls per "
        "rollout per second at 10 rollouts; from about 100 it saturates a core and the rate per rollout falls), so "
        "it runs only at the small N of `--baseline-sizes`.", "",
        "Reproduce: `.venv/bin/python bench/operator_scale.py --baseline-rev 4ef72dd` (defaults: `--sizes 100 500 "
        "2000 --window 180 --baseline-sizes 100`; `--namespaces K` spreads the rollouts over K namespaces).", "",
        *([] if any(r["rollouts"] >= 2000 for r in rows) else
          ["**Trial run**: no row at 2,000 rollouts, where the targets apply; the ratios below are only "
           "indicative.", ""]),
        "| operator | rollouts | settle s | window s | RSS MB (ratio) | CPU % | timer lag p50 / p99 s (ratio) "
        "| rollback p50 / p99 s (ratio) | API calls /rollout/s (ratio) | baseline / after | finished-rollout calls "
        "| apiserver requests delta |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base_ratio, missed = "", f", {r['rollback_missed']} missed" if r["rollback_missed"] else ""
        if r["baseline"] and r["rollouts"] in after and after[r["rollouts"]]["api_calls_per_rollout_s"]:
            base_ratio = f"{r['api_calls_per_rollout_s'] / after[r['rollouts']]['api_calls_per_rollout_s']:.1f}x"
        lines.append(
            f"| {r['operator']} | {r['rollouts']:,} | {r['settle_s']:.0f}{'' if r['settled'] else ' (not settled)'} "
            f"| {r['window_s']:.0f} | {r['rss_mb']:.0f} ({ratio(r['rss_mb'], TARGETS['rss_mb'])}) "
            f"| {r['cpu_percent']:.1f} | {fmt(r['timer_lag_p50_s'], 3)} / {fmt(r['timer_lag_p99_s'], 3)} "
            f"({ratio(r['timer_lag_p99_s'], TARGETS['timer_lag_p99_s'])}) "
            f"| {fmt(r['rollback_latency_p50_s'], 1)} / {fmt(r['rollback_latency_p99_s'], 1)} "
            f"({ratio(r['rollback_latency_p99_s'], TARGETS['rollback_latency_p99_s'])}){missed} "
            f"| {r['api_calls_per_rollout_s']:.4f} ({ratio(r['api_calls_per_rollout_s'], TARGETS['api_calls_per_rollout_s'])}) "  # noqa: E501
            f"| {base_ratio} | {r['finished_rollout_calls']:,} | {r['apiserver_requests_total_delta']:,} |")
    lines += ["", "API calls in the window by verb:", ""]
    lines += [f"- {r['operator']}, {r['rollouts']:,} rollouts: "
              + ", ".join(f"{v} {c:,}" for v, c in r["api_calls_by_verb"].items()) for r in rows]
    return "\n".join(lines) + "\n" + END + "\n"


def write_readme(section: str) -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        rest = text[text.index(END) + len(END):].lstrip("\n")
        text = text[: text.index(BEGIN)] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    README.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 500, 2000],
                        help="rollout counts for the operator of this working tree (none: baseline only)")
    parser.add_argument("--window", type=float, default=180.0, help="measurement window, seconds")
    parser.add_argument("--baseline-rev", default=None, help="also run this commit's operator (git worktree)")
    parser.add_argument("--baseline-sizes", type=int, nargs="+", default=[100])
    parser.add_argument("--namespaces", type=int, default=1, help="spread the N rollouts over K namespaces")
    parser.add_argument("--tick", type=float, default=1.0, help="operator --tick (the chart's tickSeconds: 1)")
    parser.add_argument("--settle-timeout", type=float, default=None, help="default 240 s + 0.6 s per rollout")
    parser.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone (trial runs)")
    args = parser.parse_args()

    rows = []
    with contextlib.ExitStack() as stack:
        tree = stack.enter_context(worktree(args.baseline_rev)) if args.baseline_rev else None
        if tree is not None:
            env = {**os.environ, "PYTHONPATH": f"{tree / 'operator'}{os.pathsep}{tree}"}
            where = subprocess.run([sys.executable, "-c", "import rollout_operator; print(rollout_operator.__file__)"],
                                   env=env, cwd=tree, capture_output=True, text=True, check=True).stdout.strip()
            assert where.startswith(str(tree)), f"baseline imports {where}, not the worktree's operator"
            rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, check=True).stdout.strip()
            print(f"[baseline] {args.baseline_rev} = {rev}: operator from {where}; sizes {args.baseline_sizes} only "
                  "(it reads every rollout every tick, ~10 API calls per rollout per second: larger N is not "
                  "feasible)", flush=True)
            for n in args.baseline_sizes:
                rows.append(run_size(n, args, tree, rev))
        for n in args.sizes:
            rows.append(run_size(n, args, None, None))

    document = {
        "date": datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join([".venv/bin/python", "bench/operator_scale.py", *sys.argv[1:]]),
        "targets": TARGETS, "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    section = readme_section(document)
    if not args.no_readme:
        write_readme(section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
