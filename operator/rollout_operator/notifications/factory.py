"""Format name -> formatter. Adding a format = one file + one line in `FORMATTERS`."""

from __future__ import annotations

from collections.abc import Callable

from rollout_operator import api
from rollout_operator.errors import RolloutOperatorError
from rollout_operator.notifications import base, slack, webhook

FORMATTERS: dict[api.NotificationFormat, Callable[[], base.Formatter]] = {
    api.NotificationFormat.JSON: webhook.JsonFormatter,
    api.NotificationFormat.SLACK: slack.SlackFormatter,
}


class UnknownFormat(RolloutOperatorError, ValueError):
    """A notification format this operator cannot produce."""


def make_formatter(name: api.NotificationFormat | str) -> base.Formatter:
    try:
        return FORMATTERS[api.NotificationFormat(name)]()
    except (ValueError, KeyError):
        valid = ", ".join(f.value for f in api.NotificationFormat)
        raise UnknownFormat(f"unknown notification format {name!r}: use one of {valid}") from None
