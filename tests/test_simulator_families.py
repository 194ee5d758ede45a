"""The simulator's webhook families in both delivery modes: payment and refund before the order webhooks in
separate mode (and only after their 2xx), everything in the order webhooks in combined mode, sandbox marks,
partial refunds, the subscription webhooks with chosen dates, held and resent webhooks, retries for every family;
and all of it accepted by a real gateway, signed with each project's own secret."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from entitlements.v1 import events_pb2 as ev
from tests.helpers.gateway import gateway_settings, running_gateway, stored_events, xsolla_settings
from tests.helpers.receiver import ReceiverFactory
from tests.helpers.stores import StoreUnderTest
from xsolla_simulator import InvalidRequest, RetrySchedule, SimOrder, XsollaSimulator
from xsolla_simulator.testing import SimulatorFactory, simulator_factory_context

PROJECT = 12345
SECRET = "separate-secret-0123456789"
ITEMS = [
    {"sku": "gold", "quantity": 100, "type": "virtual_currency", "price": "0.05"},
    {"sku": "sword", "quantity": 1, "type": "virtual_good", "price": "4.99"},
]
FAST = RetrySchedule((0.05, 0.05, 0.05, 0.05))
CREATED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimulatorFactory]:
    """Starts simulators for project 12345 signing with SECRET, with quick retries; stops them at the end."""
    async with simulator_factory_context() as make:

        async def start(**kwargs: Any) -> XsollaSimulator:
            kwargs.setdefault("project_id", PROJECT)
            kwargs.setdefault("webhook_secret", SECRET)
            kwargs.setdefault("retry_schedule", FAST)
            return await make(**kwargs)

        yield start


def new_order(sim: XsollaSimulator, *, sandbox: bool = False, project_id: int | None = None) -> SimOrder:
    return sim.create_order("player-1", items=ITEMS, sandbox=sandbox, project_id=project_id)


async def test_combined_mode_sends_only_the_order_webhooks_with_the_payment_in_billing(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """Combined: paid sends order_paid (payment in `billing`), a refund sends order_canceled (refund in
    `billing`, with its code); no payment or refund webhook is sent."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url)
    order = new_order(sim)

    await sim.set_status(order.order_id, "paid")
    await sim.refund(order.order_id, code=2)
    await sim.wait_webhooks_settled(3)

    assert receiver.types() == ["order_paid", "order_canceled"]
    paid, canceled = (request.document for request in receiver.received)
    assert paid["billing"]["notification_type"] == "payment"
    assert paid["billing"]["settings"] == {"project_id": PROJECT, "merchant_id": 100001}
    assert paid["billing"]["transaction"]["id"] == order.invoice_id
    assert canceled["billing"]["notification_type"] == "refund"
    assert canceled["billing"]["refund_details"] == {"code": 2, "reason": "Chargeback"}
    assert canceled["order"]["status"] == "canceled"
    assert order.status == "canceled"
    assert all(request.signed_with(SECRET) for request in receiver.received)


async def test_separate_mode_sends_order_paid_only_after_the_payment_was_acknowledged(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """Separate: `payment` first, retried through two 503s; `order_paid` (no `billing`, no `settings`) arrives
    only after the payment's 204, and never for an order whose payment was rejected."""
    receiver = await receiver_factory(answers_by_type={"payment": [503, 503, 204, 400]})
    sim = await sim_factory(webhook_url=receiver.url, webhook_mode="separate")
    order = new_order(sim)
    refused = new_order(sim)

    announcement = await sim.set_status(order.order_id, "paid")
    await sim.wait_webhooks_settled(3)
    await sim.set_status(refused.order_id, "paid")
    await sim.wait_webhooks_settled(3)

    assert announcement.webhook is not None
    assert (announcement.webhook.type, announcement.webhook.status) == ("payment", 503)
    assert receiver.types() == ["payment", "payment", "payment", "order_paid", "payment"]
    acknowledged = next(at for kind, status, at in receiver.answered if kind == "payment" and status == 204)
    (order_paid,) = receiver.of_type("order_paid")
    assert order_paid.at >= acknowledged
    document = order_paid.document
    assert "billing" not in document
    assert "settings" not in document
    assert document["order"]["id"] == order.order_id
    assert document["user"]["external_id"] == "player-1"
    payment = receiver.received[0].document
    assert payment["settings"] == {"project_id": PROJECT, "merchant_id": 100001}
    assert payment["user"]["id"] == "player-1"
    assert payment["transaction"]["id"] == order.invoice_id
    assert "dry_run" not in payment["transaction"]
    assert payment["purchase"]["total"] == {"currency": "USD", "amount": 9.99}
    assert [(d.type, d.outcome) for d in sim.webhook_deliveries if d.order_id == refused.order_id] == [
        ("payment", "rejected")
    ]


async def test_separate_mode_sends_the_refund_before_order_canceled(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """Separate: a refund sends `refund` (refund_details, the payment's transaction id), and `order_canceled`
    only once the refund was acknowledged."""
    receiver = await receiver_factory(answers_by_type={"refund": [503, 204]})
    sim = await sim_factory(webhook_url=receiver.url, webhook_mode="separate")
    order = new_order(sim)

    await sim.set_status(order.order_id, "paid")
    await sim.wait_webhooks_settled(3)
    await sim.refund(order.order_id, code=10)
    await sim.wait_webhooks_settled(3)

    assert receiver.types() == ["payment", "order_paid", "refund", "refund", "order_canceled"]
    refund = receiver.of_type("refund")[0].document
    assert refund["transaction"]["id"] == order.invoice_id
    assert refund["refund_details"] == {"code": 10, "reason": "Cancellation by the request of game"}
    assert refund["settings"]["project_id"] == PROJECT
    assert receiver.of_type("order_canceled")[0].document["order"]["status"] == "canceled"


@pytest.mark.parametrize("mode", ["combined", "separate"])
async def test_sandbox_orders_are_marked_where_xsolla_marks_them(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory, mode: str
) -> None:
    """A sandbox order says `order.mode: sandbox` and `transaction.dry_run: 1` (in `billing` when combined, in
    `payment`/`refund` when separate); a live order says `default` and has no `dry_run` anywhere."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url, webhook_mode=mode)
    test_order, live_order = new_order(sim, sandbox=True), new_order(sim)

    for order in (test_order, live_order):
        await sim.set_status(order.order_id, "paid")
        await sim.refund(order.order_id)
        await sim.wait_webhooks_settled(3)

    for request in receiver.received:
        document = request.document
        if "order" in document:
            sandbox = document["order"]["id"] == test_order.order_id
            assert document["order"]["mode"] == ("sandbox" if sandbox else "default")
        transaction = document.get("transaction") or document.get("billing", {}).get("transaction")
        if transaction is not None:  # every webhook but separate mode's order webhooks
            sandbox = transaction["id"] == test_order.invoice_id
            assert transaction.get("dry_run") == (1 if sandbox else None)
    if mode == "combined":
        expected = ["order_paid", "order_canceled"]
    else:
        expected = ["payment", "order_paid", "refund", "order_canceled"]
    assert receiver.types() == expected * 2


async def test_partial_refund_carries_its_amount_and_code(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """partial_refund sends the transaction's `partial_refund` with the amount refunded and its code, leaving the
    order paid; amounts outside (0, total) and codes a partial refund cannot have are refused."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url, webhook_mode="separate")
    order = new_order(sim, sandbox=True)
    await sim.set_status(order.order_id, "paid")

    delivery = await sim.partial_refund(order.order_id, "4.99", code=9)
    with pytest.raises(InvalidRequest):
        await sim.partial_refund(order.order_id, "9.99")
    with pytest.raises(InvalidRequest):
        await sim.partial_refund(order.order_id, "1", code=2)
    await sim.wait_webhooks_settled(3)

    assert delivery is not None
    assert delivery.outcome == "delivered"
    document = receiver.of_type("partial_refund")[0].document
    assert document["purchase"]["total"] == {"currency": "USD", "amount": 4.99}
    assert document["refund_details"] == {"code": 9, "reason": "Cancellation by the request of user"}
    assert document["transaction"]["id"] == order.invoice_id
    assert document["transaction"]["dry_run"] == 1
    assert order.status == "paid"


@pytest.mark.parametrize("mode", ["combined", "separate"])
async def test_subscription_webhooks_carry_the_chosen_dates(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory, mode: str
) -> None:
    """create, renew (by one period, then to a chosen date), set non-renewing and cancel send Xsolla's four
    subscription webhooks with the dates chosen, in either delivery mode."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url, webhook_mode=mode)
    chosen_charge = CREATED + timedelta(days=90)
    ended = CREATED + timedelta(days=75)

    subscription = await sim.subscriptions.create(
        "player-1", "plan-gold", product_id="vip", date_create=CREATED, period=timedelta(days=30), trial_days=7
    )
    await sim.subscriptions.renew(subscription.subscription_id)
    await sim.subscriptions.renew(subscription.subscription_id, date_next_charge=chosen_charge)
    await sim.subscriptions.set_non_renewing(subscription.subscription_id)
    await sim.subscriptions.cancel(subscription.subscription_id, date_end=ended)
    await sim.wait_webhooks_settled(3)

    assert receiver.types() == [
        "create_subscription",
        "update_subscription",
        "update_subscription",
        "non_renewal_subscription",
        "cancel_subscription",
    ]
    created, renewed, moved, non_renewing, canceled = (request.document for request in receiver.received)
    ident = {"plan_id": "plan-gold", "subscription_id": subscription.subscription_id}
    assert created["subscription"] == {
        **ident,
        "product_id": "vip",
        "date_create": "2026-03-01T12:00:00+00:00",
        "date_next_charge": "2026-04-07T12:00:00+00:00",
        "trial": {"value": 7, "type": "day"},
    }
    assert renewed["subscription"] == {**ident, "product_id": "vip", "date_next_charge": "2026-05-07T12:00:00+00:00"}
    assert moved["subscription"]["date_next_charge"] == "2026-05-30T12:00:00+00:00"
    assert non_renewing["subscription"] == {
        **ident,
        "date_create": "2026-03-01T12:00:00+00:00",
        "date_next_charge": "2026-05-30T12:00:00+00:00",
        "currency": "USD",
        "amount": 9.99,
    }
    assert canceled["subscription"] == {
        **ident,
        "product_id": "vip",
        "date_create": "2026-03-01T12:00:00+00:00",
        "date_end": "2026-05-15T12:00:00+00:00",
    }
    for request in receiver.received:
        assert request.document["settings"] == {"project_id": PROJECT, "merchant_id": 100001}
        assert request.document["user"] == {"id": "player-1"}
        assert request.signed_with(SECRET)
    assert subscription.status == "canceled"


async def test_every_family_is_retried_on_the_schedule(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """A 503 is retried for payment, refund, partial_refund and subscription webhooks alike, until a 204."""
    families = ("payment", "refund", "partial_refund", "create_subscription")
    receiver = await receiver_factory(answers_by_type={family: [503, 503] for family in families})
    sim = await sim_factory(webhook_url=receiver.url, webhook_mode="separate")
    order = new_order(sim)

    await sim.set_status(order.order_id, "paid")
    await sim.wait_webhooks_settled(3)
    await sim.partial_refund(order.order_id, "1")
    await sim.refund(order.order_id)
    await sim.subscriptions.create("player-1")
    await sim.wait_webhooks_settled(3)

    for family in families:
        attempts = [(d.attempt, d.status, d.outcome) for d in sim.webhook_deliveries if d.type == family]
        assert attempts == [(1, 503, "retry"), (2, 503, "retry"), (3, 204, "delivered")], family


async def test_a_held_webhook_is_delivered_after_a_later_one_when_released(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """A held renewal reaches the receiver only when released, after the cancel made later; resending sends the
    same bytes and signature again as a new webhook."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url)
    subscription = await sim.subscriptions.create("player-1", date_create=CREATED)
    sim.hold_webhooks("update_subscription", times=1)

    held = await sim.subscriptions.renew(subscription.subscription_id)
    (renewal,) = sim.held_webhooks
    await sim.subscriptions.cancel(subscription.subscription_id)
    assert receiver.types() == ["create_subscription", "cancel_subscription"]
    released = await sim.release_webhook(renewal.webhook_id)
    again = await sim.resend_webhook(renewal.webhook_id)
    await sim.wait_webhooks_settled(3)

    assert held.status == "canceled"  # the live view: the subscription moved on meanwhile
    assert receiver.types() == [
        "create_subscription",
        "cancel_subscription",
        "update_subscription",  # released, late
        "update_subscription",  # resent
    ]
    assert released.outcome == "delivered"
    assert again is not None
    assert again.webhook_id != renewal.webhook_id
    late, duplicate = receiver.of_type("update_subscription")
    assert late.body == duplicate.body == renewal.body
    assert late.headers["Authorization"] == duplicate.headers["Authorization"]
    assert sim.held_webhooks == []
    with pytest.raises(InvalidRequest):
        await sim.release_webhook(renewal.webhook_id)


async def test_a_held_payment_holds_its_order_paid_back(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """Separate mode: while the payment is held nothing is sent; released, the payment and then order_paid go."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url, webhook_mode="separate")
    sim.hold_webhooks("payment")
    order = new_order(sim)

    announcement = await sim.set_status(order.order_id, "paid")
    sim.stop_holding_webhooks()
    await sim.wait_webhooks_settled(3)
    assert announcement.webhook is None
    assert receiver.received == []

    (payment,) = sim.held_webhooks
    await sim.release_webhook(payment.webhook_id)
    await sim.wait_webhooks_settled(3)
    assert receiver.types() == ["payment", "order_paid"]


# --- through a real gateway -------------------------------------------------------------------------------------


async def test_every_family_reaches_a_real_gateway_signed_with_its_projects_secret(
    redis_server: StoreUnderTest, redis_client: aioredis.Redis, sim_factory: SimulatorFactory
) -> None:
    """Project A (separate mode, `<path>/A`) and project B (combined, the bare path), each signing with its own
    secret: the gateway accepts every webhook of every family and stores it under the right project, B's
    sandbox order marked as such."""
    a, b = 1001, 2002
    secrets = {a: "secret-of-a-0123456789", b: "secret-of-b-0123456789"}
    settings = gateway_settings(redis_url=redis_server.url)
    xsolla = xsolla_settings(default_secret=None, project_secrets={p: (s,) for p, s in secrets.items()})
    async with running_gateway(settings, xsolla) as gateway:
        sim = await sim_factory(
            project_id=a, webhook_url=f"{gateway.url}/{a}", webhook_secret=secrets[a], webhook_mode="separate"
        )
        sim.add_project(b, webhook_url=gateway.url, webhook_secret=secrets[b])
        for project, sandbox in ((a, False), (b, True)):
            await _drive_every_family(sim, project, sandbox=sandbox)
        await sim.wait_webhooks_settled(5)
        events = [stored.event for stored in await stored_events(redis_client, partitions=settings.event_partitions)]

    assert {d.outcome for d in sim.webhook_deliveries} == {"delivered"}, sim.webhook_deliveries
    subscriptions = ["create_subscription", "update_subscription", "non_renewal_subscription", "cancel_subscription"]
    separate = ["payment", "order_paid", "partial_refund", "refund", "order_canceled"]
    expected = [(a, t) for t in separate + subscriptions] + [
        (b, t) for t in ["order_paid", "order_canceled", *subscriptions]
    ]
    assert sorted((e.project_id, e.notification_type) for e in events) == sorted(expected)
    assert all(e.user_id == "player-1" for e in events)
    for event in events:
        marked = event.project_id == b and event.type in (ev.EVENT_TYPE_ORDER_PAID, ev.EVENT_TYPE_ORDER_CANCELED)
        assert event.sandbox == marked, event
    assert {line.sku for e in events if e.type == ev.EVENT_TYPE_ORDER_PAID for line in e.order.lines} == {
        "gold",
        "sword",
    }


async def _drive_every_family(sim: XsollaSimulator, project: int, *, sandbox: bool) -> None:
    """A paid order, a partial refund, a refund, and a subscription's whole life, in `project`."""
    order = new_order(sim, sandbox=sandbox, project_id=project)
    await sim.set_status(order.order_id, "paid")
    await sim.wait_webhooks_settled(3)
    if sim.project(project).separate:
        await sim.partial_refund(order.order_id, "0.50")
    await sim.refund(order.order_id)
    subscription = await sim.subscriptions.create("player-1", project_id=project, date_create=CREATED)
    await sim.subscriptions.renew(subscription.subscription_id)
    await sim.subscriptions.set_non_renewing(subscription.subscription_id)
    await sim.subscriptions.cancel(subscription.subscription_id)
