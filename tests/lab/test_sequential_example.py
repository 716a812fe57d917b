"""examples/cooling-sequential.yaml is a valid PolicyRollout and says what the sequential scenario runs."""

from __future__ import annotations

from pathlib import Path

import yaml
from rollout_lab.demo import sequential
from rollout_lab.local import run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cooling-sequential.yaml"


def test_the_example_is_the_full_scenarios_rollout_with_the_demos_paths(tmp_path: Path) -> None:
    document = sequential.manifest("cooling-local", Path("demo-seq/artifacts/constrained"), "constrained-v1",
                                   Path("demo-seq/artifacts/fallback"), Path("demo-seq/decision-log"), sequential.FULL)
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(document))
    scenario = run.load_manifest(tmp_path / "scenario.yaml")
    assert run.load_manifest(EXAMPLE).spec.model_dump() == scenario.spec.model_dump()


def test_the_gate_judges_episodes_with_an_overheat_budget() -> None:
    gate = run.load_manifest(EXAMPLE).spec.offline_evaluation
    assert gate.trajectory is not None and gate.trajectory.gamma == sequential.FULL.gamma
    assert [str(e) for e in gate.trajectory.estimators] == list(sequential.ESTIMATORS)
    assert [(c.cost, c.max) for c in gate.constraints] == [("overheat", sequential.FULL.gate_max)]


def test_the_commands_take_the_sequential_scenario_and_the_cooling_traffic() -> None:
    """`demo --scenario sequential` and `run --env cooling` parse; the pricing demo stays the default."""
    import argparse

    from rollout_lab import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    demo = parser.parse_args(["demo", "--scenario", "sequential", "--fast"])
    assert demo.scenario == "sequential" and demo.handler is cli.demo_command
    assert parser.parse_args(["demo"]).scenario == "pricing"
    run = parser.parse_args(["run", "-f", str(EXAMPLE), "--env", "cooling"])
    assert run.env == "cooling" and run.handler is cli.run_command
