"""TorchServe custom handler: serve a policy artifact with the same request, response and decision rule as
``policy-server serve``.

Why: teams that already run TorchServe can host a policy there and keep the rollout's contract (the
``/v1/act`` body in, action + propensity + policy version out). The artifact is packed in the ``.mar`` under
``policy_artifact/`` (see `policy_server.torchserve.archive`) and loaded with the same `load_artifact` and
`Policy` as the policy server, so both draw actions from identical probabilities. TorchServe's dynamic batch
becomes one `Policy.decide` call.

What it does not do (use ``policy-server serve`` for these): the decision log, the policy server's Prometheus
metrics and the stateful parts of the shield (latency budget, max action delta between calls). The stateless
shield, the manifest's action mask plus per-request masks, is applied by `Policy.decide`.

This file is copied into the archive and imported by TorchServe as the top-level module ``handler``; it must
define exactly one class of its own, and ``policy_server`` must be installed in TorchServe's Python.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
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

    def __init__(self) -> None:
        self.initialized = False
        self.policy: Any = None
        self.manifest: Any = None
        self.rng = np.random.default_rng()

    def initialize(self, context: Any) -> None:
        try:
            from policy_server import artifact, policy
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
        shield = self.manifest.shield
        self.static_mask = (
            np.asarray(shield.action_mask, dtype=bool)
            if shield is not None and shield.action_mask is not None
            else None
        )
        self.initialized = True
        log.info("policy %s %s loaded from %s", self.manifest.name, self.manifest.version, artifact_dir)

    def _parse(self, row: dict[str, Any]) -> tuple[dict[str, Any] | None, np.ndarray | None, dict[str, Any] | None]:
        """(body, observation) or an error for one request of the batch."""
        body = row.get("body", row.get("data"))
        if isinstance(body, bytes | bytearray):
            try:
                body = json.loads(body)
            except ValueError:
                return None, None, _bad_request('the body must be JSON: {"observation": [...]}', "body")
        if not isinstance(body, dict):
            return None, None, _bad_request('the body must be a JSON object: {"observation": [...]}', "body")
        if "observation" not in body:
            return None, None, _bad_request("missing field 'observation'", "observation")
        try:
            obs = np.asarray(body["observation"], dtype=np.float32)
        except (TypeError, ValueError):
            return None, None, _bad_request("'observation' must be an array of numbers", "observation")
        if obs.size != self.obs_size:
            return (
                None,
                None,
                _bad_request(
                    f"'observation' has {obs.size} numbers, the policy expects shape {list(self.obs_shape)}",
                    "observation",
                ),
            )
        if not np.all(np.isfinite(obs)):
            return None, None, _bad_request("'observation' contains NaN or infinity", "observation")
        request_id = body.get("request_id")
        if request_id is not None and not isinstance(request_id, str):
            return None, None, _bad_request("'request_id' must be a string", "request_id")
        context = body.get("context")
        if context is not None and not isinstance(context, dict):
            return None, None, _bad_request("'context' must be a JSON object", "context")
        return body, obs.reshape(self.obs_shape), None

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Decide for TorchServe's whole batch at once; a bad request gets a 400 without failing the others."""
        if not self.initialized:
            raise RuntimeError("PolicyHandler.handle called before initialize")
        responses: list[Any] = [None] * len(data)
        valid: list[tuple[int, dict[str, Any]]] = []
        observations: list[np.ndarray] = []
        for idx, row in enumerate(data):
            body, obs, error = self._parse(row)
            if error is not None:
                context.set_response_status(400, error["error"], idx)
                responses[idx] = json.dumps(error)
                continue
            valid.append((idx, body))
            observations.append(obs)
        if valid:
            batch = np.stack(observations)
            masks = (
                None
                if self.static_mask is None
                else np.broadcast_to(self.static_mask, (len(batch), self.static_mask.size))
            )
            decision = self.policy.decide(batch, self.rng, masks)
            for k, (idx, body) in enumerate(valid):
                responses[idx] = json.dumps(self._response(body, decision, k))
        for idx in range(len(data)):
            context.set_response_content_type(idx, "application/json")
        return responses

    def _response(self, body: dict[str, Any], decision: Any, k: int) -> dict[str, Any]:
        action = decision.actions[k]
        probabilities = decision.probabilities[k] if decision.probabilities is not None else None
        return {
            "request_id": body.get("request_id") or uuid.uuid4().hex,
            "action": np.asarray(action).tolist(),
            "propensity": float(decision.propensities[k]),
            "probabilities": probabilities.tolist() if probabilities is not None else None,
            "policy_version": self.manifest.version,
            "variant": VARIANT,
            "shield": {"applied": False, "reasons": []},
        }
