"""The simulator's lost webhooks and its order search controls: a share of webhooks dropped (by type, by project,
the same ones for the same seed), kept, and delivered late exactly as they were made, to a real gateway that
then stores them; the same over the HTTP control API, with backdated orders and the order search's switches."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from entitlements.v1 import events_pb2 as ev
from tests.helpers.gateway import gateway_settings, running_gateway, stored_events, xsolla_settings
from tests.helpers.receiver import ReceiverFactory
from tests.helpers.stores import StoreUnderTest
from xsolla_simulator import InvalidRequest, RetrySchedule, XsollaSimulator
from xsolla_simulator.testing import SimulatorFactory, simulator_factory_context

PROJECT = 12345
OTHER = 23456
SECRET = "lost-webhooks-secret-0123456789"
ITEMS = [{"sku": "gold", "quantity": 100, "type": "virtual_currency", "price": "0.05"}]
FAST = RetrySchedule((0.05, 0.05))


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimulatorFactory]:
    """Starts simulators for PROJECT signing with SECRET, with quick retries; stops them at the end."""
    async with simulator_factory_context() as make:

        async def start(**kwargs: Any) -> XsollaSimulator:
            kwargs.setdefault("project_id", PROJECT)
            kwargs.setdefault("webhook_secret", SECRET)
            kwargs.setdefault("retry_schedule", FAST)
            return await make(**kwargs)

        yield start


async def pay(sim: XsollaSimulator, count: int, *, project_id: int | None = None) -> list[int]:
    """`count` orders of player-<n>, each paid; returns their ids."""
    ids = []
    for n in range(count):
        order = sim.create_order(f"player-{n}", items=ITEMS, project_id=project_id)
        await sim.set_status(order.order_id, "paid")
        ids.append(order.order_id)
    return ids


async def test_dropped_webhooks_reach_a_real_gateway_late_as_they_were_made(
    redis_server: StoreUnderTest, redis_client: aioredis.Redis, sim_factory: SimulatorFactory
) -> None:
    """Every order_paid dropped: the gateway stores nothing and the canceled order's webhook still goes; delivered
    late, each dropped webhook arrives once, signed, with its exact bytes, and is stored for its player."""
    settings = gateway_settings(redis_url=redis_server.url)
    xsolla = xsolla_settings(default_secret=None, project_secrets={PROJECT: (SECRET,)})
    async with running_gateway(settings, xsolla) as gateway:
        sim = await sim_factory(webhook_url=f"{gateway.url}/{PROJECT}")
        sim.drop_webhooks(types=("order_paid",))
        paid = await pay(sim, 3)
        await sim.set_status(paid[0], "canceled")
        await sim.wait_webhooks_settled(5)
        before = await stored_events(redis_client, partitions=settings.event_partitions)

        dropped = sim.dropped()
        sim.stop_dropping()
        deliveries = await sim.deliver_dropped()
        await sim.wait_webhooks_settled(5)
        after = await stored_events(redis_client, partitions=settings.event_partitions)

    assert [e.event.type for e in before] == [ev.EVENT_TYPE_ORDER_CANCELED]
    assert [(w.type, w.order_id, w.dropped) for w in dropped] == [("order_paid", i, True) for i in paid]
    assert [(d.webhook_id, d.status, d.outcome) for d in deliveries] == [
        (w.webhook_id, 204, "delivered") for w in dropped
    ]
    assert sim.dropped() == []
    late = [stored for stored in after if stored.event.type == ev.EVENT_TYPE_ORDER_PAID]
    assert sorted(stored.raw for stored in late) == sorted(w.body for w in dropped)
    assert sorted((s.event.user_id, s.event.order.order_id) for s in late) == [
        (f"player-{n}", str(order_id)) for n, order_id in enumerate(paid)
    ]


async def test_a_share_is_dropped_the_same_way_for_the_same_seed(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """Half of 40 webhooks: some but not all are dropped, the same ones on a second run with the same seed, others
    with another seed; a type or project not named is never dropped."""

    async def run(seed: int) -> tuple[list[int], XsollaSimulator]:
        receiver = await receiver_factory()
        sim = await sim_factory(webhook_url=receiver.url)
        sim.add_project(OTHER, webhook_url=receiver.url_for(OTHER), webhook_secret=SECRET)
        sim.drop_webhooks(0.5, ("order_paid",), project_id=PROJECT, seed=seed)
        ids = await pay(sim, 40)
        await pay(sim, 5, project_id=OTHER)
        for order_id in ids[:5]:
            await sim.set_status(order_id, "canceled")
        await sim.wait_webhooks_settled(5)
        dropped = [w.order_id for w in sim.dropped()]
        assert receiver.types().count("order_paid") == 45 - len(dropped)
        assert receiver.types().count("order_canceled") == 5
        return [ids.index(order_id) for order_id in dropped if order_id is not None], sim

    first, sim = await run(seed=7)
    again, _ = await run(seed=7)
    other, _ = await run(seed=8)

    assert 0 < len(first) < 40
    assert first == again
    assert first != other
    assert {w.project_id for w in sim.dropped()} == {PROJECT}
    with pytest.raises(InvalidRequest, match="share"):
        sim.drop_webhooks(1.5)


async def test_a_dropped_payment_takes_its_order_paid_with_it_until_delivered(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """Separate mode: a dropped payment means no order_paid; delivered late, the payment goes first and its
    order_paid follows its 2xx."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url, webhook_mode="separate")
    sim.drop_webhooks(types=("payment",))
    await pay(sim, 1)
    await sim.wait_webhooks_settled(5)
    assert receiver.types() == []

    sim.stop_dropping()
    await sim.deliver_dropped()
    await sim.wait_webhooks_settled(5)

    assert receiver.types() == ["payment", "order_paid"]
    assert all(request.signed_with(SECRET) for request in receiver.received)


async def test_drops_and_the_order_search_over_the_control_api(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    """Over /_sim: drop webhooks, list and deliver them late; backdate an order and find it with the order search;
    switch user.id on, rate-limit and fail the search, and read its calls."""
    receiver = await receiver_factory()
    sim = await sim_factory(webhook_url=receiver.url)
    control = sim.control_url
    sim.catalog.set_project(PROJECT, api_key="key-0123")

    async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with http.request(method, control + path, json=body) as answer:
            return answer.status, await answer.json()

    assert await call("POST", "/webhooks/drop", {"share": 1.0, "types": ["order_paid"], "seed": 3}) == (200, {})
    created_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    status, order = await call(
        "POST", "/orders", {"user_id": "player-9", "items": ITEMS, "created_at": created_at.isoformat()}
    )
    assert (status, order["created_at"]) == (201, created_at.isoformat())
    await call("POST", f"/orders/{order['order_id']}/status", {"status": "paid"})
    status, dropped = await call("GET", "/webhooks/dropped")
    assert [(w["type"], w["order_id"], w["dropped"]) for w in dropped] == [("order_paid", order["order_id"], True)]
    assert await call("DELETE", "/webhooks/drop") == (200, {})
    status, deliveries = await call("POST", "/webhooks/dropped/deliver", {})
    assert [d["outcome"] for d in deliveries] == ["delivered"]
    assert receiver.types() == ["order_paid"]
    assert (await call("POST", "/webhooks/drop", {"share": "all"}))[0] == 400
    assert (await call("POST", "/orders", {"user_id": "p", "items": ITEMS, "created_at": "2026-01-02"}))[0] == 400

    assert await call("PUT", "/order-search/settings", {"include_user_id": True}) == (200, {})
    auth = {"Authorization": "Basic " + base64.b64encode(f"{PROJECT}:key-0123".encode()).decode()}
    search = f"{sim.store_api_url}/v3/project/{PROJECT}/admin/order/search"
    window = {
        "created_date_from": (created_at - timedelta(seconds=1)).isoformat(),
        "created_date_until": "2026-01-03T00:00:00Z",
    }
    async with http.post(search, json=window, headers=auth) as answer:
        found = await answer.json()
    assert [(o["order_id"], o["status"], o["user"]["id"], o["date_created"]) for o in found["orders"]] == [
        (order["order_id"], "paid", "player-9", "2026-01-02T03:04:05+00:00")
    ]

    assert await call("POST", "/order-search/faults", {"times": 1, "status": 503}) == (200, {})
    assert await call("POST", "/order-search/rate-limit", {"per_s": 0.001, "burst": 1}) == (200, {})
    statuses = []
    for _ in range(3):
        async with http.post(search, json={}, headers=auth) as answer:
            statuses.append(answer.status)
    assert statuses == [503, 429, 429]
    assert (await call("POST", "/order-search/rate-limit", {"per_s": 0}))[0] == 400
    status, calls = await call("GET", "/order-search/calls")
    assert [c["status"] for c in calls] == [200, 503, 429, 429]
