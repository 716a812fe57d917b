"""Fixture registration only: helpers live in tests/support/policy_server.py."""

from tests.support.policy_server import models  # noqa: F401
