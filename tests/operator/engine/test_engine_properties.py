"""Properties of `decide` over random rollouts, observation sequences, actions and restarts.

Each example builds a spec (steps with non-decreasing weights, 0-2 guardrails), then plays a
random script: time jumps, readiness flips, weights the data plane reports (or not),
measurements that pass, fail, are missing, None or NaN, manual actions (valid, invalid,
repeated ids) and operator restarts (the status re-validated from its wire form).
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from engine_harness import FAIL, PASS, T0, guardrail, make_rollout, with_status
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rollout_operator import api, engine
from rollout_operator.engine import steps as step_rules
from rollout_operator.engine.types import Decision, Measurement, Observations, Weights

P = api.Phase
ZERO_WEIGHT = {P.PENDING, P.ROLLING_BACK, P.ROLLED_BACK, P.ABORTED, P.FAILED, P.PROMOTED}
ROLLED_OFF = {P.ROLLING_BACK, P.ROLLED_BACK, P.ABORTED}
MANUAL = {"ManualPromote", "Approved", "ManualFullPromote"}
VERBS = ["promote", "promote-full", "approve", "abort", "retry", "rollback", ""]


@st.composite
def specs(draw: st.DrawFn) -> api.PolicyRollout:
    kinds = draw(
        st.lists(
            st.sampled_from(["shadow", "setWeight", "setWeight", "setWeight", "pause", "approval"]),
            min_size=1,
            max_size=6,
        )
    )
    weights = iter(sorted(draw(st.lists(st.integers(0, 100), min_size=len(kinds), max_size=len(kinds)))))
    steps: list[dict[str, Any]] = []
    for kind in kinds:
        if kind == "shadow":
            steps.append({"shadow": {"duration": f"{draw(st.integers(1, 10))}m"}})
        elif kind == "setWeight":
            steps.append({"setWeight": next(weights)})
        elif kind == "pause":
            minutes = draw(st.integers(0, 10))
            steps.append({"pause": {"duration": f"{minutes}m"} if minutes else {}})
        else:
            steps.append({"approval": {}})
    rails = [
        guardrail(name, failureLimit=draw(st.integers(1, 3)), inconclusiveLimit=draw(st.integers(1, 4)))
        for name in draw(st.sampled_from([[], ["errors"], ["errors"], ["errors", "latency"]]))
    ]
    return make_rollout(
        steps,
        guardrails=rails,
        interval=f"{draw(st.integers(1, 3))}m",
        deadline=f"{draw(st.integers(5, 60))}m",
        # Every spec the API accepts, those that opt out of an analysed live step included.
        allowPromotionWithoutAnalysis=True,
    )


# Per example, guardrails behave like a healthy, a flaky or a bad candidate.
PROFILES = {
    "healthy": ["pass"] * 15 + ["none"],
    "flaky": ["pass"] * 6 + ["fail", "fail", "none", "nan", "missing"],
    "bad": ["pass", "fail", "fail", "fail", "none"],
}
# About one tick in twelve carries an action; ids repeat, so some are replays of an applied one.
ACTION = st.integers(0, 11).flatmap(
    lambda n: st.tuples(st.sampled_from(VERBS), st.sampled_from(["1", "2", "3"])) if n == 0 else st.none()
)


def ticks(profile: str) -> st.SearchStrategy[dict[str, Any]]:
    measure = st.sampled_from(PROFILES[profile])
    return st.fixed_dictionaries(
        {
            "seconds": st.sampled_from([0, 1, 30, 60, 60, 60, 120, 300, 900]),
            "candidate_ready": st.sampled_from([True, True, True, False]),
            "stable_ready": st.booleans(),
            "stable_running": st.sampled_from(["follow", "follow", None, "v1"]),
            "actual": st.sampled_from(["follow", "follow", None, "zero", "stale"]),
            "measure": st.fixed_dictionaries({"errors": measure, "latency": measure}),
            "action": ACTION,
            "restart": st.booleans(),
        }
    )


SCRIPTS = st.sampled_from(sorted(PROFILES)).flatmap(lambda p: st.lists(ticks(p), min_size=5, max_size=50))


def _measurements(rollout: api.PolicyRollout, kinds: dict[str, str]) -> dict[str, Measurement]:
    values = {"pass": PASS, "fail": FAIL, "none": None, "nan": math.nan}
    return {
        g.name: Measurement(values[kinds[g.name]])
        for g in rollout.spec.analysis.guardrails
        if kinds[g.name] != "missing"
    }


def _observations(rollout: api.PolicyRollout, tick: dict, last: Decision | None, now: Any) -> Observations:
    follow = last.weights if last else Weights(0)
    actual = {"follow": follow, None: None, "zero": Weights(0), "stale": Weights(max(0, follow.candidate - 1))}
    stable = rollout.status.stable_policy.version if rollout.status.stable_policy else None
    action = None if tick["action"] is None else engine.parse_action("/".join(tick["action"]))
    due = engine.analysis_due(rollout, now)
    return Observations(
        generation=1,
        candidate_ready=tick["candidate_ready"],
        stable_ready=tick["stable_ready"],
        stable_running_version=stable if tick["stable_running"] == "follow" else tick["stable_running"],
        actual_weights=actual[tick["actual"]],
        measurements=_measurements(rollout, tick["measure"]) if due else {},
        action=action,
    )


def _round_trip(status: api.PolicyRolloutStatus) -> api.PolicyRolloutStatus:
    return api.PolicyRolloutStatus.model_validate(status.wire())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rollout=specs(), script=SCRIPTS)
def test_rollout_invariants_hold_for_any_observation_sequence(rollout: api.PolicyRollout, script: list[dict]) -> None:
    spec_steps = rollout.spec.steps
    guarded = bool(rollout.spec.analysis.guardrails)
    now = T0
    last: Decision | None = None
    completed: set[int] = set()
    full_promoted = False
    for tick in script:
        now += timedelta(seconds=tick["seconds"])
        if tick["restart"]:
            rollout = with_status(rollout, _round_trip(rollout.status))
        before = rollout.status
        obs = _observations(rollout, tick, last, now)
        decision = engine.decide(rollout, obs, now)
        status = decision.status
        reasons = {e.reason for e in decision.events}

        # Replay: the same inputs, or a restart from the stored status, decide the same.
        assert engine.decide(rollout, obs, now) == decision
        assert engine.decide(with_status(rollout, _round_trip(before)), obs, now) == decision
        # Fixed point: applying the decision and asking again at the same instant moves nothing.
        again = engine.decide(with_status(rollout, status), obs, now)
        assert again.events == () and again.status == status and again.weights == decision.weights

        new_rollout = status.started_at != before.started_at
        if new_rollout:
            completed, full_promoted = set(), False
        full_promoted |= "ManualFullPromote" in reasons

        # Weights: bounded by the current step, zero whenever the candidate must not serve.
        weights = decision.weights
        assert (weights.candidate, weights.shadow) == (status.canary_weight, status.shadow)
        if status.phase in ZERO_WEIGHT:
            assert weights.candidate == 0
        assert weights.candidate <= step_rules.step_weight(spec_steps, status.current_step_index)
        if status.phase in ROLLED_OFF:
            assert weights == Weights(0)
        if status.phase in (P.PROMOTED, P.ROLLED_BACK, P.ABORTED, P.FAILED):
            assert decision.workloads.candidate is None
        # Never backwards within a rollout, except to 0 when it ends or rolls back.
        if last is not None and not new_rollout and weights.candidate < last.weights.candidate:
            assert weights.candidate == 0 and status.phase in ZERO_WEIGHT - {P.PENDING}

        # Track which steps completed, and how.
        start = before.current_step_index if not new_rollout else 0
        if status.current_step_index > start:
            for index in range(start, status.current_step_index):
                completed.add(index)
            if not reasons & MANUAL:
                # Nothing advances by itself while a guardrail is inconclusive.
                assert all(g.consecutive_inconclusive == 0 for g in status.guardrails)
            for index in range(start, min(status.current_step_index, len(spec_steps))):
                if not (guarded and spec_steps[index].set_weight) or new_rollout or reasons & MANUAL:
                    continue
                # A guarded setWeight step completes only on an analysis where every guardrail
                # passed, taken after it started: never in the decision that entered it.
                assert index == start
                fed = obs.measurements
                assert len(fed) == len(rollout.spec.analysis.guardrails)
                assert all(m.value == PASS for m in fed.values())
        if status.current_step_index >= len(spec_steps) and status.phase in (P.PROGRESSING, P.PROMOTED):
            assert full_promoted or completed >= set(range(len(spec_steps)))
        if status.phase is P.PROMOTED:
            event("promoted")
            assert status.stable_version == rollout.spec.policy.version

        assert len(status.history) <= 50
        assert {c.observed_generation for c in status.conditions} == {1}
        event(f"phase {status.phase}")
        rollout = with_status(rollout, status)
        last = decision
