"""The change feed's write side as one part of the service process: the relay and the repair, started and stopped
together by the composition root (`server.app`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from core.connections import RedisClient
from server.feed.relay import FeedRelay
from server.feed.repair import FeedRepair
from server.metrics import FeedMetrics

if TYPE_CHECKING:  # server.config imports server.feed for its settings
    from server.config import Settings


class FeedWriter:
    """The relay the store's writes hand their changes to, and the repair behind it.

    Args:
        redis: the service's client.
        settings: the service's: `feed` (`ENTITLEMENTS_FEED_*`), the Redis timeout (one round trip's bound), the
            longest a write may take (`write_bound_s`, which the repair delay exceeds), and the projects configured
            (the repair trims their partitions even before a write reaches them).
        registry: where the feed's metrics are registered (`server.metrics.FeedMetrics`).
    """

    def __init__(self, redis: RedisClient, settings: Settings, registry: CollectorRegistry) -> None:
        timeout_s, feed = settings.redis_timeout_s, settings.feed
        metrics = self.metrics = FeedMetrics(registry)
        self.relay = FeedRelay(redis, timeout_s=timeout_s, retention_s=feed.retention_s, metrics=metrics)
        self.repair = FeedRepair(
            redis,
            self.relay,
            delay_s=feed.repair_delay_s(settings.write_bound_s),
            timeout_s=timeout_s,
            metrics=metrics,
            projects=settings.projects.ids,
        )

    def start(self) -> None:
        """Starts the repair's passes (the relay starts with the first write)."""
        self.repair.start()

    async def stop(self, grace_s: float) -> None:
        """Stops the repair, then relays what is queued within `grace_s` (the rest is left to another replica's
        repair, or this one's after a restart)."""
        await self.repair.stop()
        await self.relay.close(grace_s)
