"""The order-status feed on a Redis Cluster that changes under it (a cluster of the test's own): the primary serving
the project's channel slot is killed and its replica promoted, or the slot moves to another primary; the feed
subscribes again on the slot's new owner by itself, re-reads the orders it follows, and its streams get the next
status once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.crc import key_slot

from core.connections import RedisClient
from core.keys import UserKeys, order_status_channel
from entitlements.v1 import entitlements_pb2 as pb
from server.app import Service
from server.config import ConsumerSettings
from server.status_channel import OrderState, OrderStatusPublisher
from server.tracking import OrderTracking
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory, sample
from tests.helpers.slots import move_slot
from tests.helpers.stores import client_for
from tests.helpers.waiting import eventually
from tools.cluster import LocalCluster

CHANNEL = order_status_channel(PROJECT)
DONE, WEBHOOK = pb.ORDER_STATUS_DONE, pb.ORDER_STATUS_SOURCE_WEBHOOK

pytestmark = pytest.mark.slow


def player_away_from(cluster: LocalCluster, channel: str) -> str:
    """A player whose keys are not served by the channel's primary (they stay writable while it fails)."""
    owner = cluster.primary_for(channel)
    for i in range(1000):
        player = f"player-{i}"
        if cluster.primary_for(UserKeys(PROJECT, player).items) is not owner:
            return player
    raise AssertionError("every player's keys are on the channel's primary")


def tracking_of(service: Service) -> OrderTracking:
    assert service.tracking is not None
    return service.tracking


def subscribes(service: Service) -> float:
    return sample(service, "entitlements_order_feed_subscribes_total")


class Streams:
    """Two token-less streams of one player on the service, read in the background."""

    def __init__(self, client: Any, player: str) -> None:
        self.updates: dict[str, list[tuple[int, int, bool]]] = {"o-1": [], "o-2": []}
        self.tasks = [asyncio.get_running_loop().create_task(self._read(client, player, o)) for o in self.updates]

    async def _read(self, client: Any, player: str, order_id: str) -> None:
        async for u in client.get_order_status(order_id, player):
            self.updates[order_id].append((u.status, u.source, u.entitlements_granted))

    async def end(self) -> dict[str, list[tuple[int, int, bool]]]:
        async with asyncio.timeout(20):
            await asyncio.gather(*self.tasks)
        return self.updates


@pytest.fixture
async def redis(private_cluster: LocalCluster) -> AsyncIterator[RedisClient]:
    """A cluster client for writing and publishing behind the service's back."""
    client = client_for(private_cluster.url, cluster=True)
    yield client
    await client.aclose()


async def following_two_orders(
    cluster: LocalCluster, service_factory: ServiceFactory, client_factory: ClientFactory
) -> tuple[Service, Streams, str]:
    service = await service_factory(redis_url=cluster.url, consumer=ConsumerSettings(enabled=False))
    player = player_away_from(cluster, CHANNEL)
    streams = Streams(await client_factory(service), player)
    await eventually(lambda: len(tracking_of(service)) == 2, what="the trackers")
    await eventually(lambda: subscribes(service) >= 1 and tracking_of(service).feed.subscribed.is_set(), what="feed")
    return service, streams, player


async def changed_and_resubscribed(service: Service, redis: RedisClient, player: str, change: Any, what: str) -> float:
    """Writes o-1's state unannounced, makes `change` (a blocking call), waits for the feed's new subscription, then
    announces o-2's state without writing it; returns the seconds from the change to the new subscription."""
    before = subscribes(service)
    fields = {"status": "paid", "granted": "1", "updated_at_ms": "1767225600000"}
    await redis.hset(UserKeys(PROJECT, player).order("o-1"), mapping=fields)  # type: ignore[arg-type]
    started = time.monotonic()
    await asyncio.to_thread(change)
    feed = tracking_of(service).feed
    await eventually(lambda: subscribes(service) > before and feed.subscribed.is_set(), timeout_s=30.0, what=what)
    took_s = time.monotonic() - started
    state = OrderState(PROJECT, "o-2", player, "paid", True, 1767225600001)
    publisher = OrderStatusPublisher(redis, cluster=True)

    async def heard() -> bool:
        try:
            return await publisher.publish(state) == 1
        except Exception:  # the test's own client may still have the former owner in its slot map
            return False

    await eventually(heard, timeout_s=10.0, what="one subscriber on the channel's new owner")
    return took_s


async def test_the_feed_follows_its_channel_to_the_promoted_replica(
    private_cluster: LocalCluster, service_factory: ServiceFactory, client_factory: ClientFactory, redis: RedisClient
) -> None:
    """The channel's primary is killed: once its replica is promoted the feed subscribes on it, re-reads what was
    written meanwhile, and hears the next publication; each stream gets DONE once."""
    service, streams, player = await following_two_orders(private_cluster, service_factory, client_factory)
    owner = private_cluster.primary_for(CHANNEL)

    def fail_over() -> None:
        private_cluster.kill(owner)
        private_cluster.wait_failover(owner)

    took_s = await changed_and_resubscribed(service, redis, player, fail_over, "the feed on the promoted replica")
    assert private_cluster.primary_for(CHANNEL) is not owner
    assert await streams.end() == {"o-1": [(DONE, WEBHOOK, True)], "o-2": [(DONE, WEBHOOK, True)]}
    print(f"primary killed -> feed subscribed on the promoted replica after {took_s:.2f} s (failover included)")


async def test_the_feed_follows_its_channel_to_the_slots_new_owner(
    private_cluster: LocalCluster, service_factory: ServiceFactory, client_factory: ClientFactory, redis: RedisClient
) -> None:
    """The channel's slot moves to another primary (its keys migrated): the feed, unsubscribed by the former owner,
    subscribes on the new one, re-reads, and hears the next publication; each stream gets DONE once."""
    service, streams, player = await following_two_orders(private_cluster, service_factory, client_factory)
    owner = private_cluster.primary_for(CHANNEL)
    target = next(node for node in private_cluster.primaries() if node is not owner)

    def move() -> None:
        move_slot(private_cluster, key_slot(CHANNEL.encode()), target)
        private_cluster.wait_healthy()

    took_s = await changed_and_resubscribed(service, redis, player, move, "the feed on the slot's new owner")
    assert private_cluster.primary_for(CHANNEL) is target
    assert await streams.end() == {"o-1": [(DONE, WEBHOOK, True)], "o-2": [(DONE, WEBHOOK, True)]}
    assert sample(service, "entitlements_order_feed_reconnects_total") >= 1
    print(f"slot moved -> feed subscribed on its new owner after {took_s:.2f} s")
