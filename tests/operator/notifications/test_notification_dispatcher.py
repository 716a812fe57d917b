"""Delivery over real HTTP to a local receiver: retries with backoff, timeouts, never blocking the caller."""

from __future__ import annotations

import threading

import pytest
from rollout_operator.notifications import dispatcher

from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration


def _dispatcher(**kwargs: float) -> tuple[dispatcher.Dispatcher, list[dispatcher.Delivery], threading.Event]:
    deliveries: list[dispatcher.Delivery] = []
    done = threading.Event()

    def record(delivery: dispatcher.Delivery) -> None:
        deliveries.append(delivery)
        done.set()

    options = {"timeout": 2.0, "retries": 3, "backoff": 0.05, **kwargs}
    return dispatcher.Dispatcher(on_delivery=record, **options), deliveries, done  # type: ignore[arg-type]


def test_delivers_json_with_its_user_agent(webhook: WebhookReceiver) -> None:
    sender, deliveries, done = _dispatcher()
    try:
        assert sender.submit(webhook.url, {"event": "rollback", "n": 1})
        assert done.wait(10)
    finally:
        sender.close()
    assert deliveries == [dispatcher.Delivery(webhook.url, True, 1)]
    (received,) = webhook.received
    assert received["body"] == {"event": "rollback", "n": 1}
    assert received["content_type"] == "application/json"
    assert received["user_agent"] == "policy-rollouts-operator"


def test_retries_server_errors_then_succeeds(webhook: WebhookReceiver) -> None:
    webhook.respond(503, 500, 429)
    sender, deliveries, done = _dispatcher()
    try:
        sender.submit(webhook.url, {"n": 1})
        assert done.wait(10)
    finally:
        sender.close()
    assert deliveries == [dispatcher.Delivery(webhook.url, True, 4)]
    assert webhook.attempts == 4 and webhook.bodies() == [{"n": 1}]


def test_gives_up_after_the_bounded_retries(webhook: WebhookReceiver) -> None:
    webhook.respond(500, 500, 500, 500, 500)
    sender, deliveries, done = _dispatcher(retries=2)
    try:
        sender.submit(webhook.url, {"n": 1})
        assert done.wait(10)
    finally:
        sender.close()
    assert deliveries == [dispatcher.Delivery(webhook.url, False, 3, "HTTP 500")]
    assert webhook.attempts == 3


def test_a_client_error_is_not_retried(webhook: WebhookReceiver) -> None:
    webhook.respond(400)
    sender, deliveries, done = _dispatcher()
    try:
        sender.submit(webhook.url, {"n": 1})
        assert done.wait(10)
    finally:
        sender.close()
    assert deliveries == [dispatcher.Delivery(webhook.url, False, 1, "HTTP 400")]


def test_a_hanging_receiver_times_out_and_never_blocks_submit(webhook: WebhookReceiver) -> None:
    webhook.delay = 30.0
    sender, deliveries, done = _dispatcher(timeout=0.3, retries=1)
    try:
        for n in range(5):
            assert sender.submit(webhook.url, {"n": n}), "submit only enqueues"
        assert not done.is_set(), "nothing was delivered yet: the receiver hangs"
        assert done.wait(10), "the first delivery must end by its timeout"
    finally:
        webhook.delay = 0.0
        sender.close(timeout=1.0)
    assert not deliveries[0].ok and deliveries[0].attempts == 2
    assert "Timeout" in (deliveries[0].error or "")


def test_connection_refused_is_retried_then_reported() -> None:
    with WebhookReceiver() as gone:
        url = gone.url
    sender, deliveries, done = _dispatcher(retries=1)
    try:
        sender.submit(url, {"n": 1})
        assert done.wait(10)
    finally:
        sender.close()
    assert not deliveries[0].ok and deliveries[0].attempts == 2 and "ConnectError" in (deliveries[0].error or "")


def test_a_full_queue_drops_instead_of_blocking(webhook: WebhookReceiver) -> None:
    webhook.delay = 30.0
    sender = dispatcher.Dispatcher(timeout=5.0, retries=0, max_queue=2)
    try:
        accepted = [sender.submit(webhook.url, {"n": n}) for n in range(6)]
    finally:
        webhook.delay = 0.0
        sender.close(timeout=1.0)
    # One is in flight, two wait in the queue, the rest are dropped at once.
    assert accepted.count(True) in (2, 3) and accepted[-1] is False


def test_close_delivers_what_is_queued(webhook: WebhookReceiver) -> None:
    sender = dispatcher.Dispatcher(timeout=2.0, retries=0)
    for n in range(3):
        sender.submit(webhook.url, {"n": n})
    sender.close(timeout=10.0)
    assert [b["n"] for b in webhook.bodies()] == [0, 1, 2]
    assert sender.submit(webhook.url, {"n": 4}) is False, "a closed dispatcher takes nothing"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        dispatcher.Dispatcher(timeout=0)
    with pytest.raises(ValueError, match="retries and backoff >= 0"):
        dispatcher.Dispatcher(retries=-1)
