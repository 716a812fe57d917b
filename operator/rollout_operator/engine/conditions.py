"""Guardrail pass conditions: `"< 0.01"`, `">= 0.95"` and friends.

A tiny comparison language instead of an expression evaluator on purpose: guardrails are
written by users into a cluster object, and a comparison against a literal is all a
guardrail needs (Argo's `successCondition` is richer but then needs sandboxing).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable

__all__ = ["evaluate_condition", "parse_condition"]

_CONDITION = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*$")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def parse_condition(condition: str) -> tuple[str, float]:
    """Split a condition into its operator and threshold, or explain what is wrong."""
    match = _CONDITION.match(condition)
    if match is None:
        raise ValueError(
            f"invalid guardrail condition {condition!r}: write an operator (<, <=, >, >=, ==, !=) "
            "followed by a number, e.g. '< 0.01'"
        )
    return match.group(1), float(match.group(2))


def evaluate_condition(value: float, condition: str) -> bool:
    """True when `value` satisfies `condition`. NaN satisfies nothing (it never passes)."""
    op, threshold = parse_condition(condition)
    if math.isnan(value):
        return False
    return _OPERATORS[op](value, threshold)
