"""A provider that routes nothing and remembers the weights: for local mode, dev and tests."""

from __future__ import annotations

import threading

from rollout_operator import api
from rollout_operator.engine.types import Weights


def _key(rollout: api.PolicyRollout) -> tuple[str, str]:
    return rollout.metadata.namespace, rollout.metadata.name


class NoopRouter:
    name = "noop"

    def __init__(self) -> None:
        self._weights: dict[tuple[str, str], Weights] = {}
        self._lock = threading.Lock()  # kopf calls handlers from several threads

    def reconcile(self, rollout: api.PolicyRollout) -> None:
        with self._lock:
            self._weights.setdefault(_key(rollout), Weights(candidate=0))

    def set_weights(self, rollout: api.PolicyRollout, weights: Weights) -> None:
        with self._lock:
            self._weights[_key(rollout)] = weights

    def get_weights(self, rollout: api.PolicyRollout) -> Weights | None:
        with self._lock:
            return self._weights.get(_key(rollout))

    def finalize(self, rollout: api.PolicyRollout) -> None:
        with self._lock:
            self._weights.pop(_key(rollout), None)
