"""Request ids of one server process: issued signed, verified on /v1/reward, duplicates refused.

Every id the server generates is signed (attribution.py): it names the variant, the policy
version and the decision time, so a reward for it is accepted by any replica of any variant
that holds the rollout's key, after a restart, a promotion or a rollback, and costs this
process no memory per decision. A client-chosen id is logged as the client sent it; its
response carries the signed ``reward_id``, accepted anywhere like a generated id. The bare
client id is still accepted by the process that served it while it is among its last
``window`` decisions (an LRU, the only per-decision state kept).

Duplicates: a second reward with the same (request id, event id) seen by this process answers
409 (an LRU of ``window`` entries). Across replicas duplicates cannot be seen without shared
state: the reward joiner (policy_server.join) counts them once, which is what offline
evaluation, training and the reward counts of the demo read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from policy_server import attribution

__all__ = ["RequestIds", "RewardCheck", "RewardVerdict"]

DEFAULT_MAX_AGE_S = 7 * 86400.0


class RewardCheck(Enum):
    ACCEPTED = "accepted"
    UNKNOWN = "unknown"  # not issued by this rollout (forged, another key) or a bare id this process never served
    MALFORMED = "malformed"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"  # older than max_age_s: refused so an old id cannot be replayed forever


@dataclass(frozen=True, slots=True)
class RewardVerdict:
    check: RewardCheck
    attribution: attribution.Attribution | None = None
    message: str = ""


class RequestIds:
    def __init__(self, window: int, keys: attribution.RewardKeys, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.keys = keys
        self.max_age_s = max_age_s
        self._signer = attribution.IdSigner(keys)
        self._variant = self._version = ""
        self._seq = 0  # client-chosen ids claimed so far
        self._chosen: OrderedDict[str, tuple[int, float]] = OrderedDict()  # client id -> (seq, decision time)
        self._rewarded: OrderedDict[tuple[str, float, str | None], None] = OrderedDict()

    def serve(self, variant: str, policy_version: str) -> None:
        """What this process's ids attribute decisions to (known once the model is loaded)."""
        self._signer = attribution.IdSigner(self.keys, variant=variant, policy_version=policy_version)
        self._variant, self._version = variant, policy_version

    @property
    def stored(self) -> int:
        """Ids held in memory (client-chosen and rewarded ones; generated ids take none)."""
        return len(self._chosen) + len(self._rewarded)

    def generate(self, now: float, extras: str = "") -> str:
        """A fresh signed id for a request that came without one (``extras``: attribution.encode_extras)."""
        return self._signer.generate(now, extras)

    def rebind(self, client_id: str, decided: float, extras: str) -> str:
        """The signed ``reward_id`` of a claimed client id, re-issued with ``extras`` known after the forward pass."""
        return self._signer.bind(client_id, decided, extras)

    def claim(self, client_id: str, now: float, extras: str = "") -> str | None:
        """Register a client-chosen id; its signed ``reward_id`` (with ``extras``), or None if it cannot be used."""
        if attribution.is_signed(client_id) or client_id in self._chosen:
            return None
        self._seq += 1
        chosen = self._chosen
        chosen[client_id] = (self._seq, now)
        oldest = self._seq - self.window
        while next(iter(chosen.values()))[0] <= oldest:
            chosen.popitem(last=False)
        return self._signer.bind(client_id, now, extras)

    def reward(self, request_id: str, event_id: str | None, now: float) -> RewardVerdict:
        """Check a reward for ``request_id`` and, when accepted, remember it against duplicates."""
        if attribution.is_signed(request_id):
            try:
                found = self._signer.verify(request_id)
            except attribution.ForgedRequestId as exc:
                return RewardVerdict(RewardCheck.UNKNOWN, message=str(exc))
            except attribution.BadRequestId as exc:
                return RewardVerdict(RewardCheck.MALFORMED, message=str(exc))
        else:
            claimed = self._chosen.get(request_id)
            if claimed is None:
                return RewardVerdict(
                    RewardCheck.UNKNOWN,
                    message=f"not served by this server within its last {self.window} decisions; "
                    "post the signed reward_id of the decision's response to reach any replica",
                )
            found = attribution.Attribution(request_id, self._variant, self._version, claimed[1], client_chosen=True)
        age = now - found.decision_time
        if age > self.max_age_s:
            return RewardVerdict(
                RewardCheck.EXPIRED,
                found,
                f"the decision is {age / 3600:.1f} h old, beyond this server's --max-reward-age-s "
                f"({self.max_age_s / 3600:g} h)",
            )
        key = (found.request_id, found.decision_time, event_id)  # a client id reused later is a new decision
        if key in self._rewarded:
            what = "a reward" if event_id is None else f"reward event {event_id!r}"
            return RewardVerdict(RewardCheck.DUPLICATE, found, f"{what} for this request_id was already recorded")
        self._rewarded[key] = None
        if len(self._rewarded) > self.window:
            self._rewarded.popitem(last=False)
        return RewardVerdict(RewardCheck.ACCEPTED, found)
