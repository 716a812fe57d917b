"""The join rules as written on a command line: durations, `--as-of`, and options that cannot be used."""

from __future__ import annotations

import re

import pytest

from policy_server.join import JoinError, JoinOptions, parse_as_of, parse_duration


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("1h30m", 5400.0), ("7d", 7 * 86400.0), ("250ms", 0.25),
    ("42", 42.0), ("2.5h", 9000.0), (None, None), ("none", None), ("unbounded", None),
])
def test_durations_read_as_seconds_and_unbounded_as_none(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1 hour", "h", "5x", "1h-2m"])
def test_an_unreadable_duration_says_which_forms_work(text: str) -> None:
    with pytest.raises(JoinError, match=re.escape("use e.g. 90s, 15m, 1h")):
        parse_duration(text)


def test_as_of_reads_iso_8601_in_utc_unless_told_otherwise_or_epoch_seconds() -> None:
    assert parse_as_of("1970-01-01T01:00:00Z") == 3600.0
    assert parse_as_of("1970-01-01T01:00:00") == 3600.0
    assert parse_as_of("1970-01-01T02:00:00+01:00") == 3600.0
    assert parse_as_of("3600") == 3600.0


@pytest.mark.parametrize("options, message", [
    ({"window": -1.0}, "reward window must be a duration >= 0"),
    ({"default_reward": float("nan")}, "--default-reward must be a finite number"),
])
def test_options_that_cannot_be_used_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(JoinError, match=message):
        JoinOptions(**options)
