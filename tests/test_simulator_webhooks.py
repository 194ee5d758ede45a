"""The Xsolla simulator's webhooks: signed like Xsolla's, retried on its schedule (compressed in time), every
attempt recorded, delivered to a real aiohttp receiver on a free port."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import pytest

from entitlements.v1 import events_pb2 as ev
from providers.xsolla import WebhookSettings, XsollaWebhooks
from tests.helpers.receiver import ReceiverFactory
from xsolla_simulator import ORDER_RETRY_SCHEDULE, RetrySchedule, SimOrder, XsollaSimulator
from xsolla_simulator.testing import SimulatorFactory, simulator_factory_context

PROJECT = 12345
SECRET = "webhook-secret-0123456789"
ITEMS = [
    {"sku": "gold", "quantity": 100, "type": "virtual_currency", "price": "0.05"},
    {"sku": "sword", "quantity": 1, "type": "virtual_good", "price": "4.99"},
]


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimulatorFactory]:
    """Starts simulators for project 12345 signing with SECRET; stops them at the end."""
    async with simulator_factory_context() as make:

        async def start(**kwargs: Any) -> XsollaSimulator:
            kwargs.setdefault("project_id", PROJECT)
            kwargs.setdefault("webhook_secret", SECRET)
            return await make(**kwargs)

        yield start


def new_order(sim: XsollaSimulator) -> SimOrder:
    return sim.create_order("player-1", items=ITEMS)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_order_retry_schedule_is_xsollas() -> None:
    """2 retries 5 minutes apart, 7 at 15 minutes, 10 at 60 minutes: 20 attempts in all."""
    assert ORDER_RETRY_SCHEDULE.intervals_s == (300.0,) * 2 + (900.0,) * 7 + (3600.0,) * 10
    assert ORDER_RETRY_SCHEDULE.max_attempts == 20
    assert ORDER_RETRY_SCHEDULE.wait_after(1) == 300.0
    assert ORDER_RETRY_SCHEDULE.wait_after(20) is None


async def test_webhooks_are_signed_like_xsollas(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """order_paid arrives as JSON with `Authorization: Signature sha1(body + secret)` and the combined-mode shape."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url)
    order = new_order(sim)

    announcement = await sim.set_status(order.order_id, "paid")

    assert announcement.webhook is not None
    assert announcement.webhook.outcome == "delivered"
    (request,) = receiver.received
    expected = hashlib.sha1(request.body + SECRET.encode()).hexdigest()  # noqa: S324 - Xsolla's scheme
    assert request.headers["Authorization"] == f"Signature {expected}"
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.body)
    assert body["notification_type"] == "order_paid"
    assert body["order"]["id"] == order.order_id
    assert body["order"]["status"] == "paid"
    assert body["order"]["amount"] == "9.9900"
    assert body["order"]["invoice_id"] == str(order.invoice_id)
    assert body["user"]["external_id"] == "player-1"
    assert [(i["sku"], i["type"], i["quantity"], i["amount"]) for i in body["items"]] == [
        ("gold", "virtual_currency", 100, "5.0000"),
        ("sword", "virtual_good", 1, "4.9900"),
    ]
    assert body["billing"]["settings"]["project_id"] == PROJECT
    assert body["billing"]["transaction"]["id"] == order.invoice_id
    assert sim.webhooks[0].body == request.body


async def test_webhook_bodies_are_accepted_by_the_gateways_parser(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """The gateway's Xsolla parser verifies and reads the simulator's order_paid and order_canceled."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url)
    order = sim.create_order("player-1", items=ITEMS, sandbox=True)
    await sim.set_status(order.order_id, "paid")
    await sim.set_status(order.order_id, "canceled")
    provider = XsollaWebhooks(WebhookSettings(project_secrets=MappingProxyType({PROJECT: (SECRET,)})))

    events: list[ev.WebhookEvent] = []
    for request in receiver.received:
        authentication = provider.authentication({"Authorization": request.headers["Authorization"]}, None)
        authentication.update(request.body)
        verified = authentication.verify(request.body)
        event = provider.interpret(verified, time.time_ns()).event
        assert event is not None
        events.append(event)

    assert [event.type for event in events] == [ev.EVENT_TYPE_ORDER_PAID, ev.EVENT_TYPE_ORDER_CANCELED]
    for event in events:
        assert event.project_id == PROJECT
        assert event.user_id == "player-1"
        assert event.sandbox
        assert event.order.order_id == str(order.order_id)
        assert event.order.transaction_id == str(order.invoice_id)
        assert [(line.sku, line.quantity) for line in event.order.lines] == [("gold", 100), ("sword", 1)]


async def test_webhooks_are_retried_on_5xx_on_the_compressed_schedule(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """503s are retried 5 min, 5 min, then 15 min apart (scaled by 0.001) until a 204 ends the delivery."""
    receiver = await receiver_factory(answers=[503, 503, 503])
    sim = await sim_factory(webhook_url=receiver.url, time_scale=0.001)
    order = new_order(sim)

    announcement = await sim.set_status(order.order_id, "paid")
    await sim.wait_webhooks_settled(timeout_s=5)

    assert announcement.webhook is not None
    assert announcement.webhook.attempt == 1
    attempts = sim.webhook_deliveries
    assert [(a.attempt, a.status, a.outcome) for a in attempts] == [
        (1, 503, "retry"),
        (2, 503, "retry"),
        (3, 503, "retry"),
        (4, 204, "delivered"),
    ]
    assert {(a.order_id, a.type, a.webhook_id) for a in attempts} == {(order.order_id, "order_paid", 1)}
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    for gap, expected in zip(gaps, (0.3, 0.3, 0.9), strict=True):
        assert expected <= gap < expected + 0.5, gaps
    assert len({r.body for r in receiver.received}) == 1  # every attempt sends the same bytes


async def test_a_listed_4xx_is_final(sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory) -> None:
    """A 400 ends the delivery at once, recorded as rejected; the order is left alone without auto-refund."""
    receiver = await receiver_factory(default=400)
    sim = await sim_factory(webhook_url=receiver.url, time_scale=0.001)
    order = new_order(sim)

    await sim.set_status(order.order_id, "paid")
    await sim.wait_webhooks_settled(timeout_s=1)
    await asyncio.sleep(0.35)  # past the first retry's time

    assert [(a.attempt, a.status, a.outcome) for a in sim.webhook_deliveries] == [(1, 400, "rejected")]
    assert len(receiver.received) == 1
    assert order.status == "paid"


async def test_connection_errors_and_timeouts_are_retried(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """No listener, or no answer within the attempt timeout, counts as a failure to retry; the last one gives up."""
    slow = await receiver_factory(delay_s=0.5)
    schedule = RetrySchedule((0.05,))
    refused = await sim_factory(webhook_url=f"http://127.0.0.1:{free_port()}/hook", retry_schedule=schedule)
    timed_out = await sim_factory(webhook_url=slow.url, retry_schedule=schedule, webhook_timeout_s=0.2)

    for sim in (refused, timed_out):
        await sim.set_status(new_order(sim).order_id, "paid")
        await sim.wait_webhooks_settled(timeout_s=3)

    assert [(a.status, a.outcome) for a in refused.webhook_deliveries] == [(None, "retry"), (None, "gave_up")]
    assert all(a.error and a.error.startswith("ClientConnectorError") for a in refused.webhook_deliveries)
    assert [(a.error, a.outcome) for a in timed_out.webhook_deliveries] == [
        ("timeout", "retry"),
        ("timeout", "gave_up"),
    ]


async def test_auto_refund_cancels_an_order_whose_webhook_fails_for_good(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """With auto-refund on, an order_paid given up on after all 20 attempts (schedule scaled to under half a
    second) cancels the order and sends order_canceled; a rejected one does the same."""
    failing = await receiver_factory(default=503)
    rejecting = await receiver_factory(answers=[422])
    exhausted = await sim_factory(webhook_url=failing.url, time_scale=0.00001, auto_refund=True)
    rejected = await sim_factory(webhook_url=rejecting.url, time_scale=0.00001, auto_refund=True)

    for sim in (exhausted, rejected):
        order = new_order(sim)
        await sim.set_status(order.order_id, "paid")
        await sim.wait_webhooks_settled(timeout_s=5)
        assert order.status == "canceled"

    paid = [a for a in exhausted.webhook_deliveries if a.type == "order_paid"]
    assert [a.attempt for a in paid] == list(range(1, 21))
    assert paid[-1].outcome == "gave_up"
    assert [(a.type, a.outcome) for a in rejected.webhook_deliveries] == [
        ("order_paid", "rejected"),
        ("order_canceled", "delivered"),
    ]


async def test_statuses_without_a_webhook_send_none_and_duplicates_can_be_sent(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """new, done and expired send no webhook; send_webhook resends the last order_paid byte for byte."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url)
    order = new_order(sim)

    await sim.set_status(order.order_id, "paid")
    await sim.set_status(order.order_id, "done")
    duplicate = await sim.send_webhook(order.order_id, "order_paid")
    await sim.set_status(new_order(sim).order_id, "expired")

    assert duplicate is not None
    assert duplicate.webhook_id == 2
    assert duplicate.outcome == "delivered"
    first, again = receiver.received
    assert first.body == again.body
    assert first.headers["Authorization"] == again.headers["Authorization"]
    assert json.loads(first.body)["order"]["id"] == order.order_id
