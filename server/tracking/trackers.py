"""The replica's order trackers: at most one per order, shared by every stream watching it, within a cap; and the
streams each API key holds open, within a cap of their own, so that one caller cannot take every tracker.

`OrderTracking` owns what the trackers share: the webhook feed (one Redis subscription, to the channels of the
projects it follows orders of), the order leases and the announcer of what this replica learns as a lease holder
(`server.tracking.upstream`: one replica follows each order at the provider), and the provider's order sources
(`core.order_sources`: its sockets, one per player, and its lookup, one HTTP session), which the composition root
chooses. The composition root starts and stops it; GetOrderStatus calls `watch()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import structlog

from core.connections import RedisClient
from core.order_sources import OrderSources
from server.errors import CapacityExceeded, ServiceStopping
from server.metrics import ServiceMetrics
from server.reconcile.tracked import TrackerReconciler
from server.status_channel import ChannelMessage, OrderRef, OrderState, OrderStatusFeed, OrderStatusPublisher
from server.tracking.settings import TrackingSettings
from server.tracking.tracker import OrderTracker, TrackerKey
from server.tracking.upstream import Upstream, UpstreamAnnouncer
from server.tracking.watcher import Watcher
from server.validation import OrderWatch

log = structlog.get_logger("server.tracking")


class OrderTracking:
    """Every order followed on this replica.

    Args:
        redis: the process's Redis client (stored states, the webhook feed).
        settings: tracking settings.
        metrics: the service's metrics.
        cluster: whether `redis` is a Redis Cluster client.
        redis_timeout_s: bound on one stored-state read.
        sources: the provider's order lookup and sockets; `stop()` closes them.
        reconciler: the replica's reconciliation of orders the provider reports paid that nobody granted (it
            outlives the trackers; the composition root stops it); None when turned off.
    """

    def __init__(
        self,
        redis: RedisClient,
        settings: TrackingSettings,
        metrics: ServiceMetrics,
        *,
        cluster: bool,
        redis_timeout_s: float,
        sources: OrderSources,
        reconciler: TrackerReconciler | None = None,
    ) -> None:
        self.settings = settings
        self._redis = redis
        self._metrics = metrics
        self._redis_timeout_s = redis_timeout_s
        self.sources = sources
        self.reconciler = reconciler
        # (project, player, order) -> its tracker; the webhook feed's states name the same triple.
        self._trackers: dict[TrackerKey, OrderTracker] = {}
        # API key name -> streams it holds open on this replica (a key is absent at 0).
        self._streams_by_key: dict[str, int] = {}
        self._stopping = False
        self.feed = OrderStatusFeed(
            redis,
            cluster=cluster,
            dispatch=self._dispatch,
            followed=self._followed,
            metrics=metrics,
            timeout_s=redis_timeout_s,
        )
        publisher = OrderStatusPublisher(redis, cluster=cluster, timeout_s=redis_timeout_s)
        announcer = UpstreamAnnouncer(publisher, metrics, timeout_s=redis_timeout_s)
        self.upstream = Upstream(redis, settings, metrics, announcer, timeout_s=redis_timeout_s)

    def __len__(self) -> int:
        """How many orders are followed now."""
        return len(self._trackers)

    def trackers(self) -> Iterator[OrderTracker]:
        return iter(list(self._trackers.values()))

    def start(self) -> None:
        """Subscribes to the webhook feed (in the background; it re-reads what it missed once subscribed)."""
        self.feed.start()

    def streams_of(self, caller: str) -> int:
        """How many streams the API key named `caller` holds open on this replica now."""
        return self._streams_by_key.get(caller, 0)

    def watch(self, request: OrderWatch, caller: str, *, project_id: int) -> Watcher:
        """Starts watching an order of `project_id` (the request's project, resolved by the servicer) for the API
        key named `caller`: joins the order's tracker, or starts one. The stream counts against the key's cap
        until its watcher is closed.

        Raises:
            CapacityExceeded: the key holds its maximum of streams open already, or a new tracker is needed and
                the replica follows its maximum of orders already.
            ServiceStopping: the replica is shutting down.
        """
        if self._stopping:
            raise ServiceStopping("the service is shutting down; open the stream again")
        held = self._streams_by_key.get(caller, 0)
        limit = self.settings.stream_limit_per_key
        if held >= limit:
            self._metrics.order_streams_refused.labels(caller).inc()
            raise CapacityExceeded(
                f"API key '{caller}' holds its maximum of {limit} GetOrderStatus streams open on this replica; "
                "close one, or retry later"
            )
        key: TrackerKey = (project_id, request.user_id, request.order_id)
        tracker = self._trackers.get(key)
        if tracker is None:
            if len(self._trackers) >= self.settings.max_trackers:
                self._metrics.order_trackers_refused.inc()
                raise CapacityExceeded(
                    f"this replica follows its maximum of {self.settings.max_trackers} orders; retry later or "
                    "on another replica"
                )
            tracker = OrderTracker(
                key,
                redis=self._redis,
                settings=self.settings,
                sources=self.sources,
                metrics=self._metrics,
                on_stopped=self._forget,
                redis_timeout_s=self._redis_timeout_s,
                upstream=self.upstream,
                reconciler=self.reconciler,
            )
            self._trackers[key] = tracker
            # Subscribes to the project's channel if no other order of it is followed here; the tracker reads
            # the stored state, and the feed re-reads it once subscribed: no publication falls in between.
            self.feed.follow(project_id)
            self._metrics.order_trackers.inc()
            tracker.start()
        watcher = tracker.join(request.token)
        self._streams_by_key[caller] = held + 1
        self._metrics.order_streams.labels(caller).inc()
        watcher.release_with(lambda: self._release_stream(caller))
        return watcher

    def _release_stream(self, caller: str) -> None:
        held = self._streams_by_key.get(caller, 0) - 1
        if held > 0:
            self._streams_by_key[caller] = held
        else:
            self._streams_by_key.pop(caller, None)
        self._metrics.order_streams.labels(caller).dec()

    def _forget(self, tracker: OrderTracker) -> None:
        if self._trackers.get(tracker.key) is tracker:
            del self._trackers[tracker.key]
            self.feed.unfollow(tracker.project_id)
            self._metrics.order_trackers.dec()

    def _dispatch(self, message: ChannelMessage) -> int:
        tracker = self._trackers.get(message.ref)
        if tracker is None:
            return 0
        if isinstance(message, OrderState):
            tracker.webhook(message)
        else:
            tracker.upstream(message)
        return 1

    def _followed(self, project_id: int) -> list[OrderRef]:
        return [key for key in self._trackers if key[0] == project_id]

    def close_streams(self) -> None:
        """Ends every stream with UNAVAILABLE and refuses new ones: the replica is stopping."""
        self._stopping = True
        for tracker in list(self._trackers.values()):
            tracker.shut_down()

    async def stop(self) -> None:
        """Ends every stream, then closes the feed and the provider's sockets and lookup."""
        running = [task for tracker in self._trackers.values() if (task := tracker.task) is not None]
        self.close_streams()
        # Cancelled by close_streams; they release their sockets and leases as they unwind.
        await asyncio.gather(*running, return_exceptions=True)
        await self.upstream.stop(wait_s=self._redis_timeout_s)
        await self.feed.stop()
        await self.sources.close()
