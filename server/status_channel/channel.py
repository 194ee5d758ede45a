"""The order-status channels on one Redis deployment, and their publisher."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog

from core.connections import BlockingCluster, RedisClient
from core.keys import order_status_channel
from server.status_channel.states import OrderState, UpstreamRecords, UpstreamStatus

log = structlog.get_logger("server.status_channel")

# How long one read of the subscription waits for a message: also how long a change of the projects followed
# waits before it is subscribed (the re-read after the subscription covers what was published meanwhile).
READ_TIMEOUT_S = 0.2


class Channel:
    """The order-status channels on one Redis deployment: plain pub/sub on a standalone server, sharded pub/sub on a
    Cluster (each channel served by the node owning its slot). The one place that choice is made.

    Args:
        redis: a connected client, owned by the caller.
        cluster: whether `redis` is a Redis Cluster client.
    """

    def __init__(self, redis: RedisClient, *, cluster: bool) -> None:
        self._redis = redis
        self.cluster = cluster

    async def publish(self, project_id: int, message: str) -> int:
        """Publishes `message` on the project's channel; returns how many subscribers received it (on Cluster: on
        the channel's shard)."""
        channel = order_status_channel(project_id)
        if self.cluster:
            return int(await self._redis.spublish(channel, message))
        return int(await self._redis.publish(channel, message))

    def publish_command(self, project_id: int, message: str) -> tuple[str, str, str]:
        """`publish` as one command, to send in a pipeline to the node of the project's channel (its slot's on a
        Cluster, which `core.keys.order_status_channel` shares with the project's other keys)."""
        return ("SPUBLISH" if self.cluster else "PUBLISH", order_status_channel(project_id), message)

    def pubsub(self) -> Any:
        """A pub/sub connection of the client's pool, not subscribed yet; the caller closes it (`aclose()`)."""
        return self._redis.pubsub()

    async def subscribe(self, pubsub: Any, channels: Iterable[str]) -> None:
        """Subscribes `pubsub` to `channels`; each confirmation arrives as a message."""
        if self.cluster:
            # A client that has not discovered the cluster yet (or must again) knows no slot owner to subscribe on.
            await self._redis.initialize()
            await pubsub.ssubscribe(*channels)
        else:
            await pubsub.subscribe(*channels)

    async def unsubscribe(self, pubsub: Any, channels: Iterable[str]) -> None:
        """Ends `pubsub`'s subscription to `channels`."""
        if self.cluster:
            await pubsub.sunsubscribe(*channels)
        else:
            await pubsub.unsubscribe(*channels)

    async def next_message(self, pubsub: Any) -> dict[str, Any] | None:
        """The next message or subscription confirmation, or None if none came within `READ_TIMEOUT_S`."""
        if self.cluster:
            message = await pubsub.get_sharded_message(timeout=READ_TIMEOUT_S)
        else:
            message = await pubsub.get_message(timeout=READ_TIMEOUT_S)
        return message if isinstance(message, dict) else None

    async def rediscover(self, timeout_s: float) -> None:
        """On a Cluster, reads the slot map again before subscribing anew: after a failover or a slot's move the
        client's map still names the former owner, and nothing else refreshes it for a subscriber (redis-py does
        on a command's MOVED or connection error, which a replica that only listens never gets). Best effort: a
        failure leaves the next subscribe to fail and be retried."""
        if not self.cluster or not isinstance(self._redis, BlockingCluster):
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._redis.rediscover()
        except Exception as exc:  # the cluster is still changing: the next attempt reads it again
            log.info("order_feed_rediscovery_failed", error=repr(exc))


class OrderStatusPublisher:
    """Publishes order states, and the statuses the provider reports to the replica following an order there, on
    their project's channel.

    Args:
        redis: a connected client, owned by the caller.
        cluster: whether `redis` is a Redis Cluster client (sharded pub/sub is used then).
        timeout_s: bound on an upstream record's write.
    """

    def __init__(self, redis: RedisClient, *, cluster: bool, timeout_s: float = 1.0) -> None:
        self._channel = Channel(redis, cluster=cluster)
        self._records = UpstreamRecords(redis, timeout_s=timeout_s)

    async def publish(self, state: OrderState) -> int:
        """Publishes `state` on `state.project_id`'s channel; returns how many subscribers received it (on Cluster:
        on the channel's shard)."""
        return await self._channel.publish(state.project_id, state.to_json())

    def publish_command(self, state: OrderState) -> tuple[str, str, str]:
        """`publish` as one command, for a pipeline on the node of the project's channel (see `Channel`)."""
        return self._channel.publish_command(state.project_id, state.to_json())

    async def publish_upstream(self, status: UpstreamStatus, rank: int) -> int:
        """Records `status` as the order's upstream status (forward-only: `rank` orders it), then publishes it even
        when the record was further already (a holder that died between the two left it unannounced); returns
        how many subscribers received it.

        Raises:
            StoreUnavailable: the record could not be written in time (nothing was published).
            redis.exceptions.RedisError: the publication failed.
        """
        await self._records.record(status, rank)
        return await self._channel.publish(status.project_id, status.to_json())
