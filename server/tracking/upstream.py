"""One replica follows each order at the provider, for the streams every replica holds on it.

Each tracker with a player token (`server.tracking.tracker`) asks for the order's lease
(`core.keys.UserKeys.order_follow`, a `server.leases.Lease`: SET NX PX with a holder id, renewed by
compare-and-PEXPIRE every third of `TrackingSettings.lease_s`, released by compare-and-DEL):

- **The holder** follows the order at the provider (socket, else polling) and announces every status it learns
  there (`UpstreamAnnouncer`): recorded forward-only in the order's upstream record, then published on the
  project's order-status channel, in the order it learned them, retried while Redis fails. Only the holder hands a
  paid order nobody granted to its reconciliation.
- **The others** open no socket and poll nothing: their trackers hear the holder's statuses through their feed
  (`server.status_channel.OrderStatusFeed`), and read the record when they start following the order or
  subscribe again. They try to take the lease every third of its length (with jitter), so when the holder dies
  its lease expires and one of them follows the order within `lease_s` plus a third of it; its first read at
  the provider (the socket's history, or Get order) fills in whatever the holder did not announce. Statuses only
  move forward (`OrderProgress.offer`), so the streams see no gap and no repeat.
- The holder's tracker ends (its last stream closed, or the order finished): the lease is released, and another
  replica still watching takes it at its next try.

While Redis does not answer, a holder keeps following (a renewal that fails is retried until the lease would have
expired: then it stops, `LeaseLost`); a replica that cannot ask for the lease waits and asks again.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final

import structlog

from core.backoff import Backoff
from core.connections import RedisClient, bounded
from core.errors import StoreUnavailable
from core.keys import UserKeys
from core.lifecycle import cancel_and_wait
from server.leases import RENEWALS_PER_LEASE, Lease, LeaseLost
from server.metrics import ServiceMetrics
from server.status_channel import OrderRef, OrderStatusPublisher, UpstreamStatus
from server.tracking.settings import TrackingSettings

log = structlog.get_logger("server.tracking")

#: `entitlements_order_following{via}`: how this replica follows an order.
PROVIDER: Final = "provider"
CHANNEL: Final = "channel"
# Between two tries of an announcement while Redis fails: 0.1 s doubling up to 5 s, with jitter.
_RETRY: Final = Backoff(base_s=0.1, cap_s=5.0)


class UpstreamAnnouncer:
    """Records and publishes what this replica learns at the provider as an order's lease holder: per order in the
    order learned, each tried again while Redis fails. It outlives the tracker (a terminal status is announced
    after the tracker that learned it stopped).

    Args:
        publisher: the order-status publisher.
        metrics: `order_upstream_announcements{result}`.
        timeout_s: bound on one record-and-publish.
    """

    def __init__(self, publisher: OrderStatusPublisher, metrics: ServiceMetrics, *, timeout_s: float) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._queues: dict[OrderRef, deque[tuple[UpstreamStatus, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def announce(self, status: UpstreamStatus, rank: int) -> None:
        """Queues `status` (of forward-only `rank`) for its order's record and channel."""
        queue = self._queues.get(status.ref)
        if queue is None:
            queue = self._queues[status.ref] = deque()
            task = asyncio.get_running_loop().create_task(self._drain(status.ref, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.append((status, rank))

    @property
    def pending(self) -> int:
        """Statuses not announced yet."""
        return sum(len(queue) for queue in self._queues.values())

    async def _drain(self, ref: OrderRef, queue: deque[tuple[UpstreamStatus, int]]) -> None:
        failures = 0
        try:
            while queue:
                status, rank = queue[0]
                try:
                    await bounded(
                        self._publisher.publish_upstream(status, rank), self._timeout_s, refused="the announcement"
                    )
                except StoreUnavailable as exc:
                    failures += 1
                    delay = _RETRY.delay_s(failures)
                    self._metrics.order_upstream_announcements.labels("retried").inc()
                    log.warning("order_upstream_announcement_failed", error=str(exc), retry_in_s=round(delay, 3))
                    await asyncio.sleep(delay)
                    continue
                queue.popleft()
                failures = 0
                self._metrics.order_upstream_announcements.labels("published").inc()
        finally:
            if self._queues.get(ref) is queue:
                del self._queues[ref]

    async def stop(self, wait_s: float) -> None:
        """Waits at most `wait_s` for what is queued to go out, then drops the rest."""
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=wait_s)
        await cancel_and_wait(*tasks)


class Upstream:
    """What the replica's trackers share to follow each order at the provider from one replica at a time.

    Args:
        redis: the process's Redis client (the leases).
        settings: `lease_s`.
        metrics: `order_following{via}`, `order_lease_takeovers`.
        announcer: where the holder's statuses go.
        timeout_s: bound on one lease call.
    """

    def __init__(
        self,
        redis: RedisClient,
        settings: TrackingSettings,
        metrics: ServiceMetrics,
        announcer: UpstreamAnnouncer,
        *,
        timeout_s: float,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._metrics = metrics
        self.announcer = announcer
        self._timeout_s = timeout_s
        # The tasks in `follow`, until they have returned: a cancelled one still releases its lease as it unwinds.
        self._following: set[asyncio.Task[Any]] = set()

    @property
    def retry_s(self) -> float:
        """The longest wait between two tries of a lease held by another replica."""
        return self._settings.lease_s / RENEWALS_PER_LEASE

    async def follow(
        self,
        ref: OrderRef,
        work: Callable[[], Coroutine[Any, Any, None]],
        done: Callable[[], bool],
        logger: Any,
    ) -> None:
        """Runs `work()` (following the order at the provider) while this replica holds the order's lease; tries
        to take it every `retry_s` (with jitter) while another replica holds it; returns once `work()` returned
        or `done()` (the order finished, or nobody here has a token left).

        Args:
            ref: the order.
            work: follows the order at the provider until it finished or no token is left.
            done: whether following the order is over.
            logger: the tracker's logger (bound to the order).
        """
        project_id, user_id, order_id = ref
        lease = Lease(
            self._redis,
            UserKeys(project_id, user_id).order_follow(order_id),
            lease_s=self._settings.lease_s,
            timeout_s=self._timeout_s,
            name="order",
        )
        via: str | None = None
        held_elsewhere = False
        current = asyncio.current_task()
        if current is not None:
            self._following.add(current)
        try:
            while not done():
                try:
                    taken = await lease.acquire()
                except StoreUnavailable as exc:
                    logger.info("order_lease_unavailable", error=str(exc))
                    taken = False
                if taken:
                    if held_elsewhere:
                        self._metrics.order_lease_takeovers.inc()
                        logger.info("order_lease_taken_over")
                    via = self._count(via, PROVIDER)
                    try:
                        await lease.run(work())
                        return
                    except LeaseLost as exc:
                        logger.warning("order_lease_lost", reason=str(exc))
                        held_elsewhere = True
                else:
                    held_elsewhere = True
                    via = self._count(via, CHANNEL)
                await asyncio.sleep(self.retry_s * random.uniform(0.5, 1.0))
        finally:
            self._count(via, None)
            self._following.discard(current)

    async def stop(self, wait_s: float) -> None:
        """Ends every `follow` (each releases its lease on the way), then waits at most `wait_s` for the
        announcements still queued."""
        await cancel_and_wait(*self._following)
        await self.announcer.stop(wait_s)

    def _count(self, was: str | None, now: str | None) -> str | None:
        if was != now:
            if was is not None:
                self._metrics.order_following.labels(was).dec()
            if now is not None:
                self._metrics.order_following.labels(now).inc()
        return now
