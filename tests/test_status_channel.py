"""The order-status channel on a real Valkey (pub/sub on the single server, sharded pub/sub on the cluster): its
subscriber stops promptly however early it is stopped."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from core import connections
from server.metrics import ServiceMetrics
from server.status_channel import ChannelMessage, OrderState, OrderStatusFeed, OrderStatusPublisher
from tests.helpers.services import PROJECT
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually


async def test_the_feed_stops_at_once_even_while_it_subscribes(redis_server: StoreUnderTest) -> None:
    """Stopped at every point of setting up its subscription, the feed ends within its read timeout.

    A cancellation that reaches redis-py while the subscription is being confirmed can be swallowed; the feed
    must still end, or a service told to stop right after starting would hang.
    """
    redis = connections.connect(redis_server.url, cluster=redis_server.cluster, timeout_s=1.0, max_connections=8)
    metrics = ServiceMetrics(CollectorRegistry())
    try:
        for turns in [n % 8 for n in range(40)]:
            feed = OrderStatusFeed(
                redis,
                cluster=redis_server.cluster,
                dispatch=lambda state: 0,
                followed=lambda project_id: [],
                metrics=metrics,
            )
            feed.follow(PROJECT)
            feed.start()
            for _ in range(turns):
                await asyncio.sleep(0)
            async with asyncio.timeout(3.0):
                await feed.stop()
    finally:
        await redis.aclose()


async def test_a_published_state_reaches_the_feed(redis_server: StoreUnderTest) -> None:
    """What the consumer publishes is dispatched to the subscriber, unchanged."""
    redis = connections.connect(redis_server.url, cluster=redis_server.cluster, timeout_s=1.0, max_connections=8)
    heard: list[ChannelMessage] = []

    def dispatch(state: ChannelMessage) -> int:
        heard.append(state)
        return 1

    feed = OrderStatusFeed(
        redis,
        cluster=redis_server.cluster,
        dispatch=dispatch,
        followed=lambda project_id: [],
        metrics=ServiceMetrics(CollectorRegistry()),
    )
    feed.follow(PROJECT)
    feed.start()
    try:
        await eventually(feed.subscribed.is_set, what="the subscription")
        state = OrderState(PROJECT, "42", "player-1", "paid", True, 1_767_225_600_000)
        assert await OrderStatusPublisher(redis, cluster=redis_server.cluster).publish(state) == 1
        await eventually(lambda: heard == [state], what="the published state")
    finally:
        await feed.stop()
        await redis.aclose()
