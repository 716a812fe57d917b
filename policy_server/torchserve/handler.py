"""TorchServe custom handler: serve a policy artifact with the same request, response and decision rule as
``policy-server serve``.

Why: teams that already run TorchServe can host a policy there and keep the rollout's contract (the
``/v1/act`` body in, action + propensity + policy version out). The artifact is packed in the ``.mar`` under
``policy_artifact/`` (see `policy_server.torchserve.archive`) and loaded with the same `load_artifact` and
`Policy` as the policy server, so both draw actions from identical probabilities. TorchServe's dynamic batch
becomes one forward pass and one shielded choice (`Shield.run`).

The shield is the policy server's own `policy_server.shield.Shield`: the artifact's action mask and bounds,
``context.action_mask``, ``context.entity`` + ``max_delta``, the fallback for NaN/inf model output. Each reply
carries ``shield.intervened`` and ``shield.reasons``. Bodies are checked by the policy server's own
`policy_server.validation.parse_act`, so a bad request gets the same 4xx status and message.

Not available here (use ``policy-server serve`` for these): the decision log, the policy server's Prometheus
metrics, the latency-budget fallback (TorchServe does not tell the handler when a request arrived),
``max_delta`` across workers unless the caller sends ``context.current_action`` (each worker remembers only
the entities it served), the 409 for a reused ``request_id``, and rewards (no ``/v1/reward``, so no signed
``reward_id`` in the replies).

Settings come from the archive's model-config YAML (``handler:`` section, written by
`policy_server.torchserve.archive`): ``seed`` for the exploration RNG (reproducible draws; default random)
and ``torch_threads`` (default 1: a small MLP gains nothing from intra-op threads, TorchServe scales with
workers instead).

This file is copied into the archive and imported by TorchServe as the top-level module ``handler``; it must
define exactly one class of its own, and ``policy_server`` must be installed in TorchServe's Python.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

log = logging.getLogger(__name__)

ARTIFACT_FOLDER = "policy_artifact"  # kept equal to policy_server.torchserve.archive.ARTIFACT_FOLDER
VARIANT = "torchserve"


class PolicyHandler:
    """Entry point TorchServe instantiates once per worker: ``initialize(context)`` then ``handle(data, context)``."""

    def __init__(self) -> None:
        self.initialized = False
        self.policy: Any = None
        self.manifest: Any = None
        self.shield: Any = None
        self.rng = np.random.default_rng()

    def initialize(self, context: Any) -> None:
        try:
            from policy_server import artifact, policy, shield, validation
        except ImportError as error:  # the worker's Python lacks the package
            raise RuntimeError(
                "the policy handler needs the policy_server package in TorchServe's Python environment: "
                "pip install 'policy-rollouts[server]' there"
            ) from error
        import torch

        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        torch.set_num_threads(int(settings.get("torch_threads", 1)))
        self.rng = np.random.default_rng(settings.get("seed"))
        model_dir = Path(context.system_properties["model_dir"])
        artifact_dir = model_dir / ARTIFACT_FOLDER
        if not (artifact_dir / "manifest.json").is_file():
            raise RuntimeError(
                f"{artifact_dir} has no manifest.json: build the archive with "
                "`python -m policy_server.torchserve.archive` (or `make mar`), not by hand"
            )
        loaded = artifact.load_artifact(str(artifact_dir))
        self.validation = validation
        self.manifest = loaded.manifest
        self.policy = policy.Policy.from_artifact(loaded)
        self.n_actions = self.policy.n_outputs if self.policy.discrete else None
        self.shield = shield.Shield(self.policy)
        self.initialized = True
        log.info("policy %s %s loaded from %s", self.manifest.name, self.manifest.version, artifact_dir)

    def _parse(self, row: dict[str, Any]) -> Any:
        """The `validation.ActRequest` of one batch row; raises `validation.BadRequest`."""
        body = row.get("body", row.get("data"))
        if body is None:
            body = b""
        elif isinstance(body, str):  # a text/* body, passed on undecoded
            body = body.encode()
        elif not isinstance(body, bytes | bytearray):
            # TorchServe already decoded an application/json body: re-encode it for the one shared validator.
            try:
                body = orjson.dumps(body)
            except orjson.JSONEncodeError as error:
                raise self.validation.BadRequest(f"body is not valid JSON ({error}); send a JSON object") from None
        request = self.validation.parse_act(bytes(body), self.policy.obs_shape, self.n_actions)
        if request.mask is not None:
            problem = self.shield.check_request_mask(request.mask)
            if problem:
                raise self.validation.BadRequest(problem)
        return request

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Decide for TorchServe's whole batch at once; a bad request gets its 4xx without failing the others."""
        if not self.initialized:
            raise RuntimeError("PolicyHandler.handle called before initialize")
        responses: list[Any] = [None] * len(data)
        valid: list[tuple[int, Any]] = []
        for idx, row in enumerate(data):
            context.set_response_content_type(idx, "application/json")
            try:
                valid.append((idx, self._parse(row)))
            except self.validation.BadRequest as error:
                context.set_response_status(error.status, str(error), idx)
                responses[idx] = orjson.dumps({"error": str(error)})
        if valid:
            requests = [request for _, request in valid]
            raw = self.policy.forward(np.stack([r.observation for r in requests]))
            result = self.shield.run(
                raw, self.rng, masks=[r.mask for r in requests], entities=[r.entity for r in requests]
            )
            actions = result.decision.actions.tolist()
            propensities = result.decision.propensities.tolist()
            version = self.manifest.version
            for k, (idx, request) in enumerate(valid):
                reasons = result.reasons[k]
                responses[idx] = orjson.dumps(
                    {
                        "request_id": request.request_id or uuid.uuid4().hex,
                        "action": actions[k],
                        "propensity": propensities[k],
                        "policy_version": version,
                        "variant": VARIANT,
                        "shield": {"intervened": bool(reasons), "reasons": reasons},
                    }
                )
        return responses
