"""The webhook source of order tracking: one Redis subscription per service process.

Whichever replica's consumer applies an order event publishes the order's new state on `ent:order-status`
(`server.orders`); every replica subscribes once (SUBSCRIBE, or SSUBSCRIBE on a Redis Cluster, where the channel
is sharded) and hands each message to the trackers of that (player, order) on this replica. Pub/sub delivers at
most once, so messages are only wake-ups: after every (re)subscribe the feed re-reads the order hash of every
order followed here, which is the truth. A lost connection is set up again with backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from core.backoff import Backoff
from core.connections import RedisClient
from core.keys import ORDER_STATUS_CHANNEL
from server.metrics import ServiceMetrics
from server.orders import OrderState, read_order_state

log = structlog.get_logger("server.tracking.webhooks")

#: (player id, order id)
OrderRef = tuple[str, str]

_READ_TIMEOUT_S = 1.0
_RESYNC_BATCH = 100
# Before subscribing again: 0.1-0.2 s after the first failure, doubling up to 2.5-5 s.
_BACKOFF = Backoff(base_s=0.1, cap_s=5.0)


class WebhookFeed:
    """Subscribes to the order-status channel and dispatches what it hears.

    Args:
        redis: the process's client (the subscription holds one connection of its pool).
        cluster: whether `redis` is a Redis Cluster client (sharded pub/sub then).
        dispatch: called with each state heard or re-read; returns how many trackers it reached; must not block.
        followed: the orders followed on this replica now, re-read after every (re)subscribe.
        metrics: message and reconnect counters.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        cluster: bool,
        dispatch: Callable[[OrderState], int],
        followed: Callable[[], Iterable[OrderRef]],
        metrics: ServiceMetrics,
    ) -> None:
        self._redis = redis
        self._cluster = cluster
        self._dispatch = dispatch
        self._followed = followed
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in (self._resync_task, self._task):
            if task is not None:
                task.cancel()
        for task in (self._resync_task, self._task):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._resync_task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            pubsub: Any = self._redis.pubsub()
            try:
                if self._cluster:
                    await pubsub.ssubscribe(ORDER_STATUS_CHANNEL)
                else:
                    await pubsub.subscribe(ORDER_STATUS_CHANNEL)
                while True:
                    message = await self._next_message(pubsub)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind in (b"subscribe", "subscribe", b"ssubscribe", "ssubscribe"):
                        # Also after redis-py reconnected and resubscribed by itself: whatever was published
                        # meanwhile is lost, so re-read.
                        failures = 0
                        self.subscribed.set()
                        self._metrics.order_feed_subscribes.inc()
                        self._resync()
                    elif kind in (b"message", "message", b"smessage", "smessage"):
                        self._handle(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any Redis or connection failure: subscribe again
                self.subscribed.clear()
                failures += 1
                delay = _BACKOFF.delay_s(failures)
                self._metrics.order_feed_reconnects.inc()
                log.warning("order_feed_lost", error=repr(exc), failures=failures, retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)
            finally:
                await self._close(pubsub)

    async def _next_message(self, pubsub: Any) -> dict[str, Any] | None:
        if self._cluster:
            message = await pubsub.get_sharded_message(timeout=_READ_TIMEOUT_S)
        else:
            message = await pubsub.get_message(timeout=_READ_TIMEOUT_S)
        return message if isinstance(message, dict) else None

    @staticmethod
    async def _close(pubsub: Any) -> None:
        try:
            await pubsub.aclose()
        except Exception as exc:  # the connection is being dropped anyway
            log.debug("order_feed_close_failed", error=repr(exc))

    def _handle(self, data: object) -> None:
        try:
            if not isinstance(data, (str, bytes)):
                raise ValueError("not text")
            state = OrderState.from_json(data)
        except ValueError as exc:
            self._metrics.order_feed_messages.labels("invalid").inc()
            log.warning("order_feed_message_invalid", error=str(exc))
            return
        reached = self._dispatch(state)
        self._metrics.order_feed_messages.labels("dispatched" if reached else "unfollowed").inc()

    def _resync(self) -> None:
        # In a task of its own, so messages keep flowing while thousands of hashes are read; both paths only
        # move orders forward, so their order does not matter.
        if self._resync_task is not None:
            self._resync_task.cancel()
        self._resync_task = asyncio.get_running_loop().create_task(self._reread(list(self._followed())))

    async def _reread(self, orders: list[OrderRef]) -> None:
        for start in range(0, len(orders), _RESYNC_BATCH):
            batch = orders[start : start + _RESYNC_BATCH]
            states = await asyncio.gather(
                *(read_order_state(self._redis, user_id, order_id) for user_id, order_id in batch),
                return_exceptions=True,
            )
            for state in states:
                if isinstance(state, OrderState):
                    self._dispatch(state)
                elif isinstance(state, BaseException):
                    log.warning("order_feed_reread_failed", error=repr(state))
