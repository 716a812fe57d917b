"""Render guardrail PromQL from a manifest: `{{ rollout }}`, `{{ namespace }}`, `{{ variant }}`,
`{{ interval }}` and `{{ params.<name> }}`.

Why a hand-written renderer and not Jinja: the danger here is PromQL injection, not missing
features. A manifest author who can put `"} or vector(0) or up{x="` into a parameter must not be
able to turn a failing guardrail into a passing one. Safe substitution needs to know where each
placeholder sits in the PromQL text (inside a double-quoted, single-quoted or raw string; after
a regex matcher; outside any string), which a generic text engine does not. Jinja would also
let a manifest evaluate expressions inside the operator, and it is a dependency for five names.

Rules, by where the placeholder is:

* inside `"..."` or `'...'`: the value is escaped (backslash, the quote, newlines and other
  control characters) so it stays one string literal whatever it contains;
* inside a string after `=~` or `!~`: the value is also regex-escaped, so it matches literally;
* inside a raw `` `...` `` string: values holding a backtick are refused (raw strings have no
  escapes);
* outside strings (and in comments): the value must be a duration (`5m`), a number or a
  metric/label name; anything else is refused, with the advice to quote the placeholder.

`{{` always opens a placeholder, and a malformed one is an error, never passed through (PromQL
needs `{{` only when a label-matcher brace precedes a placeholder: write `x{{{ name }}="v"}`).

Known variables are also validated on their own: `rollout` must be a Kubernetes object name,
`namespace` and `variant` Kubernetes label-style names, `interval` a PromQL duration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from rollout_operator import api
from rollout_operator.errors import RolloutOperatorError

__all__ = ["TemplateError", "guardrail_variables", "promql_duration", "render"]


class TemplateError(RolloutOperatorError, ValueError):
    """A guardrail query cannot be rendered safely; the message says which placeholder and why."""


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s*\}\}")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_PROMQL_DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")
_NUMBER = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Keywords a name-shaped value could smuggle into the code around it.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"atan2", "start", "end"}
)
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")
_STRING_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _check_variable(name: str, value: str) -> None:
    if name == "rollout":
        if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
            raise TemplateError(f"rollout name {value!r} is not a valid Kubernetes object name")
    elif name in ("namespace", "variant"):
        if len(value) > 63 or not re.fullmatch(_DNS_LABEL, value):
            raise TemplateError(
                f"{name} {value!r} is not a valid Kubernetes name (lower-case letters, digits, '-', at most 63)"
            )
    elif name == "interval" and not _PROMQL_DURATION.fullmatch(value):
        raise TemplateError(f"interval {value!r} is not a PromQL duration such as 30s, 1m or 1m30s")


def _escape_string(value: str, quote: str) -> str:
    out = []
    for char in value:
        if char == quote:
            out.append("\\" + char)
        elif char in _STRING_ESCAPES:
            out.append(_STRING_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def _escape_regex(value: str) -> str:
    return "".join("\\" + c if c in _RE2_SPECIAL else c for c in value)


def _substitute(name: str, value: str, context: str, regex: bool) -> str:
    """`context` is the quote character of the enclosing string, or "" outside strings."""
    if regex:
        value = _escape_regex(value)
    if context in ('"', "'"):
        return _escape_string(value, context)
    if context == "`":
        if "`" in value:
            raise TemplateError(
                f"the value of {{{{ {name} }}}} contains a backtick, which a raw `...` string cannot hold: "
                'put the placeholder in "double quotes" instead'
            )
        return value
    if (
        _PROMQL_DURATION.fullmatch(value)
        or _NUMBER.fullmatch(value)
        or (_IDENTIFIER.fullmatch(value) and value not in _KEYWORDS)
    ):
        return value
    raise TemplateError(
        f"{{{{ {name} }}}} is outside a string literal, so its value must be a duration (5m), a number or "
        f'a metric/label name; got {value!r}: put the placeholder inside quotes, e.g. label="{{{{ {name} }}}}"'
    )


def _opens_regex(rendered: list[str]) -> bool:
    """Whether the code just before a string literal ends in a regex matcher (=~ or !~)."""
    return "".join(rendered).rstrip().endswith(("=~", "!~"))


def render(query: str, variables: Mapping[str, str]) -> str:
    """Substitute every `{{ name }}` in `query` with its escaped value from `variables`.

    Raises `TemplateError` for unknown or malformed placeholders, invalid values, values that
    cannot be placed safely where their placeholder is, and unterminated string literals.
    """
    for name, value in variables.items():
        _check_variable(name, value)
    out: list[str] = []
    context = ""  # quote char of the string we are in; "#" in a comment; "" in code
    regex = False
    i = 0
    while i < len(query):
        char = query[i]
        if char == "{" and query.startswith("{{", i) and not query.startswith("{{{", i):
            match = _PLACEHOLDER.match(query, i)
            if match is None:
                snippet = query[i : i + 30]
                raise TemplateError(
                    f"malformed placeholder at {snippet!r}: write {{{{ name }}}} with a name such as "
                    "rollout, namespace, variant, interval or params.<name>"
                )
            name = match.group(1)
            if name not in variables:
                known = ", ".join(sorted(variables)) or "none"
                raise TemplateError(f"unknown placeholder {{{{ {name} }}}} in guardrail query; known: {known}")
            out.append(_substitute(name, variables[name], "" if context == "#" else context, regex))
            i = match.end()
            continue
        out.append(char)
        i += 1
        if context == "":
            if char in "\"'`":
                regex = _opens_regex(out[:-1])
                context = char
            elif char == "#":
                context = "#"
        elif context == "#":
            if char == "\n":
                context = ""
        elif char == "\\" and context != "`" and i < len(query):
            out.append(query[i])
            i += 1
        elif char == context:
            context, regex = "", False
    if context in ('"', "'", "`"):
        raise TemplateError(f"unterminated {context}-quoted string in guardrail query {query!r}: close the quote")
    return "".join(out)


def promql_duration(text: str) -> str:
    """Convert a Kubernetes-style duration ("90s", "1.5m", "250ms") to PromQL ("1m30s", "250ms").

    PromQL durations take integer amounts only, so fractions are spelled out in smaller units.
    """
    milliseconds = round(api.parse_duration(text).total_seconds() * 1000)
    if milliseconds <= 0:
        raise TemplateError(f"duration {text!r} is shorter than a millisecond; use e.g. 30s")
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        amount, milliseconds = divmod(milliseconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def guardrail_variables(
    rollout: api.PolicyRollout, variant: str = "candidate", params: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables a guardrail query of `rollout` may use, measured on `variant`.

    `params` (a guardrail's or template's parameters) become `params.<name>`.
    """
    variables = {
        "rollout": rollout.metadata.name,
        "namespace": rollout.metadata.namespace,
        "variant": variant,
        "interval": promql_duration(rollout.spec.analysis.interval),
    }
    for key, value in (params or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise TemplateError(
                f"parameter name {key!r} must be letters, digits and '_' (it is used as {{{{ params.{key} }}}})"
            )
        variables[f"params.{key}"] = str(value)
    return variables
