"""Judges: pluggable, pure decision logic for an analysis (see `base` for the contract)."""

from rollout_operator.engine.judges.base import SERIES_PREFIX, Finding, Judge, Judgement, SeriesQuery
from rollout_operator.engine.judges.factory import JUDGES, judge_at, judge_for, make_judge

__all__ = [
    "JUDGES",
    "SERIES_PREFIX",
    "Finding",
    "Judge",
    "Judgement",
    "SeriesQuery",
    "judge_at",
    "judge_for",
    "make_judge",
]
