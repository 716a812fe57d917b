"""The routing table: where requests go and in which proportion. Pure data plus its JSON file.

The operator writes it into a ConfigMap (``data["routing.json"]``), the router applies it and
keeps the last one in a local file, so a restarted router serves the last weights even when the
Kubernetes API is unreachable. The same JSON shape is used in both places.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from policy_server.errors import PolicyServerError

__all__ = ["CONFIGMAP_KEY", "TABLE_VERSION", "RoutingTable", "TableError", "endpoints", "load", "save"]

TABLE_VERSION = 1
CONFIGMAP_KEY = "routing.json"


class TableError(PolicyServerError, ValueError):
    """A routing table that cannot be applied (the message names the field and the fix)."""


def _urls(value: Any, field: str) -> str | tuple[str, ...]:
    """One URL (kept a string, today's wire form) or a non-empty list of them (a tuple)."""
    if isinstance(value, list | tuple):
        if not value:
            raise TableError(f"routing table: {field!r} must be a URL or a non-empty list of URLs, got []")
        urls = tuple(_url(v, f"{field}[{i}]") for i, v in enumerate(value))
        if len(set(urls)) != len(urls):
            raise TableError(f"routing table: {field!r} lists an endpoint twice: {list(urls)}; list each once")
        return urls
    return _url(value, field)


def endpoints(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The endpoint URLs of a table field (one URL or a list): () when the field is unset."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _key_spec(value: str | None, field: str) -> None:
    if value is not None:
        kind, _, name = value.partition(":")
        if kind not in ("header", "context") or not name:
            raise TableError(f"routing table: {field!r} must be 'header:NAME' or 'context:FIELD', got {value!r}")


def _url(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise TableError(f"routing table: {field!r} must be an http:// URL of a policy server, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:
        raise TableError(f"routing table: {field!r} must be an http://HOST[:PORT] URL, got {value!r}")
    return value.rstrip("/")


@dataclasses.dataclass(frozen=True)
class RoutingTable:
    """Stable and candidate endpoints, the candidate's percentage, shadow, the sticky and entity keys.

    ``stable``, ``candidate`` and ``fallback`` are each one URL (a Service, or one process) or a
    list of URLs (the endpoints of that variant; the router balances across the ready ones).
    ``sticky_key`` is ``header:NAME`` (a request header) or ``context:FIELD`` (a field of the
    request body's ``context`` object) and picks the *variant*; None means a fresh random draw
    per request. ``entity_key`` (same forms) picks the *endpoint* within the variant, so one
    entity keeps meeting the same process (rendezvous hashing). ``fallback`` (optional) answers
    when the candidate fails; the stable policy otherwise.
    """

    stable: str | Sequence[str]
    candidate: str | Sequence[str] | None = None
    weight: float = 0.0
    shadow: bool = False
    sticky_key: str | None = None
    fallback: str | Sequence[str] | None = None
    latency_budget_ms: float | None = None
    generation: int = 0
    updated_at: float = 0.0  # when the operator decided (epoch seconds): propagation = applied - updated_at
    salt: str = ""  # per-rollout salt of the sticky hash, so rollouts do not all pick the same callers
    entity_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("stable", "candidate", "fallback"):  # lists become tuples: the table stays hashable
            value = getattr(self, name)
            if value is not None or name == "stable":
                object.__setattr__(self, name, _urls(value, name))
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or not 0 <= w <= 100:
            raise TableError(f"routing table: 'weight' must be a number in 0..100 (candidate percent), got {w!r}")
        if (w > 0 or self.shadow) and self.candidate is None:
            raise TableError("routing table: weight > 0 or shadow needs a 'candidate' URL; set one or weight 0")
        _key_spec(self.sticky_key, "stickyKey")
        _key_spec(self.entity_key, "entityKey")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise TableError(f"routing table: 'latencyBudgetMs' must be > 0, got {self.latency_budget_ms!r}")

    def urls(self) -> set[str]:
        """Every URL the table names (what an EndpointSlice watcher resolves)."""
        return {u for v in (self.stable, self.candidate, self.fallback) for u in endpoints(v)}

    # ---- wire form (camelCase, as in the ConfigMap)

    def to_json(self) -> dict[str, Any]:
        def wire(value: str | Sequence[str] | None) -> str | list[str] | None:
            return value if value is None or isinstance(value, str) else list(value)

        out: dict[str, Any] = {
            "version": TABLE_VERSION,
            "stable": wire(self.stable),
            "candidate": wire(self.candidate),
            "weight": self.weight,
            "shadow": self.shadow,
            "stickyKey": self.sticky_key,
            "entityKey": self.entity_key,
            "fallback": wire(self.fallback),
            "latencyBudgetMs": self.latency_budget_ms,
            "generation": self.generation,
            "updatedAt": self.updated_at,
            "salt": self.salt,
        }
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_json(cls, data: Any) -> RoutingTable:
        if not isinstance(data, dict):
            raise TableError(f"routing table must be a JSON object, got {type(data).__name__}")
        version = data.get("version", TABLE_VERSION)
        if version != TABLE_VERSION:
            raise TableError(
                f"routing table version {version!r} is not supported (this router reads {TABLE_VERSION}); "
                "upgrade the router or the operator so they match"
            )
        known = {
            "version",
            "stable",
            "candidate",
            "weight",
            "shadow",
            "stickyKey",
            "entityKey",
            "fallback",
            "latencyBudgetMs",
            "generation",
            "updatedAt",
            "salt",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise TableError(f"routing table: unknown field(s) {unknown}; known: {sorted(known)}")
        if "stable" not in data:
            raise TableError("routing table: 'stable' (URL of the stable policy server) is required")
        shadow = data.get("shadow", False)
        if not isinstance(shadow, bool):
            raise TableError(f"routing table: 'shadow' must be true or false, got {shadow!r}")
        return cls(
            stable=data["stable"],
            candidate=data.get("candidate"),
            weight=data.get("weight", 0),
            shadow=shadow,
            sticky_key=data.get("stickyKey"),
            entity_key=data.get("entityKey"),
            fallback=data.get("fallback"),
            latency_budget_ms=data.get("latencyBudgetMs"),
            generation=int(data.get("generation", 0)),
            updated_at=float(data.get("updatedAt", 0.0)),
            salt=str(data.get("salt", "")),
        )

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> RoutingTable:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise TableError(f"routing table is not valid JSON: {exc}") from exc
        return cls.from_json(data)


def load(path: str | os.PathLike[str]) -> RoutingTable | None:
    """The table saved at ``path``; None if there is no file yet. Raises TableError if it is corrupt."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return RoutingTable.from_bytes(raw)
    except TableError as exc:
        raise TableError(f"{p}: {exc} (fix or delete the file; the router then starts from its flags)") from exc


def save(table: RoutingTable, path: str | os.PathLike[str]) -> None:
    """Write atomically (temp file + fsync + rename): a crash leaves the old table or the new one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    body = orjson.dumps(table.to_json(), option=orjson.OPT_INDENT_2)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
