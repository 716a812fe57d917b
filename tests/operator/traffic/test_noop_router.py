"""NoopRouter: remembers weights per rollout, forgets them on finalize."""

from __future__ import annotations

from rollout_operator import api
from rollout_operator.engine.types import Weights
from rollout_operator.traffic.base import TrafficRouter
from rollout_operator.traffic.noop import NoopRouter

from tests.support.kube import policy_rollout_manifest


def _rollout(name: str, namespace: str = "default") -> api.PolicyRollout:
    return api.PolicyRollout.model_validate(policy_rollout_manifest(name=name, namespace=namespace))


def test_noop_router_round_trip() -> None:
    router = NoopRouter()
    assert isinstance(router, TrafficRouter)
    a, b, a_elsewhere = _rollout("a"), _rollout("b"), _rollout("a", "other")
    assert router.get_weights(a) is None
    router.reconcile(a)
    assert router.get_weights(a) == Weights(0)
    router.set_weights(a, Weights(40))
    router.set_weights(b, Weights(0, shadow=True))
    router.reconcile(a)  # keeps what is set
    assert router.get_weights(a) == Weights(40)
    assert router.get_weights(b) == Weights(0, shadow=True)
    assert router.get_weights(a_elsewhere) is None
    router.finalize(a)
    router.finalize(a)
    assert router.get_weights(a) is None
    assert router.get_weights(b) == Weights(0, shadow=True)
