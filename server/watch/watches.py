"""The replica's WatchEntitlements streams (`Watches`): admission, one shared tail per project, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog

from core import connections
from core.connections import RedisClient
from core.errors import StoreUnavailable
from core.feed import FEED_PARTITIONS
from entitlements.v1 import entitlements_pb2 as pb
from server.errors import CapacityExceeded, FellBehind, InvalidArgument, OutOfRange, ServiceStopping
from server.metrics import WATCH_END_REASONS, ServiceMetrics, WatchMetrics
from server.watch.history import FeedHistory
from server.watch.requests import opening
from server.watch.settings import WatchSettings
from server.watch.stream import EntitlementMessage, WatchStream
from server.watch.tail import BLOCK_MS, FeedTail, Subscriber

if TYPE_CHECKING:  # server.config imports server.watch for its settings
    from server.config import Settings

log = structlog.get_logger("server.watch")

_STOPPING = "the replica is shutting down: open the stream again with the last cursor received"

#: The reason (`WATCH_END_REASONS`) a stream ended with each error; any other error is "error".
_END_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (FellBehind, "fell_behind"),
    (OutOfRange, "out_of_range"),
    (InvalidArgument, "invalid_argument"),
    (StoreUnavailable, "store_unavailable"),
    (ServiceStopping, "stopping"),
)


def end_reason(error: Exception) -> str:
    """Why a stream that raised `error` ended, as `entitlements_watch_streams_ended_total` counts it."""
    for kind, reason in _END_REASONS:
        if isinstance(error, kind):
            return reason
    return "error"


class Watches:
    """Serves WatchEntitlements streams on this replica.

    Args:
        redis: the process's client (cursor checks, catch-up reads, snapshots, the feed id).
        tail_redis: a client for the tails' blocking reads, whose socket timeout exceeds `server.watch.tail.BLOCK_MS`
            and whose pool has a connection per tail reader (one per project watched; on a Cluster, one per
            partition of each).
        settings: the limits.
        metrics: the watch streams' metrics.
        cluster: the store is a Redis Cluster.
        timeout_s: the Redis timeout.
        entitlement: makes an Entitlement message of a stored record (`server.service.entitlement_message`).
    """

    def __init__(
        self,
        redis: RedisClient,
        tail_redis: RedisClient,
        settings: WatchSettings,
        metrics: WatchMetrics,
        *,
        cluster: bool,
        timeout_s: float,
        entitlement: EntitlementMessage,
    ) -> None:
        self.history = FeedHistory(redis, timeout_s=timeout_s)
        self.settings = settings
        self.metrics = metrics
        self._ended = {reason: metrics.ended.labels(reason) for reason in WATCH_END_REASONS}
        self._tail_redis = tail_redis
        self._cluster = cluster
        self._timeout_s = timeout_s
        self._entitlement = entitlement
        self._tails: dict[int, FeedTail] = {}
        # Readers of stopped tails still ending (their read in flight): awaited before the client closes.
        self._ending: set[asyncio.Task[None]] = set()
        self._open = 0
        self._closing = False

    @classmethod
    def open(
        cls,
        redis_url: str,
        redis: RedisClient,
        settings: Settings,
        metrics: ServiceMetrics,
        *,
        entitlement: EntitlementMessage,
    ) -> Watches:
        """The service's watches (counted in `metrics.watch`), with their own client for the tails' blocking reads
        (connections open lazily): a connection per project watched, or per partition of each on a Cluster, for the
        projects served and as many more."""
        projects = max(1, len(settings.projects.ids)) * 2
        tail_redis = connections.connect(
            redis_url,
            cluster=settings.redis_cluster,
            timeout_s=settings.redis_timeout_s + BLOCK_MS / 1000,
            max_connections=FEED_PARTITIONS * projects + 4,
        )
        return cls(
            redis,
            tail_redis,
            settings.watch,
            metrics.watch,
            cluster=settings.redis_cluster,
            timeout_s=settings.redis_timeout_s,
            entitlement=entitlement,
        )

    @property
    def open_streams(self) -> int:
        return self._open

    async def serve(
        self, project_id: int, first: pb.WatchEntitlementsRequest, later: AsyncIterator[pb.WatchEntitlementsRequest]
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        """One stream's messages, for a caller authorized on `project_id`. When it ends it is counted by reason
        (`end_reason`), unless it was refused for capacity (counted apart).

        Raises:
            InvalidArgument, OutOfRange: the first message (or a later one) is refused.
            CapacityExceeded: the replica holds `max_streams` streams.
            StoreUnavailable: Redis did not answer, or was lost while the stream was open.
            ServiceStopping: the replica is shutting down.
            FellBehind: the caller did not read fast enough.
        """
        reason: str | None = "caller"  # unless an error ends it: its caller closed or cancelled it
        try:
            opened = opening(first, project_id)
            if self._closing:
                raise ServiceStopping(_STOPPING)
            if self._open >= self.settings.max_streams:
                self.metrics.refused.inc()
                reason = None  # counted as refused, not as ended
                raise CapacityExceeded(
                    f"this replica holds its maximum of {self.settings.max_streams:,} watch streams "
                    "(ENTITLEMENTS_WATCH_MAX_STREAMS): retry later or on another replica"
                )
            self._open += 1
            self.metrics.streams.inc()
            try:
                if opened.cursor is not None:
                    await self.history.check_cursor(opened.cursor)
                stream = WatchStream(self, project_id, opened, later, self._entitlement)
                async with contextlib.aclosing(stream.run()) as messages:  # type: ignore[type-var]
                    async for message in messages:
                        yield message
            finally:
                self._open -= 1
                self.metrics.streams.dec()
        except Exception as exc:
            if reason is not None:
                reason = end_reason(exc)
            raise
        finally:
            if reason is not None:
                self._ended[reason].inc()

    async def attach(self, project_id: int, subscriber: Subscriber) -> FeedTail:
        """Attaches `subscriber` to the project's tail, started first when the project has none on this replica.

        Raises:
            StoreUnavailable: the tail could not read where the feed ends.
            ServiceStopping: the replica is shutting down.
        """
        if self._closing:
            raise ServiceStopping(_STOPPING)
        tail = self._tails.get(project_id)
        if tail is None:
            tail = FeedTail(
                self._tail_redis,
                self.history,
                project_id,
                cluster=self._cluster,
                metrics=self.metrics,
                timeout_s=self._timeout_s,
                on_stop=self._forget,
            )
            self._tails[project_id] = tail
            await tail.start()
        else:
            await asyncio.shield(tail.ready)
        tail.attach(subscriber)
        return tail

    def _forget(self, tail: FeedTail) -> None:
        if self._tails.get(tail.project_id) is tail:
            del self._tails[tail.project_id]
        for task in tail.tasks:
            if not task.done():
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)

    def close_streams(self) -> None:
        """Ends every open stream UNAVAILABLE (its caller reopens it, on another replica, with its cursor) and
        refuses new ones: at shutdown, before the gRPC server's grace period."""
        self._closing = True
        for tail in list(self._tails.values()):
            tail.fail_all(ServiceStopping(_STOPPING))

    async def stop(self) -> None:
        """Closes the streams, waits for the tails' readers to end, and closes the tails' client."""
        self.close_streams()
        if self._ending:
            # A read in flight ends within its block and the Redis timeout; past that it is cancelled.
            _, late = await asyncio.wait(set(self._ending), timeout=BLOCK_MS / 1000 + self._timeout_s + 1)
            for task in late:
                task.cancel()
        await self._tail_redis.aclose()
