"""The per-API-key cap on GetOrderStatus streams, on the real service: one caller cannot take every order tracker,
and a stream stops counting however it ends (cancelled, deadline, max wait, client gone)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from core.errors import ConfigError
from entitlements import AsyncOrderStatusStream, DeadlineExceededError, ResourceExhaustedError
from entitlements.v1 import entitlements_pb2 as pb
from server.app import Service
from server.config import Settings
from server.embedded import EmbeddedRedis
from server.tracking import OrderTracking
from server.tracking.settings import TrackingSettings
from tests.helpers.services import READER_KEY, WRITER_KEY, ClientFactory, ServiceFactory
from tests.helpers.waiting import eventually
from tests.test_order_status_load import seed_stored_orders

CAP = 3


def tracking_of(service: Service) -> OrderTracking:
    assert service.tracking is not None
    return service.tracking


def gauge(service: Service, key: str) -> float:
    return service.registry.get_sample_value("entitlements_order_streams", {"key": key}) or 0.0


def refused(service: Service, key: str) -> float:
    return service.registry.get_sample_value("entitlements_order_streams_refused_total", {"key": key}) or 0.0


async def opened(stream: AsyncOrderStatusStream) -> AsyncOrderStatusStream:
    """Waits for the stream's first message (the stored state), so it is open on the service."""
    async with asyncio.timeout(10):
        await anext(stream)
    return stream


async def rest_of(stream: AsyncOrderStatusStream) -> list[pb.OrderStatusUpdate]:
    """The stream's remaining messages, until the server ends it."""
    async with asyncio.timeout(10):
        return [update async for update in stream]


@pytest.fixture
async def capped(service_factory: ServiceFactory, redis_server: EmbeddedRedis) -> Service:
    """A service allowing each API key 3 streams (and 100 trackers in all)."""
    return await service_factory(
        redis_url=redis_server.url, tracking=TrackingSettings(max_trackers=100, streams_per_key=CAP)
    )


@pytest.fixture
async def orders(redis_client: aioredis.Redis) -> list[tuple[str, str]]:
    """Orders stored as paid but not granted: a stream on one gets its state at once and stays open."""
    return await seed_stored_orders(redis_client, 10, prefix="cap")


async def test_one_key_at_its_cap_is_refused_while_another_key_is_served(
    capped: Service, client_factory: ClientFactory, orders: list[tuple[str, str]]
) -> None:
    """Key A opens its 3 streams, the 4th is RESOURCE_EXHAUSTED naming the limit; key B still gets one; when one
    of A's is closed, A can open another."""
    key_a = await client_factory(capped, api_key=READER_KEY)
    key_b = await client_factory(capped, api_key=WRITER_KEY)
    tracking = tracking_of(capped)
    streams = [await opened(key_a.get_order_status(*orders[i])) for i in range(CAP)]
    assert tracking.streams_of("reader") == CAP
    with pytest.raises(ResourceExhaustedError, match=f"API key 'reader' holds its maximum of {CAP} GetOrderStatus"):
        await opened(key_a.get_order_status(*orders[CAP]))
    assert refused(capped, "reader") == 1
    other = await opened(key_b.get_order_status(*orders[CAP]))
    assert (tracking.streams_of("reader"), tracking.streams_of("writer")) == (CAP, 1)
    assert (gauge(capped, "reader"), gauge(capped, "writer")) == (CAP, 1)

    streams.pop().cancel()
    await eventually(lambda: tracking.streams_of("reader") == CAP - 1, what="the cancelled stream to be released")
    streams.append(await opened(key_a.get_order_status(*orders[CAP + 1])))
    assert tracking.streams_of("reader") == CAP
    assert refused(capped, "reader") == 1

    for stream in [*streams, other]:
        stream.cancel()
    await eventually(lambda: tracking.streams_of("reader") == tracking.streams_of("writer") == 0, what="release")
    assert (gauge(capped, "reader"), gauge(capped, "writer")) == (0, 0)


async def test_streams_on_one_order_count_one_by_one(
    capped: Service, client_factory: ClientFactory, orders: list[tuple[str, str]]
) -> None:
    """The cap counts streams, not orders: three streams on one order fill it too."""
    client = await client_factory(capped, api_key=READER_KEY)
    streams = [await opened(client.get_order_status(*orders[0])) for _ in range(CAP)]
    assert len(tracking_of(capped)) == 1
    with pytest.raises(ResourceExhaustedError, match="maximum of 3"):
        await opened(client.get_order_status(*orders[0]))
    for stream in streams:
        stream.cancel()


async def test_a_stream_is_released_however_it_ends(
    capped: Service, client_factory: ClientFactory, orders: list[tuple[str, str]]
) -> None:
    """A stream that ends by its deadline, by its max wait, or because its client went away no longer counts."""
    tracking = tracking_of(capped)
    client = await client_factory(capped, api_key=READER_KEY)

    # Both ends generous: the three streams must all be open at once, however slowly a loaded machine opens them.
    deadline = client.get_order_status(*orders[0], timeout_s=3.0)
    await opened(deadline)
    max_wait = client.get_order_status(*orders[1], max_wait=timedelta(seconds=2))
    await opened(max_wait)
    leaving = await client_factory(capped, api_key=READER_KEY)  # a second connection, closed under the stream
    await opened(leaving.get_order_status(*orders[2]))
    assert tracking.streams_of("reader") == CAP

    with pytest.raises(DeadlineExceededError):
        await rest_of(deadline)
    (last,) = await rest_of(max_wait)
    assert last.timed_out
    await leaving.close()
    await eventually(lambda: tracking.streams_of("reader") == 0, what="every stream to be released")
    assert gauge(capped, "reader") == 0
    assert len(tracking) == 0

    again = [await opened(client.get_order_status(*orders[i])) for i in range(CAP)]
    assert tracking.streams_of("reader") == CAP
    for stream in again:
        stream.cancel()


def test_the_default_cap_is_half_the_tracker_limit() -> None:
    """Unset, a key may hold half of ENTITLEMENTS_MAX_ORDER_TRACKERS; the variable sets it, and 0 is refused."""
    assert Settings.from_env({}).tracking.stream_limit_per_key == 5_000
    env = {"ENTITLEMENTS_MAX_ORDER_TRACKERS": "9", "ENTITLEMENTS_ORDER_STREAMS_PER_KEY": "2"}
    assert Settings.from_env({"ENTITLEMENTS_MAX_ORDER_TRACKERS": "9"}).tracking.stream_limit_per_key == 4
    assert Settings.from_env(env).tracking.stream_limit_per_key == 2
    assert Settings.from_env({"ENTITLEMENTS_MAX_ORDER_TRACKERS": "1"}).tracking.stream_limit_per_key == 1
    with pytest.raises(ConfigError, match="ENTITLEMENTS_ORDER_STREAMS_PER_KEY must be at least 1"):
        Settings.from_env({"ENTITLEMENTS_ORDER_STREAMS_PER_KEY": "0"})
