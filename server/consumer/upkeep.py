"""The event streams' upkeep, done by every consumer beside its reading: gauges, retention, group membership.

- Every few seconds (`StreamUpkeep.observe`): the pending, lag and dead-letter gauges of a project's partition,
  group-wide.
- Every minute (`StreamUpkeep.housekeeping`): trims entries every consumer is done with once they are older than
  the retention, and removes group members of processes gone for good (idle an hour, holding nothing pending).
- When a consumer stops (`StreamUpkeep.release`): it leaves the group if it holds nothing pending, best effort.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis.exceptions as redis_errors
import structlog

from core import scripts
from core.connections import RedisClient, reply_text
from core.keys import CONSUMER_GROUP, EventKeys
from server.config import ConsumerSettings
from server.deadletters import DeadLetters
from server.metrics import ServiceMetrics

log = structlog.get_logger("server.consumer")

HOUSEKEEPING_INTERVAL_S = 60.0
# A group member idle this long and holding nothing is a process that is gone: it is removed from the group.
STALE_CONSUMER_MS = 3_600_000
# Bound on the best-effort clean-up when stopping (Redis may be the reason we stop).
RELEASE_TIMEOUT_S = 0.5


class StreamUpkeep:
    """Gauges, retention trim and group membership of the event streams (`server/lua/release_consumers.lua`).

    Args:
        redis: a client for the stream commands, owned by the caller.
        metrics: the service's metrics (the consumer and dead-letter gauges).
        dead_letters: the dead-letter streams, for their gauge.
        settings: the consumer settings (`retention_days`).
    """

    def __init__(
        self, redis: RedisClient, metrics: ServiceMetrics, dead_letters: DeadLetters, settings: ConsumerSettings
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._dead_letters = dead_letters
        self._settings = settings
        self._release = scripts.register(redis, "server", "release_consumers.lua")

    async def observe(self, keys: EventKeys) -> None:
        """Updates the pending, lag and dead-letter gauges of a partition (group-wide values).

        Raises:
            redis.exceptions.RedisError: Redis failed (NOGROUP when the group is gone).
        """
        labels = (str(keys.project_id), str(keys.partition))
        group = await group_info(self._redis, keys)
        if group is None:
            return
        pending = int(group.get("pending") or 0)
        lag = group.get("lag")
        last_delivered = reply_text(group.get("last-delivered-id") or b"0-0")
        oldest_ms = await self._oldest_pending_ms(keys, group)
        if lag is None or int(lag) > 0:
            first: Any = await self._redis.xrange(keys.stream, min=f"({last_delivered}", count=1)
            if first:
                undelivered_ms = _id_ms(reply_text(first[0][0]))
                oldest_ms = undelivered_ms if oldest_ms is None else min(oldest_ms, undelivered_ms)
        lag_s = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
        self._metrics.consumer_pending.labels(*labels).set(pending)
        self._metrics.consumer_lag_entries.labels(*labels).set(int(lag) if lag is not None else 0)
        self._metrics.consumer_lag.labels(*labels).set(lag_s)
        self._metrics.dead_letters_waiting.labels(*labels).set(await self._dead_letters.waiting(keys))

    async def housekeeping(self, keys: EventKeys) -> None:
        """Trims acknowledged entries past the retention; removes group members of processes gone for good.

        Raises:
            redis.exceptions.RedisError: Redis failed (NOGROUP when the group is gone).
        """
        removed = await self._release(keys=[keys.stream], args=[CONSUMER_GROUP, "", STALE_CONSUMER_MS])
        if removed:
            log.info(
                "stale_consumers_removed", project_id=keys.project_id, partition=keys.partition, count=int(removed)
            )
        retention_ms = int(self._settings.retention_days * 86_400_000)
        if retention_ms <= 0:
            return
        group = await group_info(self._redis, keys)
        if group is None:
            return
        # Only entries every consumer is done with: older than the oldest pending one and already delivered.
        bound_ms = int(time.time() * 1000) - retention_ms
        bound_ms = min(bound_ms, _id_ms(reply_text(group.get("last-delivered-id") or b"0-0")))
        oldest_pending_ms = await self._oldest_pending_ms(keys, group)
        if oldest_pending_ms is not None:
            bound_ms = min(bound_ms, oldest_pending_ms)
        if bound_ms > 0:
            trimmed = await self._redis.xtrim(keys.stream, minid=f"{bound_ms}-0", approximate=True)
            if trimmed:
                log.info(
                    "event_stream_trimmed", project_id=keys.project_id, partition=keys.partition, entries=int(trimmed)
                )

    async def release(self, joined: Sequence[EventKeys], name: str) -> None:
        """Takes consumer `name` out of the group of each partition in `joined` where it holds nothing pending.
        Best effort, within `RELEASE_TIMEOUT_S`; never raises for Redis."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                for keys in joined:
                    await self._release(keys=[keys.stream], args=[CONSUMER_GROUP, name, STALE_CONSUMER_MS])
        except (redis_errors.RedisError, OSError, TimeoutError):
            pass  # the name stays; the next housekeeping anywhere removes it once it has been idle an hour

    async def _oldest_pending_ms(self, keys: EventKeys, group: dict[str, Any]) -> int | None:
        """When the oldest entry delivered but not acknowledged was added (ms), or None when nothing is pending."""
        if not int(group.get("pending") or 0):
            return None
        summary = await self._redis.xpending(keys.stream, CONSUMER_GROUP)
        if summary and summary.get("min"):
            return _id_ms(reply_text(summary["min"]))
        return None


async def group_info(redis: RedisClient, keys: EventKeys) -> dict[str, Any] | None:
    """XINFO GROUPS' entry of the consumer group `CONSUMER_GROUP` on a partition's stream, or None without one."""
    for group in await redis.xinfo_groups(keys.stream):
        if reply_text(group.get("name", b"")) == CONSUMER_GROUP:
            return dict(group)
    return None


def _id_ms(entry_id: str) -> int:
    """The millisecond part of a stream entry id (the Redis server's clock when it was added)."""
    return int(entry_id.split("-", 1)[0])
