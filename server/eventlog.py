"""The event log: accepted provider notifications, as WebhookEvents in partitioned Redis streams.

The webhook gateway appends (`EventLog.append`); the service's consumer reads with a consumer group
(`server.consumer`). An event goes to the partition of its player, so one player's events stay in order on one
stream and a Redis Cluster can spread partitions over its nodes. The dedup check and the XADD are one Lua script
on keys that share the partition's hash tag: a notification delivered fifty times at once is stored once.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from importlib import resources

import redis.exceptions as redis_errors
from redis.commands.core import AsyncScript

from entitlements.v1 import events_pb2
from server.errors import StoreUnavailable
from server.keys import EventKeys
from server.store import RedisClient

DEFAULT_DEDUP_TTL_S = 72 * 3600


def partition_for(user_id: str, partitions: int) -> int:
    """The partition of a player's events: a stable hash of the user id (CRC-32) modulo the partition count."""
    return zlib.crc32(user_id.encode()) % partitions if partitions > 1 else 0


@dataclass(frozen=True)
class AppendResult:
    """What `append` did: the stream entry id, or None when the event id had been stored before."""

    entry_id: str | None
    partition: int

    @property
    def duplicate(self) -> bool:
        return self.entry_id is None


class EventLog:
    """Appends events to the partitioned streams.

    Args:
        redis: a connected client, owned by the caller.
        partitions: how many streams events are spread over (>= 1). Changing it on a running system moves players
            to other partitions; drain the streams first.
        dedup_ttl_s: how long an event id is remembered; at least Xsolla's retry window (72 h default > 48 h).
        timeout_s: upper bound of one append, retries included.
        max_stream_length: approximate cap on each stream (0: no cap). Entries past the cap are trimmed oldest
            first whether or not they were consumed, so leave it 0 unless the consumer keeps up by a wide margin.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        partitions: int = 1,
        dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S,
        timeout_s: float = 2.0,
        max_stream_length: int = 0,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.partitions = partitions
        self._redis = redis
        self._dedup_ttl_ms = dedup_ttl_s * 1000
        self._timeout_s = timeout_s
        self._max_stream_length = max_stream_length
        source = (resources.files("server") / "lua" / "append_event.lua").read_text()
        self._append: AsyncScript = redis.register_script(source)

    def keys_for(self, user_id: str) -> EventKeys:
        """The keys of the partition that holds `user_id`'s events."""
        return EventKeys(partition_for(user_id, self.partitions))

    def all_partitions(self) -> list[EventKeys]:
        return [EventKeys(p) for p in range(self.partitions)]

    async def append(self, event: events_pb2.WebhookEvent, raw: bytes) -> AppendResult:
        """Stores `event` with its raw body unless its `event_id` was stored within the dedup window.

        Raises:
            StoreUnavailable: Redis did not answer in time; the caller must not acknowledge the notification.
        """
        keys = self.keys_for(event.user_id)
        args: list[bytes | str | int] = [
            self._dedup_ttl_ms,
            event.SerializeToString(),
            raw,
            events_pb2.EventType.Name(event.type),
            self._max_stream_length,
        ]
        try:
            async with asyncio.timeout(self._timeout_s):
                entry = await self._append(keys=[keys.dedup(event.event_id), keys.stream], args=args)
        except TimeoutError as exc:
            raise StoreUnavailable(f"Redis did not answer within {self._timeout_s:g} s") from exc
        except (redis_errors.RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}") from exc
        if entry is None:
            return AppendResult(None, keys.partition)
        return AppendResult(entry.decode() if isinstance(entry, bytes) else str(entry), keys.partition)
