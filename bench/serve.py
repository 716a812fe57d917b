"""Serving benchmark: ``policy-server serve`` vs TorchServe vs an in-process forward pass, same model, one run.

Why one run: this machine is shared, so absolute numbers drift from minute to minute; the ratios between
servers measured back to back in the same run are what the comparison rests on.

* model: the example MLP 8 -> 64 -> 64 -> 4 (TorchScript, softmax exploration, an action mask in the shield).
* (a) ``policy-server serve`` with decision logging, metrics (scraped every second) and the shield on (the
  artifact's action mask and fallback, a 100 ms latency budget), at each ``--workers`` count (default 2, then
  1 for reference: ``serve --workers N``, N processes on one SO_REUSEPORT port);
* (b) TorchServe with the `policy_server.torchserve` handler, every configuration in ``--ts-configs``
  (workers x batch size, batch delay ``--ts-delay-ms``), the best per client count is reported;
* (c) the floor: ``Policy.decide`` (and the bare module) in a loop in this process, batch 1.

Load: ``wrk`` (Debian package) with ``bench/wrk_act.lua`` at each of ``--connections``, a warm-up run before
each measured one. Memory: VmRSS from /proc, summed over the process tree (TorchServe = launcher + JVM +
workers), and per policy-server worker. CPU: user + system seconds of each server's process tree (and of
wrk) over each measured run, per request: where the machine's two cores went. Writes
``bench/results/serve.json`` and replaces the "Policy server vs TorchServe" results block in ``bench/README.md``.

    .venv/bin/python bench/serve.py                      # full run, ~6 minutes
    .venv/bin/python bench/serve.py --quick              # smoke run, ~1 minute, writes nothing in the repo
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk_act.lua"
RESULTS = ROOT / "bench" / "results" / "serve.json"
README = ROOT / "bench" / "README.md"
MARK_START = "<!-- bench/serve.py results: start -->"
MARK_END = "<!-- bench/serve.py results: end -->"
README_INTRO = """# Benchmarks

Scripts in `bench/` measure the project's performance claims on the machine at hand. Each section below
says what was measured, how to reproduce it and the latest numbers; raw results are JSON files in
`bench/results/`. Timings come from shared, noisy machines: compare ratios measured in the same run.
"""
README_SECTION = f"""
## Policy server vs TorchServe

`bench/serve.py` serves the same small MLP (8 -> 64 -> 64 -> 4, TorchScript, softmax exploration, an action
mask in the shield) three ways: `policy-server serve --workers 2` and, for reference, `--workers 1` (decision
log on, `/metrics` scraped every second, shield on with a 100 ms latency budget); TorchServe through the
`policy_server.torchserve` handler (each worker/batching configuration tried, the best one reported per client
count); in-process (`Policy.decide` in
a loop, batch 1: the floor). Load comes from one `wrk` thread with `bench/wrk_act.lua` (POST bodies from a file
of 256 random observations, a warm-up run before each measured run; one thread keeps up and leaves the second
core to the server under test); memory is VmRSS from /proc summed over each
server's process tree and per policy-server worker; CPU is user + system time of each server's processes (and
of wrk) over each measured run. TorchServe runs tuned: warnings-only logs (no access log), system metrics off, one
torch thread per worker, every `WxB` (workers x batch size) configuration registered in turn in the same JVM.
Targets (issue #15): policy-server >= 5x TorchServe's req/s at 8 and 32 clients, p99 <= 1/4 of TorchServe's,
RSS <= 400 MB per worker.

Reproduce: `.venv/bin/python bench/serve.py` (about 8 minutes; `--quick` for a one-minute smoke run, `--help`
for the knobs).

{MARK_START}
{MARK_END}
"""


# --------------------------------------------------------------------------- helpers


def _rss_tree(pid: int) -> int:
    from policy_server.torchserve.runner import process_tree_rss_bytes

    return process_tree_rss_bytes(pid)


def _tree(pid: int) -> list[int]:
    """A process and its descendants (from /proc)."""
    from policy_server.torchserve.runner import _children_map

    children, out, stack = _children_map(), [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(children.get(current, []))
    return out


def _cpu_seconds_tree(pid: int) -> float:
    """User + system CPU seconds of a process tree's live processes (utime + stime from /proc/PID/stat)."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _rss_by_process(pid: int, workers: int) -> list[dict[str, Any]]:
    """RSS and PSS (MB, smaps_rollup) of each process: the supervisor (the root) and its forked workers.

    RSS counts pages shared with other processes in full (forked workers share torch's pages
    copy-on-write); PSS divides them among their sharers, so the PSS of a tree sums to its memory.
    """
    out = []
    for p in _tree(pid):
        with contextlib.suppress(OSError, ValueError):
            fields = {
                line.split()[0].rstrip(":"): int(line.split()[1])
                for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()[1:]
            }
            role = "worker" if p != pid else "supervisor" if workers > 1 else "server"
            out.append(
                {
                    "pid": p,
                    "role": role,
                    "rss_mb": round(fields["Rss"] / 1024, 1),
                    "pss_mb": round(fields["Pss"] / 1024, 1),
                }
            )
    return out


WRK_THREADS = 1
"""One wrk thread keeps up with every server here (~25 % of a core at 30,000 req/s) and leaves the
second of the machine's two cores to the server under test and its helpers (TorchServe's JVM and
workers, the policy server's log writer); a second wrk thread only competes with them."""


def run_wrk(url: str, connections: int, duration_s: float, bodies: Path) -> dict[str, Any]:
    """One wrk run; returns req/s, latency percentiles (ms), error counts and wrk's own CPU seconds."""
    threads = min(WRK_THREADS, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        url,
    ]
    env = {**os.environ, "WRK_BODIES": str(bodies)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    match = re.search(r"^WRK_JSON (.*)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    raw = json.loads(match.group(1))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    seconds = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    return {
        "connections": connections,
        "threads": threads,
        "duration_s": round(seconds, 3),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": latency["p50"] / 1000,
        "p90_ms": latency["p90"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "p999_ms": latency["p999"] / 1000,
        "max_ms": latency["max"] / 1000,
        "mean_ms": round(latency["mean"] / 1000, 3),
        "errors": raw["errors"],
        "error_count": sum(raw["errors"].values()),
        "wrk_cpu_cores": round(wrk_cpu / seconds, 2),
    }


def load_series(
    url: str,
    connections: list[int],
    duration_s: float,
    warmup_s: float,
    bodies: Path,
    rss: Callable[[], int],
    cpu: Callable[[], float],
) -> dict[str, Any]:
    """wrk at each client count (warm-up first); RSS sampled right after each measured run, CPU over it."""
    runs, peak = [], 0
    for c in connections:
        if warmup_s > 0:
            run_wrk(url, c, warmup_s, bodies)
        cpu_before = cpu()
        result = run_wrk(url, c, duration_s, bodies)
        server_cpu = cpu() - cpu_before
        result["server_cpu_cores"] = round(server_cpu / result["duration_s"], 2)
        result["server_cpu_us_per_request"] = round(server_cpu / max(result["requests"], 1) * 1e6, 1)
        result["rss_mb"] = round(rss() / 2**20, 1)
        peak = max(peak, result["rss_mb"])
        runs.append(result)
        print(
            f"    c={c:<3} {result['rps']:>9.1f} req/s  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
            f"  errors {result['error_count']}  rss {result['rss_mb']} MB  server {result['server_cpu_cores']} cores"
            f" ({result['server_cpu_us_per_request']} µs/req)  wrk {result['wrk_cpu_cores']} cores",
            flush=True,
        )
    return {"runs": runs, "rss_peak_mb": peak}


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return int(response.status)


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def policy_server(
    artifact: Path, workdir: Path, extra_args: list[str], decision_log: bool = True, workers: int = 1
) -> Iterator[tuple[str, int, Path]]:
    """Start ``policy-server serve`` on a free loopback port; yields (act URL, pid, decision log dir)."""
    from policy_server.torchserve.runner import free_port

    port = free_port()
    log_dir = workdir / "decisions"
    command = [
        str(Path(sys.executable).with_name("policy-server")),
        "serve",
        "--model",
        str(artifact),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(["--log-dir", str(log_dir)] if decision_log else []),
        "--log-level",
        "WARNING",
        "--workers",
        str(workers),
        *extra_args,
    ]
    console_path = workdir / "policy-server.log"
    with console_path.open("wb") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"policy-server exited with {process.returncode}:\n{console_path.read_text()}")
            with contextlib.suppress(OSError):
                if _get(f"http://127.0.0.1:{port}/readyz") == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"policy-server did not become ready within 90 s:\n{console_path.read_text()}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1/act", process.pid, log_dir
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@contextlib.contextmanager
def scraping(url: str, interval_s: float = 1.0) -> Iterator[list[int]]:
    """Scrape a Prometheus endpoint every ``interval_s`` while load runs, as a real Prometheus would."""
    stop = threading.Event()
    sizes: list[int] = []

    def loop() -> None:
        while not stop.wait(interval_s):
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
                sizes.append(len(response.read()))

    thread = threading.Thread(target=loop, name="scraper", daemon=True)
    thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        thread.join(timeout=10)


def _metric_sum(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def bench_policy_server(
    artifact: Path,
    workdir: Path,
    args: argparse.Namespace,
    connections: list[int],
    bodies: Path,
    decision_log: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Load series against one policy server; checks afterwards that metrics and the log saw every decision."""
    workdir.mkdir()
    server = policy_server(artifact, workdir, args.server_args.split(), decision_log, workers)
    with server as (url, pid, log_dir):
        metrics_url = url.replace("/v1/act", "/metrics")
        idle = round(_rss_tree(pid) / 2**20, 1)
        with scraping(metrics_url) as scrapes:
            series = load_series(
                url,
                connections,
                args.duration,
                args.warmup,
                bodies,
                lambda: _rss_tree(pid),
                lambda: _cpu_seconds_tree(pid),
            )
        processes = _rss_by_process(pid, workers)
        time.sleep(1.5)  # every worker's metrics snapshot (written each second) holds its last decisions
        counted = int(_metric_sum(metrics_url, "policy_decisions_total"))
    worker_rss = [p["rss_mb"] for p in processes if p["role"] in ("worker", "server")]
    result = {
        "workers": workers,
        "decision_log": decision_log,
        "idle_rss_mb": idle,
        **series,
        "rss_by_process": processes,
        "rss_per_worker_max_mb": max(worker_rss, default=0.0),
        "pss_total_mb": round(sum(p["pss_mb"] for p in processes), 1),
        "metrics_scrapes": len(scrapes),
    }
    result["decisions_in_metrics"] = counted
    if decision_log:
        # After a clean shutdown every decision must be in the log: proof that logging was on and kept up.
        from policy_server.decision_log import reader

        result["decisions_in_log"] = reader.read_decisions(str(log_dir)).num_rows
        print(f"  decisions: {counted} in metrics, {result['decisions_in_log']} in the decision log", flush=True)
    return result


def _ts_cpu(ts: Any) -> float:
    return _cpu_seconds_tree(ts.process.pid) if ts.process is not None else 0.0


def parse_ts_config(text: str) -> tuple[int, int]:
    workers, batch = text.lower().split("x")
    return int(workers), int(batch)


def bench_torchserve(
    mar_dir: Path,
    configs: list[str],
    delay_ms: int,
    connections: list[int],
    duration_s: float,
    warmup_s: float,
    bodies: Path,
) -> dict[str, Any]:
    from policy_server.torchserve.runner import TorchServe

    results: dict[str, Any] = {}
    with TorchServe(model_store=mar_dir, quiet_logs=True) as ts:
        results["idle_rss_mb"] = round(ts.rss_bytes() / 2**20, 1)
        for text in configs:
            workers, batch = parse_ts_config(text)
            name = f"policy_w{workers}_b{batch}"
            print(f"  TorchServe {workers} worker(s), batch {batch} (max delay {delay_ms} ms)", flush=True)
            ts.register("policy.mar", model_name=name, workers=workers, batch_size=batch, max_batch_delay_ms=delay_ms)
            try:
                with scraping(f"{ts.metrics_url}/metrics"):
                    url = ts.predictions_url(name)
                    series = load_series(
                        url, connections, duration_s, warmup_s, bodies, ts.rss_bytes, lambda: _ts_cpu(ts)
                    )
            finally:
                ts.unregister(name)
            results[text] = {"workers": workers, "batch_size": batch, "max_batch_delay_ms": delay_ms, **series}
    return results


def bench_in_process(artifact: Path, seconds: float = 3.0) -> dict[str, Any]:
    """The floor: one decision at a time in this process, no HTTP, no JSON."""
    import torch

    from policy_server import artifact as artifact_module
    from policy_server import policy as policy_module

    torch.set_num_threads(1)
    loaded = artifact_module.load_artifact(str(artifact))
    policy = policy_module.Policy.from_artifact(loaded)
    rng = np.random.default_rng(0)
    observations = np.random.default_rng(1).standard_normal((256, 8)).astype(np.float32)

    def loop(step: Callable[[np.ndarray], object]) -> float:
        for i in range(200):
            step(observations[i % 256][None])
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for i in range(100):
                step(observations[i][None])
            n += 100
        return (time.perf_counter() - start) / n * 1e6

    def forward(x: np.ndarray) -> object:
        with torch.inference_mode():
            return loaded.module(torch.from_numpy(x))

    return {
        "decide_us": round(loop(lambda x: policy.decide(x, rng)), 2),
        "forward_us": round(loop(forward), 2),
        "torch_threads": 1,
    }


# --------------------------------------------------------------------------- report


def best_torchserve(ts: dict[str, Any], configs: list[str]) -> list[dict[str, Any]]:
    """Per client count, the TorchServe configuration with the most req/s (error-free runs first)."""
    best = []
    for i in range(len(ts[configs[0]]["runs"])):
        candidates = [(ts[c]["runs"][i], c) for c in configs]
        run, config = max(candidates, key=lambda rc: (rc[0]["error_count"] == 0, rc[0]["rps"]))
        best.append({**run, "config": config})
    return best


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, IndexError, ValueError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _per_client(runs: list[dict[str, Any]], key: str, fmt: str) -> str:
    return " / ".join(format(r[key], fmt) for r in runs)


def _processes(ps: dict[str, Any]) -> str:
    """RSS per process (workers, supervisor) and the tree's PSS (what it really occupies)."""
    procs = ps.get("rss_by_process", [])
    if ps.get("workers", 1) == 1:
        return f"RSS {ps['rss_peak_mb']:.0f} MB (one process; PSS {ps['pss_total_mb']:.0f} MB)"
    workers = " / ".join(f"{p['rss_mb']:.0f}" for p in procs if p["role"] == "worker")
    supervisor = " / ".join(f"{p['rss_mb']:.0f}" for p in procs if p["role"] == "supervisor")
    return (
        f"RSS per worker {workers} MB, supervisor {supervisor} MB (torch preloaded, shared copy-on-write); "
        f"PSS of the whole tree {ps['pss_total_mb']:.0f} MB"
    )


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Run {result['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB "
        f"(load average at start {', '.join(map(str, m['load_average_at_start']))}; shared with other jobs).",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    ps = result.get("policy_server")
    best = result["torchserve_best"]
    by_workers = result.get("policy_server_by_workers", {})
    if ps is not None:
        n = ps.get("workers", 1)
        others = [w for w in by_workers if w != str(n)]
        extra_head = "".join(f" {w} worker(s) req/s | p99 ms |" for w in others)
        lines += [
            f"| clients | policy-server {n} workers req/s | p50 ms | p99 ms |{extra_head} TorchServe best req/s "
            "| config | p50 ms | p99 ms | req/s ratio | p99 ratio (TS / PS) |",
            "| ---: | ---: | ---: | ---: |"
            + " ---: | ---: |" * len(others)
            + " ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for i, (p, t) in enumerate(zip(ps["runs"], best, strict=True)):
            extra = "".join(
                f" {by_workers[w]['runs'][i]['rps']:,.0f} | {by_workers[w]['runs'][i]['p99_ms']:.2f} |" for w in others
            )
            lines.append(
                f"| {p['connections']} | {p['rps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} |{extra} "
                f"{t['rps']:,.0f} | {t['config']} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | {p['rps'] / t['rps']:.2f}x "
                f"| {t['p99_ms'] / p['p99_ms']:.2f}x |"
            )
    else:
        lines += [
            "policy-server was not measured in this run (`--skip-policy-server`).",
            "",
            "| clients | TorchServe best req/s | config | p50 ms | p99 ms |",
            "| ---: | ---: | --- | ---: | ---: |",
        ]
        for t in best:
            lines.append(
                f"| {t['connections']} | {t['rps']:,.0f} | {t['config']} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} |"
            )
    ts = result["torchserve"]
    ts_peak = max(ts[c]["rss_peak_mb"] for c in result["torchserve_configs"])
    floor = result["in_process"]
    clients = ", ".join(str(c) for c in result["connections"])
    lines += [
        "",
        "Config `WxB` = W workers, batch size B (max batch delay "
        f"{result['torchserve_delay_ms']} ms). All TorchServe configurations, req/s at {clients} clients:",
        "",
    ]
    for c in result["torchserve_configs"]:
        runs = ts[c]["runs"]
        lines.append(
            f"- `{c}`: {_per_client(runs, 'rps', ',.0f')} req/s; p99 {_per_client(runs, 'p99_ms', '.1f')} ms; "
            f"peak RSS {ts[c]['rss_peak_mb']:.0f} MB"
        )
    lines += [""]
    memory = f"- Memory (peak VmRSS under load): TorchServe {ts_peak:.0f} MB (launcher + JVM + workers)"
    for w, series in by_workers.items():
        memory += f"; policy-server `--workers {w}` {_processes(series)}"
    lines += [
        memory + ".",
        f"- In-process floor, batch 1: `Policy.decide` {floor['decide_us']:.1f} µs per decision "
        f"(~{1e6 / floor['decide_us']:,.0f}/s on one core), bare module forward {floor['forward_us']:.1f} µs.",
    ]
    if ps is not None:
        cpu = [
            f"policy-server `--workers {w}` {_per_client(series['runs'], 'server_cpu_us_per_request', '.0f')} µs "
            f"({_per_client(series['runs'], 'server_cpu_cores', '.2f')} cores)"
            for w, series in by_workers.items()
        ]
        cpu.append(
            f"TorchServe best {_per_client(best, 'server_cpu_us_per_request', '.0f')} µs "
            f"({_per_client(best, 'server_cpu_cores', '.2f')} cores)"
        )
        lines.append(
            f"- CPU per request (user + system of the server's processes; cores busy) at {clients} clients: "
            + "; ".join(cpu)
            + f". wrk itself used {_per_client(ps['runs'], 'wrk_cpu_cores', '.2f')} cores."
        )
        need = [
            (t["connections"], 5 * t["rps"], 5 * t["rps"] * p["server_cpu_us_per_request"] / 1e6)
            for p, t in zip(ps["runs"], best, strict=True)
            if t["connections"] >= 8
        ]
        lines.append(
            "- What 5x takes: "
            + "; ".join(f"{c} clients {r:,.0f} req/s = {cores:.1f} cores of policy-server" for c, r, cores in need)
            + f" at its measured CPU per request, beside wrk, on {m['cores']} cores."
        )
        verdict = {k: "met" if v else "NOT met" for k, v in result["targets"].items()}
        lines.append(
            f"- Targets: req/s >= 5x at 8 and 32 clients {verdict['rps_5x']}; p99 <= 1/4 {verdict['p99_4x']}; "
            f"RSS <= 400 MB per worker {verdict['rss_400mb_per_worker']}."
        )
        for w, series in by_workers.items():
            lines.append(
                f"- Decision log complete (`--workers {w}`): {series['decisions_in_log']:,} decisions logged, "
                f"{series['decisions_in_metrics']:,} counted in `/metrics` (scraped {series['metrics_scrapes']} "
                "times, each answer the sum of all workers)."
            )
    no_log = result.get("policy_server_no_log")
    if no_log is not None:
        lines.append(
            f"- Diagnostic, policy-server `--workers {no_log.get('workers', 1)}` with the decision log off: "
            f"{_per_client(no_log['runs'], 'rps', ',.0f')} req/s; "
            f"p99 {_per_client(no_log['runs'], 'p99_ms', '.1f')} ms (what logging costs, same run)."
        )
    errors = sum(r["error_count"] for c in result["torchserve_configs"] for r in ts[c]["runs"])
    errors += sum(r["error_count"] for series in by_workers.values() for r in series["runs"])
    lines.append(f"- wrk errors (non-2xx, timeouts, socket errors) in measured runs: {errors}.")
    return "\n".join(lines)


def update_readme(markdown: str) -> None:
    text = README.read_text() if README.exists() else README_INTRO
    if MARK_START not in text:
        text = text.rstrip("\n") + "\n" + README_SECTION
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    README.write_text(f"{head}{MARK_START}\n{markdown}\n{MARK_END}{tail}")


def targets(ps: dict[str, Any], best: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue #15: >= 5x TorchServe's req/s at 8 and 32 clients, p99 <= 1/4 of its, RSS <= 400 MB per worker."""
    pairs = [(p, t) for p, t in zip(ps["runs"], best, strict=True) if p["connections"] >= 8]
    return {
        "rps_5x": all(p["rps"] >= 5 * t["rps"] for p, t in pairs),
        "p99_4x": all(p["p99_ms"] * 4 <= t["p99_ms"] for p, t in zip(ps["runs"], best, strict=True)),
        "rss_400mb_per_worker": ps["rss_per_worker_max_mb"] <= 400,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up before each run")
    parser.add_argument("--connections", default="1,8,32", help="client counts, comma-separated")
    parser.add_argument("--ts-configs", default="1x1,2x1,1x8,2x8,2x16", help="TorchServe WORKERSxBATCH list")
    parser.add_argument("--ts-delay-ms", type=int, default=2, help="TorchServe max_batch_delay for batches > 1")
    parser.add_argument("--skip-policy-server", action="store_true", help="measure TorchServe and in-process only")
    parser.add_argument(
        "--server-args",
        default="--latency-budget-ms 100",
        help="extra arguments for `policy-server serve` (default turns the shield's latency budget on too)",
    )
    parser.add_argument(
        "--diagnose-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure policy-server without the decision log, to see what logging costs",
    )
    parser.add_argument(
        "--workers",
        default="2,1",
        help="`policy-server serve --workers` counts, comma-separated; the first is compared with TorchServe",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--no-readme", action="store_true", help="do not update bench/README.md")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (~1 minute): 3 s runs, 1 s warm-up, TorchServe 2x16 only, no log-off diagnostic, "
        "results in the temp directory, README untouched",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.ts_configs, args.diagnose_log, args.no_readme = 3.0, 1.0, "2x16", False, True
        if args.out == RESULTS:
            args.out = Path(tempfile.gettempdir()) / "serve-quick.json"
    if shutil.which("wrk") is None:
        print("error: wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from policy_server import artifact as artifact_module
    from policy_server.torchserve import archive

    connections = [int(c) for c in args.connections.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    configs = [c.strip() for c in args.ts_configs.split(",") if c.strip()]
    for c in configs:
        parse_ts_config(c)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "bench/serve.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "model": "MLP 8 -> 64 -> 64 -> 4, TorchScript, softmax exploration, shield action mask",
        "connections": connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "torchserve_configs": configs,
        "torchserve_delay_ms": args.ts_delay_ms,
        "policy_server_workers": worker_counts,
    }
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        artifact = artifact_module.write_example_model(
            work / "artifact",
            obs_dim=8,
            n_actions=4,
            exploration={"kind": "softmax", "temperature": 1.0},
            shield={"action_mask": [True, True, True, False], "fallback_action": 0},
        )
        mar_dir = work / "mar"
        archive.build_mar(artifact, mar_dir, model_name="policy")
        bodies = work / "bodies.jsonl"
        rows = np.random.default_rng(7).standard_normal((256, 8))
        bodies.write_text(
            "".join(json.dumps({"observation": [round(float(v), 6) for v in row]}) + "\n" for row in rows)
        )

        print("in-process floor", flush=True)
        result["in_process"] = bench_in_process(artifact)
        print(f"  {result['in_process']}", flush=True)
        if not args.skip_policy_server:
            by_workers = result["policy_server_by_workers"] = {}
            for n in worker_counts:
                print(f"policy-server serve --workers {n}", flush=True)
                by_workers[str(n)] = bench_policy_server(
                    artifact, work / f"ps-{n}", args, connections, bodies, workers=n
                )
            result["policy_server"] = by_workers[str(worker_counts[0])]
            if args.diagnose_log:
                print(f"policy-server serve --workers {worker_counts[0]} without the decision log (diagnostic)")
                result["policy_server_no_log"] = bench_policy_server(
                    artifact,
                    work / "ps-no-log",
                    args,
                    connections,
                    bodies,
                    decision_log=False,
                    workers=worker_counts[0],
                )
        print("TorchServe", flush=True)
        result["torchserve"] = bench_torchserve(
            mar_dir, configs, args.ts_delay_ms, connections, args.duration, args.warmup, bodies
        )
    result["torchserve_best"] = best_torchserve(result["torchserve"], configs)
    if "policy_server" in result:
        ps, best = result["policy_server"], result["torchserve_best"]
        result["ratios"] = [
            {
                "connections": p["connections"],
                "rps_policy_server_over_torchserve": round(p["rps"] / t["rps"], 2),
                "p99_torchserve_over_policy_server": round(t["p99_ms"] / p["p99_ms"], 2),
            }
            for p, t in zip(ps["runs"], best, strict=True)
        ]
        result["targets"] = targets(ps, best)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    markdown = render_markdown(result)
    print(markdown)
    if not args.no_readme:
        update_readme(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
