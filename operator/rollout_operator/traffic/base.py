"""The interface every traffic provider implements.

The engine decides *what* split it wants (`engine.types.Weights`); a provider makes the data
plane do it and reads back what the data plane really does. Providers are sync: they run in
kopf's handler threads and in local mode, and each call is one or two API requests.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from rollout_operator import api
from rollout_operator.engine.types import Weights
from rollout_operator.errors import RolloutOperatorError

__all__ = ["TrafficError", "TrafficRouter"]


class TrafficError(RolloutOperatorError):
    """A provider could not read or write its routing objects (the message says why and what to do)."""


@runtime_checkable
class TrafficRouter(Protocol):
    """Routes a rollout's requests between its `stable` and `candidate` Services."""

    name: str

    def reconcile(self, rollout: api.PolicyRollout) -> None:
        """Create or update the routing objects (idempotent), keeping the weights they already have."""
        ...

    def set_weights(self, rollout: api.PolicyRollout, weights: Weights) -> None:
        """Send `weights.candidate` percent to the candidate (or mirror to it when `weights.shadow`)."""
        ...

    def get_weights(self, rollout: api.PolicyRollout) -> Weights | None:
        """The split the data plane applies now; None if there are no routing objects or they are foreign."""
        ...

    def finalize(self, rollout: api.PolicyRollout) -> None:
        """Remove the routing objects (the rollout is being deleted). Safe to call twice."""
        ...
