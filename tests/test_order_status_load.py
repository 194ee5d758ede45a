"""GetOrderStatus under load: a reconnect storm of 5,000 streams opened at once, through the project's client.

gRPC core keeps calls that arrived but that the server has not picked up yet in a backlog, and refuses new calls
at random once it holds `grpc.server.max_pending_requests` (default 1000), all of them past `..._hard_limit`
(3000): the callers see CANCELLED. grpc.aio picks up one call per turn of its loop, so thousands of streams opened
at once overflow the default backlog (about 45% of 5,000 were refused when this was measured); the service raises
both limits (server/rpc.py, `grpc_server_options`).

`open_streams` and `webhook_to_update_s` are also what a benchmark can call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from core.keys import UserKeys
from entitlements import AsyncEntitlementsClient, AsyncOrderStatusStream
from providers.xsolla import WebhookSettings
from server.tracking.settings import TrackingSettings
from tests.helpers.events import PARTITIONS, consumer_settings
from tests.helpers.gateway import running_gateway
from tests.helpers.services import PROJECT, READER_KEY, ServiceFactory
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually
from webhook_gateway import GatewaySettings
from xsolla_simulator import XsollaSimulator
from xsolla_simulator.testing import running_simulator

pytestmark = pytest.mark.slow


@dataclass
class Storm:
    """Streams opened at once, and when each got its first message (seconds after the first was opened)."""

    streams: list[AsyncOrderStatusStream]
    first_message_s: dict[int, float] = field(default_factory=dict)
    errors: dict[int, BaseException] = field(default_factory=dict)
    open_s: float = 0.0

    def close(self) -> None:
        for stream in self.streams:
            stream.cancel()


async def seed_stored_orders(redis: aioredis.Redis, orders: int, *, prefix: str = "storm") -> list[tuple[str, str]]:
    """Stores `orders` orders as paid but not yet granted (what the consumer writes), so that a stream opened on
    one gets a first message at once and stays open. Returns their (order id, player id)."""
    seeded = [(f"{prefix}-order-{i}", f"{prefix}-player-{i}") for i in range(orders)]
    async with redis.pipeline(transaction=False) as pipe:
        for order_id, user_id in seeded:
            pipe.hset(
                UserKeys(PROJECT, user_id).order(order_id),
                mapping={"status": "paid", "granted": "0", "updated_at_ms": 1},
            )
        await pipe.execute()
    return seeded


async def open_streams(
    clients: Sequence[AsyncEntitlementsClient],
    orders: Sequence[tuple[str, str]],
    count: int,
    *,
    timeout_s: float = 30.0,
    token: str = "",
) -> Storm:
    """Opens `count` GetOrderStatus streams at once, round-robin over `clients` (one HTTP/2 connection each) and
    `orders`, and waits until each has its first message or failed (or `timeout_s` passed). The streams stay open:
    call `Storm.close()`."""
    storm = Storm(streams=[])
    started = time.perf_counter()

    async def first_message(index: int, stream: AsyncOrderStatusStream) -> None:
        try:
            await anext(stream)
            storm.first_message_s[index] = time.perf_counter() - started
        except Exception as exc:
            storm.errors[index] = exc

    waits = []
    for index in range(count):
        order_id, user_id = orders[index % len(orders)]
        stream = clients[index % len(clients)].get_order_status(order_id, user_id, token=token)
        storm.streams.append(stream)
        waits.append(first_message(index, stream))
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*waits)
    finally:
        storm.open_s = time.perf_counter() - started
    return storm


async def webhook_to_update_s(
    sim: XsollaSimulator, client: AsyncEntitlementsClient, user_id: str, *, settle_s: float = 0.2
) -> float:
    """Creates an order, opens a stream on it (no token: webhooks only), has the simulator pay it with the webhook
    alone, and returns the seconds from the gateway's answer (204) to the stream's update."""
    order = sim.create_order(user_id, [{"sku": "gold", "quantity": 1, "type": "virtual_currency"}])
    stream = client.get_order_status(str(order.order_id), user_id)
    loop = asyncio.get_running_loop()
    update = asyncio.ensure_future(anext(stream))
    try:
        await asyncio.sleep(settle_s)  # the stream is open on the service
        announcement = await sim.set_status(order.order_id, "paid", channels=("webhook",))
        await update
        received = loop.time()
    finally:
        stream.cancel()
    delivery = announcement.webhook
    assert delivery is not None
    assert delivery.status == 204
    return received - (delivery.at + delivery.elapsed_s)


async def test_a_reconnect_storm_of_5000_streams_is_served(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """5,000 streams opened at once over 5 connections all get their first message; none is refused."""
    service = await service_factory(redis_url=redis_server.url, tracking=TrackingSettings(max_trackers=20_000))
    assert service.endpoints is not None
    tracking = service.tracking
    assert tracking is not None
    orders = await seed_stored_orders(redis_client, 100)
    target = f"127.0.0.1:{service.endpoints.grpc_port}"
    clients = [AsyncEntitlementsClient(target, api_key=READER_KEY) for _ in range(5)]
    try:
        for client in clients:  # connect first: the storm is of calls, not of connections
            await client.check_entitlement("warm-up", "gold")
        storm = await open_streams(clients, orders, 5000, timeout_s=30.0)
        try:
            assert storm.errors == {}
            assert len(storm.first_message_s) == 5000
            assert storm.open_s < 30.0
            assert len(tracking) == 100
            assert service.registry.get_sample_value("entitlements_order_watchers") == 5000
        finally:
            storm.close()
        await eventually(lambda: len(tracking) == 0, timeout_s=20.0, what="every tracker to stop")
    finally:
        for client in clients:
            await client.close()


async def test_webhook_to_update_latency_is_measurable(
    service_factory: ServiceFactory, redis_server: StoreUnderTest
) -> None:
    """The helper the benchmark uses: the order_paid's 204 at the gateway is followed by the stream's update."""
    secret = "latency-secret"
    gateway_settings = GatewaySettings(port=0, metrics_port=None, event_partitions=PARTITIONS, **redis_server.settings)
    async with (
        running_gateway(gateway_settings, WebhookSettings(default_secret=secret)) as gateway,
        running_simulator(project_id=PROJECT, webhook_url=gateway.url, webhook_secret=secret) as sim,
    ):
        service = await service_factory(redis_url=redis_server.url, **consumer_settings())
        assert service.endpoints is not None
        async with AsyncEntitlementsClient(f"127.0.0.1:{service.endpoints.grpc_port}", api_key=READER_KEY) as client:
            latencies = [await webhook_to_update_s(sim, client, f"latency-player-{i}") for i in range(5)]
    assert all(0 <= latency < 5.0 for latency in latencies)
