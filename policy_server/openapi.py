"""OpenAPI 3.1 description of the policy server's HTTP API (served at GET /openapi.json).

Written by hand because the server has no framework to derive it from; tests check that every
route the server answers is described and that real responses validate against these schemas.
"""

from __future__ import annotations

from typing import Any

__all__ = ["document"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what was wrong and how to fix it"}},
}
_NUMBER_ARRAY: dict[str, Any] = {
    "description": "nested arrays of finite numbers with the model's observation shape (GET /v1/model)",
    "type": "array",
    "items": {"anyOf": [{"type": "number"}, {"$ref": "#/components/schemas/Observation"}]},
}
_SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "Observation": _NUMBER_ARRAY,
    "ActRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["observation"],
        "properties": {
            "observation": {"$ref": "#/components/schemas/Observation"},
            "request_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "generated (signed) if absent; a chosen id must not start with 'r1.' and gets a "
                "signed reward_id in the response",
            },
            "context": {
                "type": "object",
                "description": "free-form, logged as JSON; these keys are read by the shield",
                "properties": {
                    "entity": {
                        "type": ["string", "integer"],
                        "description": "key for the max-delta shield (last action per entity)",
                    },
                    "episode_id": {
                        "type": ["string", "integer"],
                        "description": "a sequential decision's episode (with step); logged as column episode_id",
                    },
                    "step": {"type": "integer", "minimum": 0, "description": "the decision's step in its episode"},
                    "terminal": {"type": "boolean", "description": "true on the episode's last step"},
                    "current_action": {
                        "oneOf": [{"type": "integer", "minimum": 0}, {"type": "array", "items": {"type": "number"}}],
                        "description": "the entity's action now, as the caller's world has it; the max-delta shield "
                        "bounds the new action around it on any replica (else: this process's memory of the entity)",
                    },
                    "envelope_spent": {
                        "type": "number",
                        "minimum": 0,
                        "description": "the entity's spend within the envelope budget's window, as the caller's "
                        "world has it; makes the budget exact on any replica (else: this process's memory)",
                    },
                    "action_mask": {
                        "type": "array",
                        "items": {"type": "boolean"},
                        "description": "discrete actions only; true = allowed; ANDed with the artifact's mask",
                    },
                },
            },
        },
    },
    "ActResponse": {
        "type": "object",
        "required": ["request_id", "action", "propensity", "policy_version", "variant", "shield"],
        "properties": {
            "request_id": {
                "type": "string",
                "description": "the decision's id; a generated one is signed: post it to /v1/reward on any replica",
            },
            "reward_id": {
                "type": "string",
                "description": "only for a client-chosen request_id: its signed form, accepted by any replica",
            },
            "action": {
                "oneOf": [{"type": "integer", "minimum": 0}, {"type": "array", "items": {"type": "number"}}],
                "description": "action index (discrete) or vector (continuous)",
            },
            "propensity": {
                "type": "number",
                "minimum": 0,
                "description": "probability (discrete) or density (continuous) of the served action under the "
                "shielded behaviour rule",
            },
            "predicted_value": {
                "type": ["number", "null"],
                "description": "only for artifacts with output q_values: the model's Q-value of the served action "
                "(null if not finite); the signed id carries it to the reward (docs/policy-server.md, critic error)",
            },
            "policy_version": {"type": "string"},
            "variant": {"type": "string"},
            "shield": {
                "type": "object",
                "required": ["intervened", "reasons"],
                "properties": {
                    "intervened": {"type": "boolean"},
                    "reasons": {
                        "type": "array",
                        "items": {
                            "enum": [
                                "action_mask",
                                "bounds",
                                "max_delta",
                                "non_finite_output",
                                "latency_budget",
                                "envelope",
                            ]
                        },
                    },
                },
            },
        },
    },
    "RewardRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["request_id", "reward"],
        "properties": {
            "request_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 512,
                "description": "a signed id (request_id or reward_id of the decision's response), accepted by any "
                "server or router of the rollout; or a bare client-chosen id, accepted by the server that served it",
            },
            "event_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "names this reward event: several rewards of one decision need distinct event_ids; "
                "a retry with the same one is a duplicate",
            },
            "reward": {"type": "number"},
            "terminal": {"type": "boolean", "description": "true: the episode ended at this reward's decision"},
            "costs": {
                "type": "object",
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
                "additionalProperties": {"type": "number"},
                "description": "a cost > 0 counts as a constraint violation",
            },
        },
    },
    "Model": {
        "type": "object",
        "required": ["name", "version", "observation", "action", "exploration", "variant"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "format": {"enum": ["torchscript", "export"]},
            "observation": {
                "type": "object",
                "required": ["shape"],
                "properties": {
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                    "dtype": {"const": "float32"},
                    "names": {"type": ["array", "null"], "items": {"type": "string"}},
                },
            },
            "action": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["type", "n"],
                        "properties": {"type": {"const": "discrete"}, "n": {"type": "integer", "minimum": 1}},
                    },
                    {
                        "type": "object",
                        "required": ["type", "low", "high"],
                        "properties": {
                            "type": {"const": "continuous"},
                            "low": {"type": "array", "items": {"type": "number"}},
                            "high": {"type": "array", "items": {"type": "number"}},
                        },
                    },
                ]
            },
            "output": {"enum": ["logits", "q_values", "mean"]},
            "exploration": {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["greedy", "epsilon_greedy", "softmax", "gaussian"]},
                    "epsilon": {"type": "number"},
                    "temperature": {"type": "number"},
                },
            },
            "shield": {"type": "object"},
            "costs": {"type": "array", "items": {"type": "string"}},
            "variant": {"type": "string"},
        },
    },
    "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_ERRORS = {
    "400": _json(
        "Error",
        "malformed JSON, missing/unknown field, wrong shape or type, non-finite number, a context nested more than "
        "254 levels, a reward or cost beyond the server's magnitude limit (1e9 by default)",
    ),
    "405": _json("Error", "wrong method"),
    "408": _json("Error", "headers or body not complete in time (10 s / 30 s by default); the connection is closed"),
    "413": _json("Error", "body larger than the limit (1 MiB by default)"),
    "500": _json("Error", "the decision could not be logged, so it was not served (not_logged)"),
    "503": _json(
        "Error", "model not loaded and warmed yet, shutting down, or (--durable) the log could not commit in time"
    ),
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "policy-server",
            "version": "1",
            "description": "Serve a reinforcement-learning policy: decisions with propensities, rewards, health, "
            "metrics (contract v1, docs/metrics.md). Unknown paths answer 404 with an Error body.",
        },
        "paths": {
            "/v1/model": {
                "get": {"summary": "Describe the served policy", "responses": {"200": _json("Model", "the model")}}
            },
            "/v1/act": {
                "post": {
                    "summary": "Decide an action for one observation",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ActRequest"}}},
                    },
                    "responses": {
                        "200": _json("ActResponse", "the served action"),
                        "409": _json("Error", "request_id already used"),
                        **_ERRORS,
                    },
                }
            },
            "/v1/reward": {
                "post": {
                    "summary": "Report the reward (and costs) of a decision",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RewardRequest"}}},
                    },
                    "responses": {
                        "202": _json("Status", "recorded"),
                        "404": _json(
                            "Error", "request_id not issued by this rollout (or a bare client id not served here)"
                        ),
                        "409": _json("Error", "this reward (request_id, event_id) was already recorded here"),
                        "410": _json("Error", "the decision is older than the server's --max-reward-age-s"),
                        **_ERRORS,
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json("Status", "alive")}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: model loaded and warmed",
                    "responses": {
                        "200": _json("Status", "ready"),
                        "503": _json("Status", "loading, failed, stopping, or log_failing (--on-log-failure unready)"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (contract v1)",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "503": _json("Error", "not ready"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
        },
        "components": {"schemas": _SCHEMAS},
    }
