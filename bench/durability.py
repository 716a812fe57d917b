"""Decision durability: what a SIGKILL under load loses, and what ``--durable`` costs in latency.

Why: the durability contract (docs/decision-log.md) promises that a SIGKILL loses at most the
write-ahead log's commit window of acknowledged decisions, and nothing with ``--durable``. This
measures both against real ``policy-server serve`` processes under the same load:

* ``loss``: clients send /v1/act with unique ids; after ``--load-s`` the server is SIGKILLed, a
  new one replays the WAL, and the acknowledged ids missing from Parquet are counted, as rows
  and as milliseconds of the measured acknowledged throughput. Peers in the same run: no WAL
  (the old behaviour: everything since the last Parquet flush), WAL (5 ms commits), WAL --durable.
* ``latency``: client-side p50/p99 and throughput of WAL, WAL --durable and WAL --durable
  --wal-fsync, each as a ratio to no WAL measured in the same run.

    PYTHONPATH=operator:. .venv/bin/python bench/durability.py [--quick]

Writes ``bench/results/durability.json``. The load generator is Python threads (it saturates
before the server does): compare the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from policy_server import artifact
from policy_server.decision_log import reader

REPO = Path(__file__).resolve().parents[1]
BODY = '{"observation": [0.3, -1.2, 0.5, 0.0, 1.1, -0.4, 0.9, -0.7], "request_id": "%s"}'


def start(model: Path, root: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "policy_server.cli", "serve", "--port", "0", "--model", str(model)]
    proc = subprocess.Popen(
        [*cmd, "--log-dir", str(root / "log"), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    port = int(re.search(r":(\d+)$", proc.stdout.readline().strip()).group(1))
    deadline = time.monotonic() + 60
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server not ready")
        time.sleep(0.05)


def load(port: int, seconds: float, clients: int, tag: str) -> tuple[list[tuple[float, str]], list[float]]:
    """(ack time, id) for every 200 and each request's latency, from ``clients`` keep-alive threads."""
    acked: list[tuple[float, str]] = []
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def run(w: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        i = 0
        while time.monotonic() < stop:
            rid = f"{tag}{w}-{i}"
            t0 = time.perf_counter()
            try:
                c.request("POST", "/v1/act", BODY % rid, {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
            except OSError:
                return
            latencies.append(time.perf_counter() - t0)
            if r.status == 200:
                acked.append((time.monotonic(), rid))
            i += 1

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return acked, latencies


def loss(model: Path, mode: list[str], seconds: float, clients: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        args = [*mode, "--wal-dir", str(root / "wal")] if mode != ["none"] else []
        proc, port = start(model, root, *args)
        killer = threading.Timer(seconds, lambda: proc.send_signal(signal.SIGKILL))
        killer.start()
        acked, _ = load(port, seconds + 1.0, clients, "k")
        proc.wait()
        replay, _ = start(model, root, *args)
        replay.send_signal(signal.SIGTERM)
        replay.wait(60)
        logged = set(reader.read_decisions(str(root / "log")).column("request_id").to_pylist())
    lost = [t for t, rid in acked if rid not in logged]
    span = (acked[-1][0] - acked[0][0]) if len(acked) > 1 else 1.0
    rate = len(acked) / span
    return {
        "acknowledged": len(acked),
        "lost": len(lost),
        "lost_ms_of_traffic": 1000.0 * len(lost) / rate,
        "acked_per_s": rate,
    }


def latency(model: Path, mode: list[str], seconds: float, clients: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        args = [*mode, "--wal-dir", str(root / "wal")] if mode != ["none"] else []
        proc, port = start(model, root, *args)
        try:
            load(port, 0.5, clients, "w")  # warm-up
            acked, lat = load(port, seconds, clients, "m")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    ms = np.array(lat) * 1000.0
    return {"req_per_s": len(acked) / seconds, "p50_ms": float(np.median(ms)), "p99_ms": float(np.quantile(ms, 0.99))}


MODES = {
    "no_wal": ["none"],
    "wal_5ms": ["--wal-commit-ms", "5"],
    "wal_durable": ["--durable"],
    "wal_durable_fsync": ["--durable", "--wal-fsync"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one short repetition (a smoke test, ~30 s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--load-s", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=8, help="load of the SIGKILL runs")
    p.add_argument("--latency-clients", default="1,8", help="client counts of the latency runs")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "durability.json"))
    args = p.parse_args()
    repeats, seconds = (1, 1.0) if args.quick else (args.repeats, args.load_s)
    with tempfile.TemporaryDirectory() as tmp:
        model = artifact.write_example_model(Path(tmp) / "m")
        results: dict[str, Any] = {"loss": {}, "latency": {}}
        for name in ("no_wal", "wal_5ms", "wal_durable"):
            runs = [loss(model, MODES[name], seconds, args.clients) for _ in range(repeats)]
            results["loss"][name] = runs
            print(name, "lost", [r["lost"] for r in runs], "ms", [round(r["lost_ms_of_traffic"], 1) for r in runs])
        for _ in range(repeats):  # interleaved passes: machine noise hits every mode alike
            for clients in map(int, args.latency_clients.split(",")):
                for name in MODES:
                    run = latency(model, MODES[name], seconds, clients)
                    results["latency"].setdefault(f"{name}@{clients}", []).append(run)
        for name, runs in results["latency"].items():
            base = results["latency"]["no_wal@" + name.split("@")[1]]
            for run, peer in zip(runs, base, strict=True):
                run["p50_ratio_to_no_wal"] = run["p50_ms"] / peer["p50_ms"]
                run["p99_ratio_to_no_wal"] = run["p99_ms"] / peer["p99_ms"]
                run["throughput_ratio_to_no_wal"] = run["req_per_s"] / peer["req_per_s"]
            print(name, [(round(r["p50_ms"], 2), round(r["p99_ms"], 2), round(r["req_per_s"])) for r in runs])
    results["settings"] = {"repeats": repeats, "load_s": seconds, "clients": args.clients, "quick": args.quick}
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    if not args.quick:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
