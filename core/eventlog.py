"""The event log: accepted provider notifications, as WebhookEvents in partitioned Redis streams.

The webhook gateway appends (`EventLog.append`); the service's consumer reads with a consumer group
(`server.consumer`) and decodes each entry with `decode_event`. An entry's fields: `event` (the serialized
`entitlements.v1.WebhookEvent`), `raw` (the body as the provider sent it) and `type` (the EventType's name).
Each project has its own partitions (`core.keys.EventKeys`); an event goes to the partition of its player in its
project, so one player's events stay in order on one stream and a Redis Cluster can spread partitions over its
nodes. The first time a process appends for a project it adds the project to `PROJECTS_KEY` (before the XADD,
so a consumer that lists the projects can never miss a stream that has entries). The dedup check and the XADD
are one Lua script on keys that share the partition's hash tag: a notification delivered fifty times at once is
stored once.

With a `core.durability.Durability` that waits (the gateway's `local` or `replicas`), an append counts only once
the write is durable: the script and the WAIT/WAITAOF after it go on one connection in one round trip, and a
wait that falls short raises `NotDurable` (the entry stays in the stream; the caller must not acknowledge it, and
the retry, a duplicate, waits again: the script then refreshes the dedup key's expiry, a write to wait for).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import redis.exceptions as redis_errors
from google.protobuf.message import DecodeError
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from core import scripts
from core.connections import TRANSIENT_REPLIES, RedisClient, bounded, reply_code, reply_text
from core.durability import NO_WAIT, Durability, DurabilitySource, on_one_connection
from core.errors import NotDurable, StoreUnavailable
from core.keys import PROJECTS_KEY, EventKeys
from core.layout import LayoutGate
from entitlements.v1 import events_pb2

DEFAULT_DEDUP_TTL_S = 72 * 3600


def partition_for(user_id: str, partitions: int) -> int:
    """The partition of a player's events: a stable hash of the user id (CRC-32) modulo the partition count."""
    return zlib.crc32(user_id.encode()) % partitions if partitions > 1 else 0


@dataclass(frozen=True)
class AppendResult:
    """What `append` did: the stream entry id, or None when the event id had been stored before.

    `durability` is the mode the append waited for (`none`: it did not wait); `wait_s`, when it waited, the time
    of the append and its wait together (one round trip).
    """

    entry_id: str | None
    partition: int
    durability: str = "none"
    wait_s: float | None = None

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
        layout: the process's layout check, passed before the first append (None: the caller checked).
        durability: what an append waits for before it returns (default: nothing), or the callable that decides
            it before the first append.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        partitions: int = 1,
        dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S,
        timeout_s: float = 2.0,
        max_stream_length: int = 0,
        layout: LayoutGate | None = None,
        durability: DurabilitySource = NO_WAIT,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.partitions = partitions
        self._redis = redis
        self._dedup_ttl_ms = dedup_ttl_s * 1000
        self._timeout_s = timeout_s
        self._max_stream_length = max_stream_length
        self._append: AsyncScript = scripts.register(redis, "core", "append_event.lua")
        # The projects this process has registered in PROJECTS_KEY (a set never loses members, so once is enough).
        self._registered: set[int] = set()
        self._layout = layout
        self._durability = durability

    def keys_for(self, project_id: int, user_id: str) -> EventKeys:
        """The keys of the partition that holds `user_id`'s events in `project_id`."""
        return EventKeys(project_id, partition_for(user_id, self.partitions))

    async def append(self, event: events_pb2.WebhookEvent, raw: bytes) -> AppendResult:
        """Stores `event` with its raw body in its project's event log unless its `event_id` was stored within the
        dedup window.

        Raises:
            ValueError: the event names no project (`project_id` 0); the caller decides the project first.
            StoreUnavailable: Redis did not answer in time, or the store has another key layout; the caller must
                not acknowledge the notification.
            NotDurable: (a StoreUnavailable) the event was stored, or had been, but is not durable as asked within
                the wait's timeout; the caller must not acknowledge it either.
        """
        if event.project_id <= 0:
            raise ValueError("an event is appended to its project's event log: set its project_id")
        keys = self.keys_for(event.project_id, event.user_id)
        if self._layout is not None:
            await self._layout.before_use(self._timeout_s)
        durability = self._durability
        if not isinstance(durability, Durability):
            durability = await durability()
        if event.project_id not in self._registered:
            await self._register(event.project_id)
        args: list[bytes | str | int] = [
            self._dedup_ttl_ms,
            event.SerializeToString(),
            raw,
            events_pb2.EventType.Name(event.type),
            self._max_stream_length,
            "1" if durability.waits else "0",
        ]
        if durability.waits:
            return await self._append_durably(keys, args, event.event_id, durability)
        # Any error reply (out of memory, a replica that refuses writes): nothing was stored.
        entry = await bounded(
            self._append(keys=[keys.dedup(event.event_id), keys.stream], args=args),
            self._timeout_s,
            refused="the append",
        )
        if entry is None:
            return AppendResult(None, keys.partition)
        return AppendResult(reply_text(entry), keys.partition)

    async def _append_durably(
        self, keys: EventKeys, args: list[bytes | str | int], event_id: str, durability: Durability
    ) -> AppendResult:
        """The script, then the wait on the same connection (`core.durability.on_one_connection`): one round trip.

        EVALSHA is sent as such rather than through the script object, which in a pipeline first asks the server
        whether it knows the script (`SCRIPT EXISTS`, a second round trip on every append); an unknown script is
        loaded and the pair sent again (it wrote nothing).
        """
        started = time.perf_counter()
        script = ("EVALSHA", self._append.sha, 2, keys.dedup(event_id), keys.stream, *args)
        # The wait's own timeout, on top of the append's: the server blocks the connection for up to that long.
        timeout_s = self._timeout_s + durability.timeout_ms / 1000
        for attempt in (1, 2):
            entry, reply = await bounded(
                on_one_connection(self._redis, keys.stream, [script, durability.wait_command]), timeout_s
            )
            if attempt == 1 and isinstance(entry, redis_errors.NoScriptError):
                await bounded(self._redis.script_load(self._append.script), self._timeout_s)
                continue
            if attempt == 1 and isinstance(entry, redis_errors.MovedError) and isinstance(self._redis, RedisCluster):
                # The slot moved: learn its new node (as redis-py does on a MOVED reply) and send the pair there.
                await self._redis.nodes_manager.move_slot(entry)
                continue
            break
        if isinstance(entry, redis_errors.ResponseError):
            code = reply_code(entry)
            what = code if code in TRANSIENT_REPLIES else type(entry).__name__
            raise StoreUnavailable(f"Redis refused the append: {what}") from entry
        if isinstance(entry, Exception):
            raise StoreUnavailable(f"Redis is unavailable: {type(entry).__name__}") from entry
        waited_s = time.perf_counter() - started
        if isinstance(reply, Exception):
            code = reply_code(reply) if isinstance(reply, redis_errors.ResponseError) else ""
            raise NotDurable(
                f"the durability wait failed: {code or type(reply).__name__}",
                mode=durability.mode,
                waited_s=waited_s,
            ) from reply
        shortfall = durability.shortfall(reply)
        if shortfall is not None:
            raise NotDurable(f"not durable: {shortfall}", mode=durability.mode, waited_s=waited_s)
        entry_id = None if entry is None else reply_text(entry)
        return AppendResult(entry_id, keys.partition, durability.mode, waited_s)

    async def _register(self, project_id: int) -> None:
        await bounded(self._redis.sadd(PROJECTS_KEY, str(project_id)), self._timeout_s, refused="the append")
        self._registered.add(project_id)


class MalformedEntry(ValueError):
    """A stream entry that does not hold a serialized WebhookEvent."""


def decode_event(fields: Mapping[bytes, bytes]) -> events_pb2.WebhookEvent:
    """Parses a stream entry's `event` field.

    Raises:
        MalformedEntry: the field is missing or is not a serialized WebhookEvent.
    """
    data = fields.get(b"event")
    if data is None:
        raise MalformedEntry("the entry has no `event` field")
    try:
        return events_pb2.WebhookEvent.FromString(data)
    except DecodeError as exc:
        raise MalformedEntry(f"the `event` field is not a serialized WebhookEvent: {exc}") from exc
