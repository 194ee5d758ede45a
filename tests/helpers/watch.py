"""WatchEntitlements from a test: a stream opened on the real service (`Watcher`), and changes committed to a player
as the store and the feed's relay leave them (`Feed.commit`), for tests that set the scene behind the service."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc.aio import EOF  # type: ignore[attr-defined]  # grpc-stubs lacks it

from core.clock import now_ms
from core.connections import RedisClient
from core.feed import FeedEntry, FeedKeys, partition_of
from core.keys import UserKeys
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc as pb_grpc
from server.app import Service
from tests.helpers.raw import bearer
from tests.helpers.services import READER_KEY
from tests.helpers.stores import StoreUnderTest

Response = pb.WatchEntitlementsResponse


class Watcher:
    """One WatchEntitlements stream: `send` a request, `next` the next message (None when the stream ended)."""

    def __init__(self, channel: grpc.aio.Channel, key: str = READER_KEY) -> None:
        self._stub = pb_grpc.EntitlementServiceStub(channel)
        # grpc-stubs: the request iterator may be left out, then write()
        self.call: Any = self._stub.WatchEntitlements(metadata=bearer(key))  # type: ignore[call-arg]

    async def send(self, **fields: Any) -> None:
        heartbeat_s = fields.pop("heartbeat_s", None)
        request = pb.WatchEntitlementsRequest(**fields)
        if heartbeat_s is not None:
            request.heartbeat_interval.CopyFrom(Duration(seconds=int(heartbeat_s), nanos=0))
        await self.call.write(request)

    async def next(self, timeout_s: float = 10.0) -> Response | None:
        async with asyncio.timeout(timeout_s):
            message = await self.call.read()
        return None if message is EOF else message

    async def next_of(self, kind: str, timeout_s: float = 10.0) -> Response:
        """The next message of `kind` ("change", "snapshot", "heartbeat"), skipping heartbeats otherwise."""
        while True:
            message = await self.next(timeout_s)
            assert message is not None, "the stream ended"
            event = message.WhichOneof("event")
            if event == kind:
                return message
            assert event == "heartbeat", message

    async def changes(self, count: int, timeout_s: float = 10.0) -> list[Response]:
        return [await self.next_of("change", timeout_s) for _ in range(count)]

    async def ended(self, timeout_s: float = 10.0) -> tuple[grpc.StatusCode, str]:
        """Reads until the stream ends; its status."""
        try:
            async with asyncio.timeout(timeout_s):
                while await self.call.read() is not EOF:
                    pass
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return await self.call.code(), await self.call.details()

    def cancel(self) -> None:
        self.call.cancel()


@contextlib.asynccontextmanager
async def watch_channel(service: Service, *, small_window: bool = False) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to `service`'s gRPC port, closed on exit; with `small_window`, one whose streams take at most about
    64 KiB the caller has not read (no window growth), as a slow reader's would."""
    assert service.endpoints is not None
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65_536)] if small_window else []
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.endpoints.grpc_port}", options=options)
    try:
        yield channel
    finally:
        await channel.close(None)


def record_json(quantity: int, *, at_ms: int, kind: int = 1) -> str:
    """An entitlement record as the items hash stores it."""
    return json.dumps({"k": kind, "q": quantity, "g": at_ms, "u": at_ms}, separators=(",", ":"))


# The record and the version in one atomic step, as a write script leaves them.
_COMMIT = """
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return redis.call('INCR', KEYS[2])
"""


class Feed:
    """Commits changes to players as the store and the feed's relay do: the record and the player's version in one
    step, then the feed entry."""

    def __init__(self, redis: RedisClient, project_id: int) -> None:
        self.redis = redis
        self.project_id = project_id

    async def commit(self, user_id: str, sku: str, quantity: int | None, operation: str = "grant") -> FeedEntry:
        """Sets `sku` of `user_id` to `quantity` (None: removed), one more version, and appends the change."""
        keys = UserKeys(self.project_id, user_id)
        at = now_ms()
        record = "" if quantity is None else record_json(quantity, at_ms=at)
        version = await self.redis.eval(_COMMIT, 2, keys.items, keys.version, sku, record)
        entry = FeedEntry(user_id, sku, int(version), operation, at, record)
        fields: dict[Any, Any] = dict(entry.to_fields())
        await self.redis.xadd(FeedKeys(self.project_id, partition_of(user_id)).stream, fields)
        return entry

    async def grants(self, user_id: str, count: int, sku: str = "gold") -> list[FeedEntry]:
        return [await self.commit(user_id, sku, index + 1) for index in range(count)]


def versions(messages: Sequence[Response], user_id: str) -> list[int]:
    """The versions of `user_id`'s changes among `messages`."""
    return [m.change.version for m in messages if m.WhichOneof("event") == "change" and m.change.user_id == user_id]


#: Redis's bound for the watch tests' services: 2 s as deployed, not the other tests' 1 s. A project's first stream
#: on a cluster starts its tail on a fresh cluster client (the topology read, a connection per partition, the feed
#: scripts loaded), which a loaded 2-core machine held past 1 s: the stream then ends UNAVAILABLE, as it should, but
#: that is not what these tests are about.
WATCH_REDIS_TIMEOUT_S = 2.0


def watch_service_settings(store: StoreUnderTest) -> dict[str, Any]:
    """The service settings of a watch test on `store`."""
    return {**store.settings, "redis_timeout_s": WATCH_REDIS_TIMEOUT_S}
