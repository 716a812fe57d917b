"""`policy-server join` end to end, as a Job runs it: a subprocess, the summary on stdout with `--json`,
progress on stderr, the dataset on disk, and one line on stderr (exit 2) for inputs it cannot use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.policy_server.join.conftest import T0, LogBuilder


def policy_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "policy_server.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_join_prints_the_summary_and_writes_the_dataset(log: LogBuilder, tmp_path: Path) -> None:
    log.decision("a", T0 + 10, writer="w1")
    log.decision("b", T0 + 20, writer="w2", variant="candidate")
    log.decision("c", T0 + 30, writer="w2")
    log.reward("a", T0 + 15, 1.0, event="e1")
    log.reward("a", T0 + 16, 2.0, event="e2")
    log.reward("a", T0 + 17, 2.0, event="e2")  # retried
    log.reward("b", T0 + 500, 1.0)  # after the 5 minute window
    log.reward("ghost", T0 + 40, 1.0, schema=1)
    out = tmp_path / "joined"
    done = policy_server("join", "--logs", log.write(), "--out", str(out), "--window", "5m", "--reward-function",
                         "sum", "--default-reward", "0", "--as-of", "2026-05-29T00:00:00Z", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {k: summary[k] for k in ("decisions", "rewarded", "defaulted", "excluded", "pending", "late",
                                    "duplicates", "orphans")} == {
        "decisions": 3, "rewarded": 1, "defaulted": 2, "excluded": 0, "pending": 0, "late": 1, "duplicates": 1,
        "orphans": 1}
    assert summary["variants"]["candidate"]["defaulted"] == 1
    assert "join: hour " in done.stderr  # progress
    rows = {r["request_id"]: r for r in ds.dataset(str(out), partitioning="hive").to_table().to_pylist()}
    assert (rows["a"]["reward"], rows["a"]["reward_events"], rows["b"]["defaulted"]) == (3.0, 2, True)


def test_an_indexed_job_pod_takes_its_shard_from_the_environment(log: LogBuilder, tmp_path: Path) -> None:
    for h in range(6):
        log.decision(f"d{h}", T0 + 3600 * h + 60)
    url = log.write()
    counts = []
    for index in range(2):
        done = policy_server("join", "--logs", url, "--out", str(tmp_path / "out"), "--default-reward", "0",
                             "--json", "--quiet", env={"JOB_COMPLETION_INDEX": str(index), "JOIN_SHARDS": "2"})
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["shard"] == f"{index}/2" and done.stderr == ""
        counts.append(result["decisions"])
    assert sum(counts) == 6
    assert len(ds.dataset(str(tmp_path / "out"), partitioning="hive").to_table()) == 6


@pytest.mark.parametrize("args, message", [
    (["--window", "5 parsecs"], "cannot read the duration '5 parsecs'"),
    (["--as-of", "yesterday"], "cannot read --as-of 'yesterday'"),
    (["--shard", "2/2"], "--shard 2/2: I must be in 0..N-1"),
])
def test_bad_arguments_exit_2_with_one_line_that_says_what_to_write(log: LogBuilder, tmp_path: Path,
                                                                   args: list[str], message: str) -> None:
    log.decision("a", T0)
    done = policy_server("join", "--logs", log.write(), "--out", str(tmp_path / "out"), *args)
    assert done.returncode == 2
    assert done.stderr.startswith("policy-server join: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
