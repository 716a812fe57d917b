"""Policy artifacts: a directory with ``manifest.json`` plus one program file.

Why a manifest next to the weights: the server must know, before the first request, what the
model promises (observation shape, action space, what the output means, how to explore) so that
it can validate requests, log exact propensities, shield actions and refuse a broken artifact
at start-up instead of serving garbage. ``load_artifact`` therefore checks the manifest schema,
the program's sha256 and a dummy forward pass against the promised output shape, and raises
:class:`ArtifactError` with a message that says what is wrong and how to fix it.

Layout::

    my-policy/
      manifest.json     # Manifest below (schema_version 1)
      policy.pt         # TorchScript (torch.jit.save) or policy.pt2 (torch.export.save)

Artifacts are read through fsspec, so ``/path``, ``file:///path``, ``memory://x`` (tests),
``s3://bucket/key`` (with s3fs installed) all work.

Loading never unpickles arbitrary objects: TorchScript archives are read by TorchScript's own
loader (tensors and TorchScript types only), and ``torch.export`` archives are checked first
(``artifact_safety.py``): weights and constants must be raw tensor payloads, not pickles,
and the rest is loaded with ``torch.load(weights_only=True)`` forced. Optionally the manifest is
signed (``manifest.sig``, Ed25519, see signing.py); with ``trusted_keys`` the signature is checked
on the exact bytes that are then parsed, before the program is read.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pydantic
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from policy_server import artifact_safety
from policy_server.errors import PolicyServerError

__all__ = [
    "LINEAGE_FIELDS",
    "SCHEMA_VERSION",
    "ActionSpec",
    "ArtifactError",
    "ContinuousAction",
    "DiscreteAction",
    "Exploration",
    "FeatureReference",
    "Lineage",
    "LoadedArtifact",
    "Manifest",
    "ObservationSpec",
    "ShieldConfig",
    "load_artifact",
    "verify_signature",
    "write_example_model",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ArtifactError(PolicyServerError):
    """The artifact cannot be served; the message says what is wrong and how to fix it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureReference(_Model):
    """Reference distribution of one observation feature, for drift (PSI).

    ``edges`` are the interior cut points (strictly increasing, m-1 of them) of m bins
    ``(-inf, e0], (e0, e1], ..., (e_{m-2}, inf)``; ``fractions`` the share of reference
    observations in each bin (m values summing to 1).
    """

    edges: list[float]
    fractions: list[float]

    @model_validator(mode="after")
    def _check(self) -> FeatureReference:
        if len(self.fractions) != len(self.edges) + 1:
            raise ValueError(
                f"reference needs len(fractions) == len(edges) + 1, got {len(self.fractions)} and {len(self.edges)}"
            )
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("reference edges must be strictly increasing")
        if any(f < 0 for f in self.fractions) or not math.isclose(sum(self.fractions), 1.0, abs_tol=1e-3):
            raise ValueError("reference fractions must be >= 0 and sum to 1")
        return self


class ObservationSpec(_Model):
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    dtype: Literal["float32"] = "float32"
    names: list[str] | None = None
    reference: list[FeatureReference] | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def feature_names(self) -> list[str]:
        return list(self.names) if self.names else [f"x{i}" for i in range(self.size)]

    @model_validator(mode="after")
    def _check(self) -> ObservationSpec:
        if self.names is not None and len(self.names) != self.size:
            raise ValueError(f"observation.names has {len(self.names)} entries, the shape has {self.size} features")
        if self.reference is not None and len(self.reference) != self.size:
            raise ValueError(
                f"observation.reference has {len(self.reference)} entries, the shape has {self.size} features"
            )
        return self


class DiscreteAction(_Model):
    type: Literal["discrete"]
    n: int = Field(ge=1)


class ContinuousAction(_Model):
    type: Literal["continuous"]
    low: list[float] = Field(min_length=1)
    high: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ContinuousAction:
        if len(self.low) != len(self.high):
            raise ValueError("action.low and action.high must have the same length")
        if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError("action.low must be <= action.high in every dimension")
        return self

    @property
    def dim(self) -> int:
        return len(self.low)


ActionSpec = Annotated[DiscreteAction | ContinuousAction, Field(discriminator="type")]


class Exploration(_Model):
    """How the served action is drawn from the model output.

    discrete: ``greedy`` (argmax, lowest index on ties), ``epsilon_greedy`` (uniform with
    probability ``epsilon``), ``softmax`` (softmax(output / temperature)).
    continuous: ``greedy`` (the mean) or ``gaussian`` (mean + exp(log_std) * N(0, 1)).
    """

    kind: Literal["greedy", "epsilon_greedy", "softmax", "gaussian"] = "greedy"
    epsilon: float = Field(default=0.1, ge=0.0, le=1.0)
    temperature: float = Field(default=1.0, gt=0.0)


class ShieldConfig(_Model):
    """Safety shield settings (see policy_server.shield)."""

    action_mask: list[bool] | None = None
    low: list[float] | None = None
    high: list[float] | None = None
    max_delta: float | list[float] | None = Field(default=None)
    fallback_action: int | list[float] | None = None
    latency_budget_ms: float | None = Field(default=None, gt=0)


# --------------------------------------------------------------------------- lineage


class _Wire(_Model):
    """camelCase on the wire, like the PolicyRollout CRD: the operator stores the block as it is."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class DatasetLineage(_Wire):
    """What the policy learned from. ``sha256`` is over the sorted segment list (relative path, rows and
    the footers' time range of every decision and reward segment, or the bytes of a trajectory file):
    cheap on object stores, and any added, removed or rewritten segment changes it."""

    uri: str = Field(min_length=1)
    partitions: list[str] | None = None
    from_: str | None = Field(default=None, alias="from", description="earliest decision time (ISO 8601)")
    to: str | None = Field(default=None, description="latest decision time (ISO 8601)")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    hash_of: str | None = Field(default=None, description="what sha256 covers")
    rows: int | None = Field(default=None, ge=0, description="decisions (or steps) trained on")


class CodeLineage(_Wire):
    """The training code: the image it ran (a ref or, better, a digest) and the source commit."""

    image: str | None = None
    commit: str | None = None


class EnvironmentLineage(_Wire):
    """Where it was trained: the simulator or environment id and version, and the library versions."""

    simulator: str | None = None
    simulator_version: str | None = None
    python: str | None = None
    torch: str | None = None
    policy_server: str | None = None


class OPEReportLineage(_Wire):
    """The offline evaluation the artifact passed: where the full report is, and its headline."""

    uri: str | None = None
    estimator: str | None = None
    estimate: float | None = None
    lower_bound: float | None = None
    baseline_value: float | None = None
    verdict: str | None = None


class Lineage(_Wire):
    """Provenance of a policy artifact (dataset, code, hyperparameters, environment, OPE report).

    Inside the manifest, so a signed manifest signs its lineage too. Every part is optional: a
    rollout says which parts it requires (``spec.requireLineage``).
    """

    dataset: DatasetLineage | None = None
    code: CodeLineage | None = None
    hyperparameters: dict[str, Any] | None = None
    environment: EnvironmentLineage | None = None
    ope_report: OPEReportLineage | None = None

    def wire(self) -> dict[str, Any]:
        """The block as JSON (camelCase, unset parts left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


LINEAGE_FIELDS = ("dataset", "code", "hyperparameters", "environment", "opeReport")


class Manifest(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    format: Literal["torchscript", "export"]
    program: str = Field(min_length=1)
    observation: ObservationSpec
    action: ActionSpec
    output: Literal["logits", "q_values", "mean"]
    log_std: list[float] | None = None
    exploration: Exploration = Exploration()
    shield: ShieldConfig | None = None
    costs: list[str] = Field(default_factory=list)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    lineage: Lineage | None = None

    @property
    def output_size(self) -> int:
        return self.action.n if isinstance(self.action, DiscreteAction) else self.action.dim

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if "/" in self.program or "\\" in self.program or self.program in ("", ".", ".."):
            raise ValueError("program must be a plain file name inside the artifact directory")
        if isinstance(self.action, DiscreteAction):
            if self.output not in ("logits", "q_values"):
                raise ValueError("a discrete action needs output 'logits' or 'q_values'")
            if self.exploration.kind == "gaussian":
                raise ValueError("exploration 'gaussian' is for continuous actions; use greedy/epsilon_greedy/softmax")
            if self.log_std is not None:
                raise ValueError("log_std is only for continuous actions")
        else:
            if self.output != "mean":
                raise ValueError("a continuous action needs output 'mean'")
            if self.exploration.kind not in ("greedy", "gaussian"):
                raise ValueError("continuous actions support exploration 'greedy' or 'gaussian'")
            if self.exploration.kind == "gaussian" and self.log_std is None:
                raise ValueError("exploration 'gaussian' needs log_std (one per action dimension)")
            if self.log_std is not None and len(self.log_std) != self.action.dim:
                raise ValueError(
                    f"log_std has {len(self.log_std)} entries, the action has {self.action.dim} dimensions"
                )
        if self.shield is not None:
            _check_shield(self.shield, self.action)
        return self


def _check_shield(shield: ShieldConfig, action: DiscreteAction | ContinuousAction) -> None:
    if isinstance(action, DiscreteAction):
        if shield.action_mask is not None:
            if len(shield.action_mask) != action.n:
                raise ValueError(
                    f"shield.action_mask has {len(shield.action_mask)} entries, the action has n={action.n}"
                )
            if not any(shield.action_mask):
                raise ValueError("shield.action_mask allows no action")
        if shield.low is not None or shield.high is not None:
            raise ValueError("shield.low/high are for continuous actions; use shield.action_mask for discrete ones")
        if isinstance(shield.max_delta, list):
            raise ValueError("shield.max_delta must be a single number for discrete actions")
        if shield.fallback_action is not None and not (
            isinstance(shield.fallback_action, int) and 0 <= shield.fallback_action < action.n
        ):
            raise ValueError(f"shield.fallback_action must be an action index in [0, {action.n})")
    else:
        if shield.action_mask is not None:
            raise ValueError("shield.action_mask is for discrete actions; use shield.low/high for continuous ones")
        for key in ("low", "high", "fallback_action"):
            value = getattr(shield, key)
            if value is not None and (not isinstance(value, list) or len(value) != action.dim):
                raise ValueError(f"shield.{key} must be a list of {action.dim} numbers")
        if isinstance(shield.max_delta, list) and len(shield.max_delta) != action.dim:
            raise ValueError(f"shield.max_delta must be a number or a list of {action.dim} numbers")


@dataclass(frozen=True)
class LoadedArtifact:
    """A verified artifact: its manifest, the loaded module and where it came from."""

    manifest: Manifest
    module: Any  # callable torch module: (B, *shape) float32 -> (B, K)
    path: str
    device: str = "cpu"


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ArtifactError(
            f"cannot open artifact location {url!r}: {exc}. Use a local path or an fsspec URL."
        ) from exc


def _read_manifest_bytes(url: str) -> bytes:
    fs, root = _fs(url)
    mpath = root.rstrip("/") + "/" + MANIFEST_NAME
    try:
        return fs.cat_file(mpath)
    except FileNotFoundError as exc:
        raise ArtifactError(
            f"artifact {url!r} has no {MANIFEST_NAME}; point --model at a directory made by "
            "`policy-server example-model` or a trainer export"
        ) from exc


def _verify(url: str, raw: bytes, trusted_keys: Sequence[str]) -> None:
    from policy_server import signing  # cryptography is loaded only where artifacts are verified

    fs, root = _fs(url)
    try:
        sig = fs.cat_file(root.rstrip("/") + "/" + signing.SIGNATURE_NAME)
    except FileNotFoundError:
        sig = None
    try:
        signing.verify(raw, sig, trusted_keys)
    except signing.SignatureError as exc:
        raise ArtifactError(f"artifact {url!r} refused: {exc}") from None


def verify_signature(url: str, trusted_keys: Sequence[str]) -> None:
    """Raise :class:`ArtifactError` unless the artifact's manifest is signed by one of ``trusted_keys``."""
    _verify(url, _read_manifest_bytes(url), trusted_keys)


def read_manifest(url: str, raw: bytes | None = None) -> Manifest:
    """Read (or take ``raw``) and validate ``manifest.json`` of the artifact at ``url``."""
    if raw is None:
        raw = _read_manifest_bytes(url)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ArtifactError(f"{MANIFEST_NAME} of {url!r} is not valid JSON ({exc}); rewrite it") from exc
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise ArtifactError(
            f"{MANIFEST_NAME} of {url!r} has schema_version {data.get('schema_version')!r}; "
            f"this server reads schema_version {SCHEMA_VERSION}: re-export the artifact"
        )
    try:
        return Manifest.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ArtifactError(f"{MANIFEST_NAME} of {url!r} is invalid: {problems}. Fix these fields.") from exc


def _optimise_script(module: Any) -> Any:
    """Freeze TorchScript for CPU inference (measured ~3x less per-call overhead on a small MLP)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch suggests torch.compile, too slow to start
            return torch.jit.optimize_for_inference(torch.jit.freeze(module.eval()))
    except Exception:  # some scripted modules cannot be frozen; the plain module still works
        return module


def load_artifact(url: str, device: str = "cpu", *, trusted_keys: Sequence[str] = ()) -> LoadedArtifact:
    """Load and verify the artifact at ``url`` (local dir or fsspec URL) onto ``device``.

    With ``trusted_keys`` the manifest must be signed by one of them (checked before anything
    else is read); its sha256 then pins the program, so swapped weights are refused too.
    """
    raw = _read_manifest_bytes(url)
    if trusted_keys:
        _verify(url, raw, trusted_keys)
    manifest = read_manifest(url, raw)
    fs, root = _fs(url)
    ppath = root.rstrip("/") + "/" + manifest.program
    try:
        data = fs.cat_file(ppath)
    except FileNotFoundError as exc:
        raise ArtifactError(
            f"artifact {url!r}: program file {manifest.program!r} named in {MANIFEST_NAME} is missing; "
            "copy it next to the manifest or fix `program`"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ArtifactError(
            f"artifact {url!r}: sha256 of {manifest.program!r} is {digest}, the manifest says {manifest.sha256}; "
            "the file is corrupt or was replaced: re-export the artifact or update the manifest's sha256"
        )
    try:
        if manifest.format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript stays supported in 2.x
                module = torch.jit.load(io.BytesIO(data), map_location=device).eval()
            if device == "cpu":
                module = _optimise_script(module)
        else:
            artifact_safety.check_export_archive(url, manifest.program, data)
            with artifact_safety.weights_only_loads():
                module = torch.export.load(io.BytesIO(data)).module().to(device)
    except artifact_safety.UnsafeArtifact as exc:
        raise ArtifactError(str(exc)) from None
    except Exception as exc:
        raise ArtifactError(
            f"artifact {url!r}: cannot load {manifest.program!r} as {manifest.format} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
            "check `format` in the manifest matches how the program was saved"
        ) from exc
    _check_forward(url, manifest, module, device)
    return LoadedArtifact(manifest=manifest, module=module, path=url, device=device)


def _check_forward(url: str, manifest: Manifest, module: Any, device: str) -> None:
    batch = 2
    dummy = torch.zeros((batch, *manifest.observation.shape), dtype=torch.float32, device=device)
    try:
        with torch.inference_mode():
            out = module(dummy)
    except Exception as exc:
        raise ArtifactError(
            f"artifact {url!r}: a forward pass on zeros of shape {list(dummy.shape)} failed "
            f"({type(exc).__name__}: {str(exc)[:300]}); observation.shape in the manifest must match the model input"
        ) from exc
    expected = (batch, manifest.output_size)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ArtifactError(
            f"artifact {url!r}: the model returns {got} for a batch of {batch}, the manifest promises {expected} "
            f"(action {manifest.action.type}, output {manifest.output}); fix action/output in the manifest "
            "or re-export the model"
        )


# --------------------------------------------------------------------------- example models


class _MLP(torch.nn.Module):
    def __init__(self, obs_dim: int, out_dim: int, hidden: int = 64, squash: bool = False) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(obs_dim, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, out_dim),
        )
        self.squash = squash

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return torch.tanh(y) if self.squash else y


def _reference_stats(samples: np.ndarray, bins: int = 10) -> list[dict[str, list[float]]]:
    out = []
    for col in samples.T:
        edges = np.unique(np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, col, side="left"), minlength=len(edges) + 1)
        out.append({"edges": edges.tolist(), "fractions": (counts / counts.sum()).tolist()})
    return out


def write_example_model(
    out_dir: str | Path,
    *,
    kind: Literal["discrete", "continuous"] = "discrete",
    n_actions: int = 4,
    obs_dim: int = 8,
    format: Literal["torchscript", "export"] = "torchscript",
    version: str = "v1",
    seed: int = 0,
    exploration: Exploration | dict[str, Any] | None = None,
    shield: ShieldConfig | dict[str, Any] | None = None,
    name: str = "example-policy",
    costs: list[str] | None = None,
) -> Path:
    """Write a small seeded MLP artifact (obs_dim -> 64 -> 64 -> n_actions) and return its directory.

    Discrete: the output is logits (default exploration softmax, T=1). Continuous: ``n_actions``
    is the action dimension, the output is a tanh-squashed mean in [-1, 1], log_std = -1 (default
    exploration gaussian). Reference drift stats are deciles of 10,000 standard-normal observations,
    which is also the distribution the example model expects.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    model = _MLP(obs_dim, n_actions, squash=(kind == "continuous"))
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[1] if p.ndim == 2 else 1
            p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / math.sqrt(fan_in)))
    model.eval()
    example = torch.zeros(2, obs_dim)
    if format == "torchscript":
        program = "policy.pt"
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript stays supported in 2.x
            torch.jit.save(torch.jit.script(model), buf)
    elif format == "export":
        program = "policy.pt2"
        batch = torch.export.Dim("batch", min=1, max=65536)
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        buf = io.BytesIO()
        torch.export.save(ep, buf)
    else:
        raise ValueError(f"unknown format {format!r}; use 'torchscript' or 'export'")
    data = buf.getvalue()
    (out / program).write_bytes(data)

    samples = np.random.default_rng(seed).standard_normal((10_000, obs_dim))
    if exploration is None:
        exploration = {"kind": "softmax", "temperature": 1.0} if kind == "discrete" else {"kind": "gaussian"}
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "format": format,
        "program": program,
        "observation": {
            "shape": [obs_dim],
            "dtype": "float32",
            "names": [f"f{i}" for i in range(obs_dim)],
            "reference": _reference_stats(samples),
        },
        "exploration": exploration.model_dump() if isinstance(exploration, Exploration) else dict(exploration),
        "costs": list(costs or []),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if kind == "discrete":
        manifest["action"] = {"type": "discrete", "n": n_actions}
        manifest["output"] = "logits"
    elif kind == "continuous":
        manifest["action"] = {"type": "continuous", "low": [-1.0] * n_actions, "high": [1.0] * n_actions}
        manifest["output"] = "mean"
        manifest["log_std"] = [-1.0] * n_actions
    else:
        raise ValueError(f"unknown kind {kind!r}; use 'discrete' or 'continuous'")
    if shield is not None:
        manifest["shield"] = shield.model_dump(exclude_none=True) if isinstance(shield, ShieldConfig) else dict(shield)
    Manifest.model_validate(manifest)  # fail here, not at serve time
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
