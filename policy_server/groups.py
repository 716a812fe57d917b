"""Fairness groups: which group a decision belongs to, from one key of its request context.

Why a bounded, configured list: the group becomes a Prometheus label (``policy_group_*``) and an
extra of the signed request id (``g=<group>``), so an unbounded set of values (user ids, free
text) would explode label cardinality and id length. The rollout names at most
:data:`MAX_GROUPS` groups; a value not listed, a missing key, or a value that is neither a
string nor an integer folds into :data:`OTHER`. Names are checked once at start-up against
:data:`NAME_PATTERN`, which keeps them safe both as label values and inside the id's extras
(no ``=``, ``;`` or unit separator), so the hot path needs no escaping.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from policy_server.errors import PolicyServerError

__all__ = [
    "MAX_GROUPS",
    "NAME_PATTERN",
    "OTHER",
    "GroupConfigError",
    "GroupKey",
    "add_args",
    "from_args",
    "id_extras",
    "parse",
]

MAX_GROUPS = 32
OTHER = "other"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}")
KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")


class GroupConfigError(PolicyServerError, ValueError):
    """``--group-key`` / ``--groups`` are unusable; the message says how to fix them."""


@dataclass(frozen=True, slots=True)
class GroupKey:
    """The context key holding a decision's group, and the groups worth a label of their own."""

    key: str
    groups: tuple[str, ...]
    known: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "known", frozenset(self.groups))

    @property
    def labels(self) -> tuple[str, ...]:
        """Every value :meth:`fold` can return: the configured groups, then ``other``."""
        return (*self.groups, OTHER)

    def fold(self, context: dict[str, Any] | None) -> str:
        """The group of a decision with this request ``context`` (``other`` unless listed)."""
        if context is None:
            return OTHER
        value = context.get(self.key)
        kind = type(value)
        if kind is int:  # bool is not int here (type(), not isinstance): true/false fold into other
            value = str(value)
        elif kind is not str:
            return OTHER
        return value if value in self.known else OTHER

    def label(self, group: str) -> str:
        """``group`` (from a signed id, possibly issued under another configuration) as a label of this one."""
        return group if group in self.known else OTHER


def parse(key: str | None, groups: str | Iterable[str] | None) -> GroupKey | None:
    """The configuration of ``serve --group-key KEY --groups a,b,c``; None when neither is given."""
    if key is None and groups is None:
        return None
    if not key:
        raise GroupConfigError("--groups needs --group-key: name the request-context key that holds the group")
    if not KEY_PATTERN.fullmatch(key):
        raise GroupConfigError(
            f"--group-key {key!r} is not a context key name: use letters, digits, '_', '.', '-' (at most 63)"
        )
    names = [g.strip() for g in groups.split(",")] if isinstance(groups, str) else list(groups or [])
    names = [g for g in names if g]
    if not names:
        raise GroupConfigError("--group-key needs --groups: list the groups to label, e.g. --groups a,b,c")
    if len(names) > MAX_GROUPS:
        raise GroupConfigError(f"--groups lists {len(names)} groups; at most {MAX_GROUPS} (the rest fold into other)")
    bad = [g for g in names if not NAME_PATTERN.fullmatch(g) or g == OTHER]
    if bad:
        raise GroupConfigError(
            f"--groups: {bad[0]!r} is not a group name: use 1-40 letters, digits, '_', '.', ':', '-' "
            f"(not {OTHER!r}, which holds every unlisted value)"
        )
    if len(set(names)) != len(names):
        raise GroupConfigError("--groups lists a group twice: list each once")
    return GroupKey(key, tuple(names))


def id_extras(group: str | None, value: float | None) -> str:
    """The one extras string of a decision's signed id (attribution.encode_extras format).

    ``g=<group>`` (a folded, pre-validated name) and ``v=<value>`` (the critic's prediction, 6 significant
    digits; a non-finite one is no prediction). Built without encode_extras' per-character checks: both
    parts are safe by construction.
    """
    if value is not None and not math.isfinite(value):
        value = None
    if group is None:
        return "" if value is None else f"v={value:.6g}"
    return f"g={group}" if value is None else f"g={group};v={value:.6g}"


def add_args(parser: argparse.ArgumentParser) -> None:
    """``serve``'s fairness flags."""
    parser.add_argument(
        "--group-key",
        default=None,
        help="request-context key holding the decision's fairness group: policy_group_* metrics by group, and the "
        "group signed into each id (docs/policy-server.md#fairness-groups)",
    )
    parser.add_argument(
        "--groups",
        default=None,
        help=f"comma-separated groups worth a label (at most {MAX_GROUPS}); other values fold into {OTHER!r}",
    )


def from_args(args: argparse.Namespace) -> GroupKey | None:
    return parse(args.group_key, args.groups)
