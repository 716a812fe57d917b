"""Hand-written validation of /v1/act and /v1/reward bodies.

Why not pydantic here: validating an 8-float observation through a pydantic model costs more
than the forward pass; these checks are a handful of ``type(x) is`` tests. Every failure raises
:class:`BadRequest` with a message that names the field at fault and says what to send instead.

What is accepted can always be logged: ``context`` is serialised here, once, so that a context
the decision log could not store (nested deeper than ``MAX_CONTEXT_DEPTH``, orjson's limit for
writing JSON) is a 400 before the response, never a failure after it. Rewards and costs are
bounded in magnitude (``Limits``) so that a single huge value cannot turn the reward and cost
sums into +Inf for the life of the process.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from policy_server.errors import PolicyServerError

__all__ = [
    "MAX_CONTEXT_DEPTH",
    "ActRequest",
    "BadRequest",
    "Limits",
    "RewardRequest",
    "parse_act",
    "parse_json",
    "parse_reward",
]

ACT_FIELDS = ("observation", "request_id", "context", "shadow_of")
REWARD_FIELDS = ("request_id", "reward", "costs", "event_id", "terminal")
TRAJECTORY_KEYS = frozenset(("episode_id", "step", "terminal"))  # context keys of a sequential decision
MAX_STEP = 2**31 - 1
MAX_ID_LEN = 128
MAX_SIGNED_ID_LEN = 512  # a reward_id signs the client's id, its variant, version and time (attribution.py)
MAX_ENTITY_LEN = 256
_F32_MAX = float(np.finfo(np.float32).max)
_COST_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# orjson parses JSON nested up to 1,024 levels but writes at most 254: a context nested deeper was
# accepted, answered 200 and then could not be logged. One limit now: what cannot be written is refused.
MAX_CONTEXT_DEPTH = 254
DEFAULT_MAX_REWARD_ABS = 1e9
DEFAULT_MAX_COST_ABS = 1e9


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on client-supplied magnitudes (configurable per server; 400 beyond)."""

    max_reward_abs: float = DEFAULT_MAX_REWARD_ABS
    max_cost_abs: float = DEFAULT_MAX_COST_ABS


class BadRequest(PolicyServerError):
    """A client error: ``status`` and a message naming what to fix."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class ActRequest:
    observation: list[Any]  # validated (nested) list; the batch becomes one float32 array
    request_id: str | None
    context: dict[str, Any] | None
    mask: np.ndarray | None
    entity: str | None
    context_json: str | None = None  # the context as the decision log stores it
    current_action: int | list[float] | None = None  # context.current_action: the entity's action now (shield)
    shadow_of: str | None = None  # the router's mirror of a decision served by another variant (not logged here)


@dataclass(slots=True)
class RewardRequest:
    request_id: str
    reward: float
    costs: dict[str, float] | None
    event_id: str | None = None
    terminal: bool | None = None  # the episode ended with this decision's step


def _type(x: Any) -> str:
    return (
        "null"
        if x is None
        else {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(x), type(x).__name__)
    )


def parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequest("empty body: send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise BadRequest(
                f"body is nested more than 1024 levels deep; 'context' may be nested at most {MAX_CONTEXT_DEPTH} "
                "levels: flatten it"
            ) from None
        raise BadRequest(
            f"body is not valid JSON ({exc}); send a UTF-8 JSON object (NaN/Infinity are not JSON numbers)"
        ) from None
    if type(data) is not dict:
        raise BadRequest(f"body must be a JSON object, got {_type(data)}")
    return data


def _unknown(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise BadRequest(f"unknown field {key!r} in the {where} body; allowed fields: {', '.join(allowed)}")


def _request_id(value: Any, required: bool, max_len: int = MAX_ID_LEN, field: str = "request_id") -> str | None:
    if value is None:
        if required:
            raise BadRequest(f"field '{field}' is required: send the request_id returned by /v1/act")
        return None
    if type(value) is not str or not 0 < len(value) <= max_len:
        raise BadRequest(f"'{field}' must be a non-empty string of at most {max_len} characters")
    return value


def _observation(value: Any, shape: tuple[int, ...]) -> list[Any]:
    """The validated observation as (nested) lists of finite float32-range numbers.

    Plain Python checks: per request they cost less than creating numpy arrays; the batch is
    converted with one ``np.array`` call.
    """
    if value is None:
        raise BadRequest(f"field 'observation' is required: an array of shape {list(shape)} of numbers")
    if len(shape) == 1:
        n = shape[0]
        if type(value) is not list:
            raise BadRequest(f"'observation' must be an array of {n} numbers, got {_type(value)}")
        if len(value) != n:
            raise BadRequest(f"'observation' has {len(value)} values, the model expects {n} (shape {list(shape)})")
        for i, x in enumerate(value):
            t = type(x)
            if (t is not float and t is not int) or not -_F32_MAX <= x <= _F32_MAX:
                raise _bad_number(x, f"observation[{i}]")
    else:
        _check_nested(value, shape, "observation")
    return value


def _bad_number(x: Any, path: str) -> BadRequest:
    if type(x) in (int, float):
        return BadRequest(f"'{path}' is outside the float32 range; send finite numbers below 3.4e38")
    return BadRequest(f"'{path}' is {_type(x)}, expected a number")


def _check_nested(value: Any, shape: tuple[int, ...], path: str, full: tuple[int, ...] | None = None) -> None:
    full = full or shape
    if type(value) is not list:
        raise BadRequest(f"'{path}' must be an array of {shape[0]} elements, got {_type(value)} (shape {list(full)})")
    if len(value) != shape[0]:
        raise BadRequest(f"'{path}' has {len(value)} elements, expected {shape[0]} (shape {list(full)})")
    for i, x in enumerate(value):
        if len(shape) > 1:
            _check_nested(x, shape[1:], f"{path}[{i}]", full)
        elif (type(x) is not float and type(x) is not int) or not -_F32_MAX <= x <= _F32_MAX:
            raise _bad_number(x, f"{path}[{i}]")


def parse_act(body: bytes, shape: tuple[int, ...], n_actions: int | None) -> ActRequest:
    """Validate a /v1/act body; ``n_actions`` is None for continuous actions."""
    data = parse_json(body)
    if len(data) > len(ACT_FIELDS) or any(k not in ACT_FIELDS for k in data):
        _unknown(data, ACT_FIELDS, "/v1/act")
    obs = _observation(data.get("observation"), shape)
    rid = _request_id(data.get("request_id"), required=False)
    shadow_of = _request_id(data.get("shadow_of"), required=False, max_len=MAX_SIGNED_ID_LEN, field="shadow_of")
    if shadow_of is not None and rid is not None:
        raise BadRequest("send either 'request_id' or 'shadow_of' (a mirrored request answers under the served id)")
    context = data.get("context")
    mask = entity = None
    if context is not None:
        if type(context) is not dict:
            raise BadRequest(f"'context' must be an object, got {_type(context)}")
        if "action_mask" in context:
            mask = _mask(context["action_mask"], n_actions)
        if "entity" in context:
            e = context["entity"]
            if type(e) is int:
                e = str(e)
            if type(e) is not str or not 0 < len(e) <= MAX_ENTITY_LEN:
                raise BadRequest(
                    f"'context.entity' must be a non-empty string (or integer) of at most {MAX_ENTITY_LEN} characters"
                )
            entity = e
        if not TRAJECTORY_KEYS.isdisjoint(context):  # one C call when the context has no trajectory keys
            _trajectory(context)
        current = context.get("current_action")
        if current is not None:
            current = _current_action(current, n_actions)
        try:
            context_json = orjson.dumps(context).decode()
        except orjson.JSONEncodeError:
            raise BadRequest(
                f"'context' is nested more than {MAX_CONTEXT_DEPTH} levels deep and cannot be logged; flatten it"
            ) from None
        return ActRequest(obs, rid, context, mask, entity, context_json, current, shadow_of)
    return ActRequest(obs, rid, context, mask, entity, shadow_of=shadow_of)


def _trajectory(context: dict[str, Any]) -> None:
    """``context.episode_id``, ``step`` and ``terminal``: checked here, logged as columns by the writer."""
    episode, step = context.get("episode_id"), context.get("step")
    if episode is None or step is None:
        raise BadRequest("'context.episode_id' and 'context.step' go together: send both for a sequential decision")
    if type(episode) is int:
        episode = str(episode)
    if type(episode) is not str or not 0 < len(episode) <= MAX_ENTITY_LEN:
        raise BadRequest(
            f"'context.episode_id' must be a non-empty string (or integer) of at most {MAX_ENTITY_LEN} characters"
        )
    if type(step) is not int or not 0 <= step <= MAX_STEP:
        raise BadRequest(f"'context.step' must be an integer in [0, {MAX_STEP}] (the step within the episode)")
    terminal = context.get("terminal")
    if terminal is not None and type(terminal) is not bool:
        raise BadRequest(f"'context.terminal' must be true or false (true on the last step), got {_type(terminal)}")


def _current_action(value: Any, n_actions: int | None) -> int | list[float]:
    """``context.current_action``: an action index (discrete) or a list of finite numbers (continuous)."""
    if n_actions is not None:
        if type(value) is not int or not 0 <= value < n_actions:
            raise BadRequest(f"'context.current_action' must be an action index in [0, {n_actions - 1}]")
        return value
    if (
        type(value) is not list
        or not value
        or any((type(x) is not float and type(x) is not int) or not math.isfinite(x) for x in value)
    ):
        raise BadRequest("'context.current_action' must be a non-empty array of finite numbers (the action now)")
    return [float(x) for x in value]


def _mask(value: Any, n_actions: int | None) -> np.ndarray:
    if n_actions is None:
        raise BadRequest("'context.action_mask' is for discrete actions; this policy's actions are continuous")
    if type(value) is not list or len(value) != n_actions or any(type(x) is not bool for x in value):
        raise BadRequest(f"'context.action_mask' must be an array of {n_actions} booleans (true = allowed)")
    if not any(value):
        raise BadRequest("'context.action_mask' allows no action; set at least one entry to true")
    return np.array(value, dtype=bool)


def _number(value: Any, field: str, bound: float) -> float:
    if type(value) is not float and type(value) is not int:
        raise BadRequest(f"'{field}' must be a number, got {_type(value)}")
    try:
        f = float(value)
    except OverflowError:  # an integer beyond the float range
        f = math.inf
    if not math.isfinite(f) or abs(f) > bound:
        raise BadRequest(
            f"'{field}' is {value:.3g}, outside [-{bound:g}, {bound:g}]; send a smaller magnitude "
            "(or raise the server's --max-reward-abs / --max-cost-abs)"
        )
    return f


def parse_reward(body: bytes, limits: Limits = Limits()) -> RewardRequest:
    """Validate a /v1/reward body; magnitudes beyond ``limits`` are refused (metrics stay finite)."""
    data = parse_json(body)
    _unknown(data, REWARD_FIELDS, "/v1/reward")
    rid = _request_id(data.get("request_id"), required=True, max_len=MAX_SIGNED_ID_LEN)
    event_id = _request_id(data.get("event_id"), required=False, field="event_id")
    if "reward" not in data:
        raise BadRequest("field 'reward' is required: a finite number")
    reward = _number(data["reward"], "reward", limits.max_reward_abs)
    costs = data.get("costs")
    if costs is not None:
        if type(costs) is not dict:
            raise BadRequest(f"'costs' must be an object of name -> number, got {_type(costs)}")
        for name, value in costs.items():
            if not _COST_NAME.fullmatch(name):
                raise BadRequest(f"cost name {name!r} must match [A-Za-z_][A-Za-z0-9_]{{0,63}}")
            costs[name] = _number(value, f"costs.{name}", limits.max_cost_abs)
    terminal = data.get("terminal")
    if terminal is not None and type(terminal) is not bool:
        raise BadRequest(f"'terminal' must be true or false (true: the episode ended here), got {_type(terminal)}")
    assert rid is not None
    return RewardRequest(rid, reward, costs, event_id, terminal)
