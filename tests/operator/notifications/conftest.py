"""Fixture registration for the notification tests (helpers live in tests/support/)."""

from tests.support.webhook_receiver import webhook  # noqa: F401
