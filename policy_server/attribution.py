"""Signed request ids: a reward can be attributed by any replica of any variant, or the router.

A decision's id carries what a reward needs (variant, policy version, decision time) and an
keyed BLAKE2b tag over it (a MAC by design, RFC 7693; half the cost of HMAC-SHA256 on the request
path), keyed by the rollout's shared secret (``POLICY_SERVER_REWARD_KEY``), so
every server and router of the rollout verifies an id without asking the process that issued it
and without shared state. Nobody without the key can mint an id that attributes a reward to a
variant: the tag is checked in constant time (``hmac.compare_digest``).

Format (ASCII, URL- and JSON-safe)::

    r1.<base64url(payload)>.<base64url(tag, 16 bytes)>
    payload = kind \\x1f variant \\x1f policy_version \\x1f decision_time_ms \\x1f extras \\x1f ident

``kind`` is ``g`` for an id the server generated (``ident`` = a random per-process prefix and a
sequence number: unique across replicas and restarts) or ``c`` for an id the client chose
(``ident`` = the client's id). A generated id *is* the request id the decision is logged under;
a client-chosen id is logged as the client sent it, and its decision's response carries the
signed form as ``reward_id``: a reward posted with the ``reward_id`` is accepted anywhere,
one posted with the bare client id only by the process that served it (its own memory).

Key rotation: the variable holds one or more keys separated by commas; the first signs, every
one verifies. Add the new key second, roll every pod, move it first, roll again, drop the old.
Without a key the process makes a random one: ids are then verifiable by that process only
(one replica, as before), and the server warns at start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from policy_server.errors import PolicyServerError

__all__ = [
    "ENV_VAR",
    "MIN_KEY_CHARS",
    "Attribution",
    "BadRequestId",
    "ForgedRequestId",
    "IdSigner",
    "RewardKeyError",
    "RewardKeys",
    "encode_extras",
    "is_signed",
    "verify",
]

ENV_VAR = "POLICY_SERVER_REWARD_KEY"
MIN_KEY_CHARS = 32
PREFIX = "r1."
TAG_BYTES = 16
_SEP = "\x1f"
GENERATED, CLIENT = "g", "c"
MAX_ID_CHARS = 512


class RewardKeyError(PolicyServerError, ValueError):
    """The reward key is unusable (the message says how to make one)."""


class BadRequestId(PolicyServerError, ValueError):
    """An id that is not a signed id of this rollout: malformed, or its tag does not verify."""


class ForgedRequestId(BadRequestId):
    """A well-formed signed id whose tag does not verify: not issued with this rollout's key."""


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a verified id says about its decision."""

    request_id: str  # the id the decision is logged under (the signed id itself, or the client's id)
    variant: str
    policy_version: str
    decision_time: float  # Unix seconds (millisecond resolution)
    client_chosen: bool
    extras: tuple[tuple[str, str], ...] = ()  # what else the decision carried to its reward (encode_extras)

    def extra(self, name: str) -> str | None:
        return next((value for key, value in self.extras if key == name), None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class RewardKeys:
    """The rollout's shared secret(s): the first signs, every one verifies."""

    def __init__(self, keys: list[bytes], *, generated: bool = False) -> None:
        if not keys:
            raise RewardKeyError("no reward key given")
        self._keys = [hashlib.sha256(key).digest() for key in keys]  # BLAKE2b takes keys of up to 64 bytes
        self.generated = generated  # made up by this process: nobody else can verify its ids

    @classmethod
    def parse(cls, value: str) -> RewardKeys:
        keys = [k.strip() for k in value.split(",") if k.strip()]
        short = [k for k in keys if len(k) < MIN_KEY_CHARS]
        if not keys or short:
            raise RewardKeyError(
                f"{ENV_VAR} must hold one or more comma-separated keys of at least {MIN_KEY_CHARS} characters; "
                "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return cls([k.encode() for k in keys])

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RewardKeys:
        """The keys in ``POLICY_SERVER_REWARD_KEY``, or a random per-process key when it is unset."""
        value = (os.environ if environ is None else environ).get(ENV_VAR, "")
        if not value.strip():
            return cls([secrets.token_bytes(32)], generated=True)
        return cls.parse(value)

    def tag(self, payload: bytes) -> bytes:
        return hashlib.blake2b(payload, key=self._keys[0], digest_size=TAG_BYTES).digest()

    def verifies(self, payload: bytes, tag: bytes) -> bool:
        return any(
            hmac.compare_digest(hashlib.blake2b(payload, key=key, digest_size=TAG_BYTES).digest(), tag)
            for key in self._keys
        )


class IdSigner:
    """Issues and verifies signed ids for one server process (or verifies only, for the router)."""

    def __init__(self, keys: RewardKeys, *, variant: str = "", policy_version: str = "") -> None:
        if _SEP in variant or _SEP in policy_version:
            raise BadRequestId("variant and policy version must not contain the unit separator")
        self.keys = keys
        self._process = secrets.token_hex(8)
        self._seq = 0
        self._head = f"{variant}{_SEP}{policy_version}{_SEP}"

    def generate(self, decision_time: float, extras: str = "") -> str:
        """A fresh signed id for a decision made now by this process (``extras``: from :func:`encode_extras`)."""
        self._seq += 1
        return self._sign(GENERATED, decision_time, f"{self._process}{self._seq:x}", extras)

    def bind(self, client_id: str, decision_time: float, extras: str = "") -> str:
        """The signed ``reward_id`` of a decision whose id the client chose."""
        return self._sign(CLIENT, decision_time, client_id, extras)

    def _sign(self, kind: str, decision_time: float, ident: str, extras: str = "") -> str:
        payload = f"{kind}{_SEP}{self._head}{int(decision_time * 1000)}{_SEP}{extras}{_SEP}{ident}".encode()
        return f"{PREFIX}{_b64(payload)}.{_b64(self.keys.tag(payload))}"

    def verify(self, signed_id: str) -> Attribution:
        """The attribution of a signed id; :class:`BadRequestId` if it is malformed or forged."""
        return verify(self.keys, signed_id)


def encode_extras(fields: dict[str, str]) -> str:
    """Small named values a decision hands to its reward through the id (e.g. a group, a predicted value).

    Signed with the rest, so a reward cannot claim another group or prediction. Names and values must not
    contain ``=``, ``;`` or the unit separator; keep them short: they travel in every id.
    """
    for key, value in fields.items():
        if not key or any(c in f"{key}{value}" for c in ("=", ";", _SEP)):
            raise ValueError(f"extra {key!r}={value!r} must not contain '=', ';' or the unit separator")
    return ";".join(f"{key}={value}" for key, value in fields.items())


def is_signed(request_id: str) -> bool:
    return request_id.startswith(PREFIX)


def verify(keys: RewardKeys, signed_id: str) -> Attribution:
    """The attribution of ``signed_id``; raises :class:`BadRequestId` (malformed, or not signed by ``keys``)."""
    if len(signed_id) > MAX_ID_CHARS or not signed_id.startswith(PREFIX):
        raise BadRequestId("not a signed request id (expected r1.<payload>.<tag>)")
    body, _, tag_text = signed_id[len(PREFIX) :].partition(".")
    try:
        payload, tag = _unb64(body), _unb64(tag_text)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestId("malformed signed request id") from exc
    if len(tag) != TAG_BYTES or not payload:
        raise BadRequestId("malformed signed request id (its payload or tag is missing or cut short)")
    if not keys.verifies(payload, tag):
        raise ForgedRequestId("request id was not issued by this rollout (its signature does not verify)")
    try:  # signed by us, so well formed unless the format changed: still refuse rather than crash
        kind, variant, version, millis, extras, ident = payload.decode().split(_SEP, 5)  # a client id may hold SEP
        decision_time = int(millis) / 1000
        fields = tuple(tuple(item.split("=", 1)) for item in extras.split(";")) if extras else ()
        if any(len(f) != 2 for f in fields):
            raise ValueError(extras)
    except ValueError as exc:
        raise BadRequestId("signed request id with an unknown payload layout") from exc
    if kind not in (GENERATED, CLIENT):
        raise BadRequestId(f"signed request id of unknown kind {kind!r}")
    return Attribution(
        request_id=signed_id if kind == GENERATED else ident,
        variant=variant,
        policy_version=version,
        decision_time=decision_time,
        client_chosen=kind == CLIENT,
        extras=fields,  # type: ignore[arg-type]  # pairs, checked above
    )
