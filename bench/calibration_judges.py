"""The sequential judge's half of the calibration benchmark: false rollbacks per stream, detection speed.

Every rollout is driven through `engine.judges.sequential.update` itself, one analysis per interval, on the
cumulative counters Prometheus would hold. Per-decision rewards have standard deviation 1; an interval brings
`N_C` candidate and `N_S` stable rewards. A variant's interval mean is its mean plus noise of the sampling
standard deviation 1/sqrt(n); with `phi > 0` that noise is AR(1) within the variant (sticky callers), the
worst case of per-variant dependence: all of it persists, none of it is shared with the other variant.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from unittest import mock

import numpy as np
from rollout_operator import api
from rollout_operator.engine.judges import sequential

N_C, N_S = 200, 1800
HORIZON = 150
GAPS = (0.02, 0.05)


@dataclasses.dataclass(frozen=True)
class Stream:
    """A/A (or regressed) reward streams of both variants; `restart` resets the candidate's counters midway."""

    name: str
    mean: float = 1.0
    phi: float = 0.0
    restart: bool = False


@dataclasses.dataclass(frozen=True)
class JudgeVariant:
    name: str
    batch: int
    legacy_reset: bool = False  # the rule before issue #20: any falling counter is a reset


STREAMS = (
    Stream("independent, mean reward +1"),
    Stream("negative rewards, mean -0.5", mean=-0.5),
    Stream("zero-mean rewards (mixed signs)", mean=0.0),
    Stream("mean -0.5, candidate restarts midway", mean=-0.5, restart=True),
    Stream("sticky, phi = 0.5", phi=0.5),
    Stream("sticky, phi = 0.9", phi=0.9),
)
JUDGES = (
    JudgeVariant("falling sum = reset (before #20)", 1, legacy_reset=True),
    JudgeVariant("per interval (batchIntervals 1)", 1),
    JudgeVariant(f"batch means (batchIntervals {sequential.STICKY_BATCH})", sequential.STICKY_BATCH),
)
DETECTION_STREAMS = (STREAMS[0], STREAMS[5])
DETECTION_JUDGES = JUDGES[1:]


def legacy_increments(last: Mapping[str, float], values: Mapping[str, float]) -> dict[str, float]:
    """The pre-#20 rule, kept here only to measure it: a series that went down counts its new value."""
    return {k: (v - last.get(k, 0.0) if v >= last.get(k, 0.0) else v) for k, v in values.items()}


def _means(rng: np.random.Generator, mean: float, phi: float, n: int) -> np.ndarray:
    noise = rng.normal(0.0, 1.0 / math.sqrt(n), HORIZON)
    if phi == 0.0:
        return mean + noise
    out = np.empty(HORIZON)
    out[0] = noise[0]
    scale = math.sqrt(1.0 - phi * phi)
    for t in range(1, HORIZON):
        out[t] = phi * out[t - 1] + scale * noise[t]
    return mean + out


def first_harm(stream: Stream, judge: JudgeVariant, gap: float, seed: int) -> int | None:
    """The interval at which one rollout is rolled back for harm, or None within HORIZON."""
    rng = np.random.default_rng(seed)
    cand = _means(rng, stream.mean - gap * (abs(stream.mean) or 1.0), stream.phi, N_C)
    stab = _means(rng, stream.mean, stream.phi, N_S)
    spec = api.JudgeSpec(kind=api.JudgeKind.SEQUENTIAL, alpha=0.05, min_detectable_effect=0.05)
    values = dict.fromkeys(sequential.SERIES_KEYS, 0.0)
    state, _ = sequential.update(spec, None, values, judge.batch)
    restart_at = HORIZON // 2 if stream.restart else -1
    for t in range(HORIZON):
        if t == restart_at:
            values["candidate_sum"] = values["candidate_count"] = 0.0
        values["candidate_sum"] += N_C * cand[t]
        values["candidate_count"] += N_C
        values["stable_sum"] += N_S * stab[t]
        values["stable_count"] += N_S
        state, _ = sequential.update(spec, state, values)
        if state.decision == sequential.HARM:
            return t + 1
    return None


def _rollouts(stream: Stream, judge: JudgeVariant, gap: float, runs: int, seed: int) -> list[int | None]:
    if judge.legacy_reset:
        with mock.patch.object(sequential, "increments", legacy_increments):
            return [first_harm(stream, judge, gap, seed + i) for i in range(runs)]
    return [first_harm(stream, judge, gap, seed + i) for i in range(runs)]


def false_rollbacks(runs: int, seed: int) -> list[dict[str, object]]:
    """A/A: the share of rollouts rolled back within HORIZON intervals, per stream and judge."""
    rows = []
    for i, stream in enumerate(STREAMS):
        for j, judge in enumerate(JUDGES):
            outcomes = _rollouts(stream, judge, 0.0, runs, seed + 1_000_000 * (10 * i + j))
            rate = sum(o is not None for o in outcomes) / runs
            rows.append({"stream": stream.name, "judge": judge.name, "runs": runs, "false_rollback_rate": rate,
                         "se": math.sqrt(max(rate * (1 - rate), 1e-12) / runs)})
    return rows


def detection(runs: int, seed: int) -> list[dict[str, object]]:
    """Regressions of each gap: the share caught within HORIZON and the median interval of the catch."""
    rows = []
    for i, stream in enumerate(DETECTION_STREAMS):
        for j, judge in enumerate(DETECTION_JUDGES):
            for k, gap in enumerate(GAPS):
                outcomes = _rollouts(stream, judge, gap, runs, seed + 1_000_000 * (100 * i + 10 * j + k) + 7)
                caught = [o for o in outcomes if o is not None]
                rows.append({"stream": stream.name, "judge": judge.name, "gap": gap, "runs": runs,
                             "detect_rate": len(caught) / runs,
                             "median_intervals": float(np.median(caught)) if caught else None})
    return rows
