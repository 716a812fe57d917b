"""The decision log's columns: the Arrow schemas of its two streams and the row types producers hand in.

Why a module of its own: the schema is the contract between the policy server (which writes),
the router (which writes too), and offline evaluation and training (which read), and it is
versioned (``SCHEMA_VERSION``, docs/decision-log.md). Keeping it apart from the writer's
threads and the readers' filesystems makes a change to it one reviewable diff, and lets the
conversion code, the writer and the readers all import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = [
    "DECISIONS_DIR",
    "DECISION_SCHEMA",
    "FLOAT_LIST",
    "REWARDS_DIR",
    "REWARD_SCHEMA",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_KEY",
    "STREAM_KEY",
    "DecisionBatch",
]

SCHEMA_VERSION = 2
"""Bump on any change of the columns below (see docs/decision-log.md). 2: rewards carry their decision's
attribution (``variant``, ``policy_version``, ``decision_time``), who accepted them (``received_by``) and the
client's ``event_id``; decisions carry their trajectory keys (``episode_id``, ``step``, ``terminal``, from the
request's context) and rewards may mark an episode's end (``terminal``): null for bandit decisions; a decision of a
value-predicting policy (``output: q_values``) carries its ``predicted_value`` (null otherwise); a decision whose
proposed action was outside the action envelope carries it in ``proposed_action`` (null otherwise)."""

SCHEMA_VERSION_KEY = "policy_rollouts.schema_version"
STREAM_KEY = "policy_rollouts.stream"
DECISIONS_DIR = "decisions"
REWARDS_DIR = "rewards"

FLOAT_LIST = pa.list_(pa.float64())

DECISION_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),
        pa.field("policy_version", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("observation", FLOAT_LIST, nullable=False),
        pa.field("action", FLOAT_LIST, nullable=False),
        pa.field("action_index", pa.int64()),
        pa.field("propensity", pa.float64(), nullable=False),
        pa.field("probabilities", FLOAT_LIST),
        pa.field("shield_reasons", pa.list_(pa.string()), nullable=False),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("context_json", pa.string()),
        pa.field("assignment_probability", pa.float64()),
        pa.field("served_by", pa.string()),
        # v2: a sequential decision's trajectory keys, derived by the writer from ``context_json`` (context.episode_id,
        # .step, .terminal; _trajectory.py); null for bandit decisions
        pa.field("episode_id", pa.string()),
        pa.field("step", pa.int64()),
        pa.field("terminal", pa.bool_()),
        # v2: the policy's predicted value (Q) of the served action, for critic-error monitoring; null when the
        # policy predicts none (output logits/mean) or the prediction was not finite
        pa.field("predicted_value", pa.float64()),
        # v2: the action the policy proposed when it was outside the action envelope and the fallback's was served
        # instead (``action``; shield reason "envelope"), like ``action``: [index] or the vector; null otherwise
        pa.field("proposed_action", FLOAT_LIST),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION), STREAM_KEY: DECISIONS_DIR},
)

REWARD_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("time", pa.float64(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("costs", pa.map_(pa.string(), pa.float64())),
        # v2: the decision's attribution, read from its signed request id (policy_server/attribution.py), so a
        # reward accepted by any replica names the variant that decided; null in v1 segments
        pa.field("variant", pa.string()),
        pa.field("policy_version", pa.string()),
        pa.field("decision_time", pa.float64()),
        pa.field("received_by", pa.string()),  # the variant (or "router") of the process that accepted it
        # v2: the client's name for this reward event; several rewards of one decision need distinct ids, and a
        # retried post with the same (request_id, event_id) is a duplicate (the joiner counts it once)
        pa.field("event_id", pa.string()),
        # v2: true when the episode ended at this reward's decision (the client may say so here or in context.terminal)
        pa.field("terminal", pa.bool_()),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION), STREAM_KEY: REWARDS_DIR},
)


@dataclass(frozen=True, slots=True)
class DecisionBatch:
    """One micro-batch of decisions as columns: what the server's hot path hands over (no per-row dicts).

    B rows; each field maps to the column of the same meaning in ``DECISION_SCHEMA``. The writer
    checks and converts it later, off the request path: a batch that does not fit (wrong lengths,
    wrong dtypes) is rejected as a whole and counted in ``DecisionLog.rejected`` by its rows.
    """

    request_ids: list[str]  # B ids
    time: float | np.ndarray  # Unix epoch seconds: one value for the whole batch, or float64 (B,) per row
    policy_version: str
    variant: str
    observations: np.ndarray  # (B, ...) float32 or float64; stored flattened per row as list<float64>
    actions: np.ndarray  # int (B,): discrete, action=[float(k)], action_index=k; float (B, D): continuous
    propensities: np.ndarray  # float64 (B,)
    probabilities: np.ndarray | None  # float64 (B, K), or None (column null for these rows)
    shield_reasons: list[list[str]]  # B lists (usually empty)
    latency_ms: np.ndarray  # float64 (B,)
    context_json: list[str | None] | None = None  # None: null for all rows
    assignment_probability: np.ndarray | None = None  # float64 (B,) or None -> null
    served_by: str | None = None  # one value for the batch, or null
    predicted_value: np.ndarray | None = None  # float64 (B,) (NaN -> null) or None -> null
    proposed_action: np.ndarray | None = None  # float64 (B, D) (a row of NaN -> null; D = 1 discrete) or None -> null
