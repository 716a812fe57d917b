"""examples/jobs/reward-join.yaml: the Indexed Job that shards the joiner is what `policy-server join` accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from policy_server import cli
from policy_server.join import cli as join_cli
from policy_server.join import stream

JOB = Path(__file__).resolve().parents[3] / "examples" / "jobs" / "reward-join.yaml"


def test_the_indexed_jobs_pods_each_join_their_own_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    job = yaml.safe_load(JOB.read_text())
    spec = job["spec"]
    assert (job["kind"], spec["completionMode"]) == ("Job", "Indexed")
    assert spec["completions"] == spec["parallelism"]
    (container,) = spec["template"]["spec"]["containers"]
    args = cli.build_parser().parse_args(container["args"])
    assert args.command == "join" and args.shard is None  # the shard comes from the pod's index
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["JOIN_SHARDS"]) == spec["completions"]
    owned = []
    for index in range(spec["completions"]):  # what each pod reads from its environment
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        monkeypatch.setenv("JOIN_SHARDS", env["JOIN_SHARDS"])
        owned.append(stream.Shard.parse(join_cli._shard_text(args)))
    hours = range(490_000, 490_200)
    assert sorted(h for shard in owned for h in hours if shard.owns(h)) == list(hours)  # disjoint and complete
    assert all(any(shard.owns(h) for h in hours) for shard in owned)  # every pod has work
