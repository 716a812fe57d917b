"""``POST /v1/reward`` at the router: verify the request id, then forward to a live endpoint.

Why verify here: a signed id (``r1.…``, policy_server/attribution.py) says which variant decided
and is checked with the rollout's key (``POLICY_SERVER_REWARD_KEY``, the same on every server
and router), so a forged or malformed id is refused by the router itself, without a round trip,
with the status a server gives it. A verified reward can be logged by *any* server of the
rollout, so it goes to a ready endpoint of the deciding variant, else of any variant, and moves to
the next endpoint on a connection error or a 5xx; the upstream's answer (202, 409 duplicate,
4xx) is returned as it is.

Ids the router cannot verify — a bare client-chosen id, or any id while the router has no key —
are accepted only by the process that served them (its own memory), so the router forwards them
to the endpoint it remembers having answered them (the last ``REQUEST_IDS`` such ids) and
otherwise answers 404, telling the client to post the response's ``reward_id``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from policy_server import attribution, protocol

if TYPE_CHECKING:
    from policy_server.router.app import Router
    from policy_server.router.pool import Endpoint

__all__ = ["MALFORMED_STATUS", "REFUSED_STATUS", "RewardForwarder"]

REFUSED_STATUS = 404  # what a policy server answers for an id it did not issue (unknown_request_id)
MALFORMED_STATUS = 400  # ... and for an id that is not a well-formed signed id
PATH = b"/v1/reward"


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


class RewardForwarder:
    """Verifies reward ids and picks the endpoints a reward is offered to, in order."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def handle(self, conn: protocol.HttpProtocol, seq: int, body: bytes) -> None:
        r = self.router
        rid: Any = None
        try:
            data = orjson.loads(body)
            rid = data.get("request_id")
            if r.table.shadow:
                r.shadow_ope.rewarded(rid, data.get("reward"), data.get("costs"))
        except (orjson.JSONDecodeError, AttributeError):
            pass  # a policy server explains what is wrong with the body
        if not isinstance(rid, str):
            targets = self._any()  # missing or malformed: a server words the 400
        elif attribution.is_signed(rid) and not r.reward_keys.generated:
            try:
                attr = attribution.verify(r.reward_keys, rid)
            except attribution.ForgedRequestId as exc:
                r.metrics.reward("refused")
                conn.respond(seq, REFUSED_STATUS, _error(f"unknown request_id {rid[:80]!r}: {exc}"))
                return
            except attribution.BadRequestId as exc:  # as a policy server answers: 400 malformed, 404 forged
                r.metrics.reward("refused")
                conn.respond(seq, MALFORMED_STATUS, _error(f"malformed request_id {rid[:80]!r}: {exc}"))
                return
            targets = self._any(attr.variant)
        else:
            ep = r.served_by_id.get(rid)
            if ep is None:
                r.metrics.reward("refused")
                conn.respond(seq, REFUSED_STATUS, _error(self._unknown(rid)))
                return
            targets = [ep]  # only that process can accept it: no other endpoint to retry on
        status, resp, failure = await r.forward(targets, b"POST", PATH, body)
        r.metrics.reward("failed" if failure else "forwarded" if status < 300 else "rejected")
        conn.respond(seq, status, resp)

    def _any(self, variant: str | None = None) -> list[Endpoint]:
        """Ready endpoints of ``variant`` first, then of the other variants (each endpoint once)."""
        pools = self.router.pools()
        pools.sort(key=lambda p: p.variant != variant)
        out: list[Endpoint] = []
        for p in pools:
            out.extend(e for e in p.ranked() if e not in out)
        return out

    def _unknown(self, rid: str) -> str:
        if self.router.reward_keys.generated:
            return (
                f"unknown request_id {rid[:80]!r}: this router did not answer it recently and cannot verify ids "
                f"without the rollout's key; set {attribution.ENV_VAR} on the router as on the servers"
            )
        return (
            f"unknown request_id {rid[:80]!r}: the router cannot verify a client-chosen id it did not answer "
            "recently; post the response's reward_id instead"
        )
