"""TorchServe custom handler: serve a policy artifact with the same request, response and decision rule as
``policy-server serve``.

Why: teams that already run TorchServe can host a policy there and keep the rollout's contract (the
``/v1/act`` body in, action + propensity + policy version out). The artifact is packed in the ``.mar`` under
``policy_artifact/`` (see `policy_server.torchserve.archive`) and loaded with the same `load_artifact` and
`Policy` as the policy server, so both draw actions from identical probabilities. TorchServe's dynamic batch
becomes one forward pass and one shielded choice (`Shield.run`).

The shield is the policy server's own `policy_server.shield.Shield`: the artifact's action mask and bounds,
``context.action_mask``, ``context.entity`` + ``max_delta``, the fallback for NaN/inf model output. Each reply
carries ``shield.reasons``. Not available here (use ``policy-server serve`` for these): the decision log, the
policy server's Prometheus metrics, the latency-budget fallback (TorchServe does not tell the handler when a
request arrived) and ``max_delta`` across workers (each worker remembers only the entities it served).

This file is copied into the archive and imported by TorchServe as the top-level module ``handler``; it must
define exactly one class of its own, and ``policy_server`` must be installed in TorchServe's Python.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ARTIFACT_FOLDER = "policy_artifact"  # kept equal to policy_server.torchserve.archive.ARTIFACT_FOLDER
VARIANT = "torchserve"


def _bad_request(message: str, field: str) -> dict[str, Any]:
    return {"error": message, "field": field}


class PolicyHandler:
    """Entry point TorchServe instantiates once per worker: ``initialize(context)`` then ``handle(data, context)``."""

    @dataclass(frozen=True)
    class Request:
        """One parsed request (nested: TorchServe wants exactly one top-level class in this module)."""

        request_id: str
        observation: np.ndarray
        mask: np.ndarray | None  # context.action_mask
        entity: str | None  # context.entity, for the shield's max_delta

    def __init__(self) -> None:
        self.initialized = False
        self.policy: Any = None
        self.manifest: Any = None
        self.shield: Any = None
        self.rng = np.random.default_rng()

    def initialize(self, context: Any) -> None:
        try:
            from policy_server import artifact, policy
            from policy_server import shield as shield_module
        except ImportError as error:  # the worker's Python lacks the package
            raise RuntimeError(
                "the policy handler needs the policy_server package in TorchServe's Python environment: "
                "pip install 'policy-rollouts[server]' there"
            ) from error
        import torch

        # A small MLP gains nothing from intra-op threads; TorchServe scales with workers instead.
        torch.set_num_threads(int(os.environ.get("POLICY_TORCH_THREADS", "1")))
        model_dir = Path(context.system_properties["model_dir"])
        artifact_dir = model_dir / ARTIFACT_FOLDER
        if not (artifact_dir / "manifest.json").is_file():
            raise RuntimeError(
                f"{artifact_dir} has no manifest.json: build the archive with "
                "`python -m policy_server.torchserve.archive` (or `make mar`), not by hand"
            )
        loaded = artifact.load_artifact(str(artifact_dir))
        self.manifest = loaded.manifest
        self.policy = policy.Policy.from_artifact(loaded)
        self.obs_shape = tuple(self.manifest.observation.shape)
        self.obs_size = int(np.prod(self.obs_shape))
        self.shield = shield_module.Shield(self.policy)
        self.initialized = True
        log.info("policy %s %s loaded from %s", self.manifest.name, self.manifest.version, artifact_dir)

    def _parse(self, row: dict[str, Any]) -> PolicyHandler.Request | dict[str, Any]:
        """The request of one batch row, or the error to answer it with."""
        body = row.get("body", row.get("data"))
        if isinstance(body, bytes | bytearray):
            try:
                body = json.loads(body)
            except ValueError:
                return _bad_request('the body must be JSON: {"observation": [...]}', "body")
        if not isinstance(body, dict):
            return _bad_request('the body must be a JSON object: {"observation": [...]}', "body")
        if "observation" not in body:
            return _bad_request("missing field 'observation'", "observation")
        try:
            obs = np.asarray(body["observation"], dtype=np.float32)
        except (TypeError, ValueError):
            return _bad_request("'observation' must be an array of numbers", "observation")
        if obs.size != self.obs_size:
            message = f"'observation' has {obs.size} numbers, the policy expects shape {list(self.obs_shape)}"
            return _bad_request(message, "observation")
        if not np.all(np.isfinite(obs)):
            return _bad_request("'observation' contains NaN or infinity", "observation")
        request_id = body.get("request_id")
        if request_id is not None and not isinstance(request_id, str):
            return _bad_request("'request_id' must be a string", "request_id")
        context = body.get("context") or {}
        if not isinstance(context, dict):
            return _bad_request("'context' must be a JSON object", "context")
        mask = context.get("action_mask")
        if mask is not None:
            if not self.policy.discrete:
                return _bad_request("context.action_mask is for discrete actions only", "context.action_mask")
            if (
                not isinstance(mask, list)
                or len(mask) != self.policy.n_outputs
                or not all(isinstance(m, bool) for m in mask)
            ):
                message = f"context.action_mask must be a list of {self.policy.n_outputs} booleans"
                return _bad_request(message, "context.action_mask")
            mask = np.asarray(mask, dtype=bool)
            problem = self.shield.check_request_mask(mask)
            if problem is not None:
                return _bad_request(problem, "context.action_mask")
        entity = context.get("entity")
        if entity is not None and not isinstance(entity, str):
            return _bad_request("context.entity must be a string", "context.entity")
        return PolicyHandler.Request(request_id or uuid.uuid4().hex, obs.reshape(self.obs_shape), mask, entity)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Decide for TorchServe's whole batch at once; a bad request gets a 400 without failing the others."""
        if not self.initialized:
            raise RuntimeError("PolicyHandler.handle called before initialize")
        responses: list[Any] = [None] * len(data)
        valid: list[tuple[int, PolicyHandler.Request]] = []
        for idx, row in enumerate(data):
            parsed = self._parse(row)
            context.set_response_content_type(idx, "application/json")
            if isinstance(parsed, dict):
                context.set_response_status(400, parsed["error"], idx)
                responses[idx] = json.dumps(parsed)
            else:
                valid.append((idx, parsed))
        if valid:
            requests = [request for _, request in valid]
            raw = self.policy.forward(np.stack([r.observation for r in requests]))
            result = self.shield.run(
                raw, self.rng, masks=[r.mask for r in requests], entities=[r.entity for r in requests]
            )
            for k, (idx, request) in enumerate(valid):
                responses[idx] = json.dumps(self._response(request, result, k))
        return responses

    def _response(self, request: PolicyHandler.Request, result: Any, k: int) -> dict[str, Any]:
        decision = result.decision
        probabilities = decision.probabilities[k].tolist() if decision.probabilities is not None else None
        return {
            "request_id": request.request_id,
            "action": np.asarray(decision.actions[k]).tolist(),
            "propensity": float(decision.propensities[k]),
            "probabilities": probabilities,
            "policy_version": self.manifest.version,
            "variant": VARIANT,
            "shield": {"reasons": result.reasons[k]},
        }
