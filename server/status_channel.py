"""The order-status channel: how every replica hears of an order's new status, whichever replica applied it.

The order hash (`UserKeys.order(order_id)`, written atomically with the grants by `server/lua/order_*.lua`) is
the source of truth: `status` ("paid" or "canceled"), `granted` ("1" while the order's items are granted),
`updated_at_ms`, and the events and grants behind them. After each applied order event, and again on every
redelivery of one, the consumer publishes the hash's new state as a small JSON message on the channel
`ORDER_STATUS_CHANNEL` (`ent:order-status`) with `OrderStatusPublisher`:

    {"order_id": "689810880", "user_id": "a1b2c3", "status": "paid", "entitlements_granted": true,
     "observed_at_ms": 1767225600000, "source": "webhook", "withheld": ""}

`withheld` names why a paid order grants nothing by policy ("sandbox": a test payment the project's sandbox policy
ignores): no grant will follow, so a stream following the order need not wait for one.

`PUBLISH`/`SUBSCRIBE` on a standalone Redis, `SPUBLISH`/`SSUBSCRIBE` (sharded pub/sub, served by the node owning
the channel's slot) on a Redis Cluster. Every replica subscribes once (`OrderStatusFeed`) and hands each message
to the trackers of that (player, order) on this replica. Pub/sub delivers at most once: a replica that is
disconnected when a message goes out misses it. So the feed reads the order hash (`read_order_state`) of every
order followed on its replica after every (re)subscribe, and treats messages as wake-ups carrying the same
state; statuses only move forward (paid -> canceled), so applying a message or a read twice, or in either order,
converges. Publication happens after the commit and before the XACK, so a crash in between republishes on
redelivery. A lost connection is set up again with backoff.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from core.backoff import Backoff, Wakeup
from core.connections import RedisClient, reply_text
from core.keys import ORDER_STATUS_CHANNEL, UserKeys
from server.metrics import ServiceMetrics

__all__ = [
    "ORDER_STATUS_CHANNEL",
    "OrderRef",
    "OrderState",
    "OrderStatusFeed",
    "OrderStatusPublisher",
    "read_order_state",
]

log = structlog.get_logger("server.status_channel")

#: (player id, order id)
OrderRef = tuple[str, str]

_READ_TIMEOUT_S = 1.0
_RESYNC_BATCH = 100
# Before subscribing again: 0.1-0.2 s after the first failure, doubling up to 2.5-5 s.
_BACKOFF = Backoff(base_s=0.1, cap_s=5.0)
# Reply types as redis-py reports them: bytes, or str when the client decodes responses.
_SUBSCRIBED = frozenset({b"subscribe", "subscribe", b"ssubscribe", "ssubscribe"})
_MESSAGE = frozenset({b"message", "message", b"smessage", "smessage"})


@dataclass(frozen=True)
class OrderState:
    """One order's status as this service knows it from webhooks.

    Attributes:
        status: "paid" or "canceled" (Xsolla's order statuses, lower case).
        entitlements_granted: True while the order's items are granted to the player (false once canceled).
        observed_at_ms: when the consumer applied the event that set this state (Redis server clock, ms).
        source: always "webhook" here.
        withheld: why the paid order grants nothing by policy ("sandbox"); "" when it grants as usual.
    """

    order_id: str
    user_id: str
    status: str
    entitlements_granted: bool
    observed_at_ms: int
    source: str = "webhook"
    withheld: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> OrderState:
        """Parses a published message.

        Raises:
            ValueError: not a message of this shape.
        """
        raw = json.loads(data)
        try:
            return cls(
                order_id=str(raw["order_id"]),
                user_id=str(raw["user_id"]),
                status=str(raw["status"]),
                entitlements_granted=bool(raw["entitlements_granted"]),
                observed_at_ms=int(raw["observed_at_ms"]),
                source=str(raw.get("source", "webhook")),
                withheld=str(raw.get("withheld") or ""),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an order status message: {exc}") from exc

    @classmethod
    def from_hash(cls, user_id: str, order_id: str, fields: Mapping[str, str]) -> OrderState | None:
        """The state kept in an order hash (decoded to text), or None when the hash holds no status."""
        status = fields.get("status")
        if not status:
            return None
        return cls(
            order_id=order_id,
            user_id=user_id,
            status=status,
            entitlements_granted=fields.get("granted") == "1",
            observed_at_ms=int(fields.get("updated_at_ms") or 0),
            withheld=fields.get("withheld", ""),
        )


async def read_order_state(redis: RedisClient, user_id: str, order_id: str) -> OrderState | None:
    """Reads an order's stored state, or None if no order event named it yet."""
    names = ("status", "granted", "updated_at_ms", "withheld")
    raw = await redis.hmget(UserKeys(user_id).order(order_id), list(names))
    fields = {name: reply_text(value) for name, value in zip(names, raw, strict=True) if value is not None}
    return OrderState.from_hash(user_id, order_id, fields)


class _Channel:
    """`ORDER_STATUS_CHANNEL` on one Redis deployment: plain pub/sub on a standalone server, sharded pub/sub on a
    Cluster (served by the node owning the channel's slot). The one place that choice is made.

    Args:
        redis: a connected client, owned by the caller.
        cluster: whether `redis` is a Redis Cluster client.
    """

    def __init__(self, redis: RedisClient, *, cluster: bool) -> None:
        self._redis = redis
        self._cluster = cluster

    async def publish(self, message: str) -> int:
        """Publishes `message`; returns how many subscribers received it (on Cluster: on the channel's shard)."""
        if self._cluster:
            return int(await self._redis.spublish(ORDER_STATUS_CHANNEL, message))
        return int(await self._redis.publish(ORDER_STATUS_CHANNEL, message))

    def pubsub(self) -> Any:
        """A pub/sub connection of the client's pool, not subscribed yet; the caller closes it (`aclose()`)."""
        return self._redis.pubsub()

    async def subscribe(self, pubsub: Any) -> None:
        """Subscribes `pubsub` to the channel; the confirmation arrives as its next message."""
        if self._cluster:
            await pubsub.ssubscribe(ORDER_STATUS_CHANNEL)
        else:
            await pubsub.subscribe(ORDER_STATUS_CHANNEL)

    async def next_message(self, pubsub: Any) -> dict[str, Any] | None:
        """The next message or subscription confirmation, or None if none came within `_READ_TIMEOUT_S`."""
        if self._cluster:
            message = await pubsub.get_sharded_message(timeout=_READ_TIMEOUT_S)
        else:
            message = await pubsub.get_message(timeout=_READ_TIMEOUT_S)
        return message if isinstance(message, dict) else None


class OrderStatusPublisher:
    """Publishes order states on `ORDER_STATUS_CHANNEL`.

    Args:
        redis: a connected client, owned by the caller.
        cluster: whether `redis` is a Redis Cluster client (sharded pub/sub is used then).
    """

    def __init__(self, redis: RedisClient, *, cluster: bool) -> None:
        self._channel = _Channel(redis, cluster=cluster)
        self.channel = ORDER_STATUS_CHANNEL

    async def publish(self, state: OrderState) -> int:
        """Publishes `state`; returns how many subscribers received it (on Cluster: on the channel's shard)."""
        return await self._channel.publish(state.to_json())


class OrderStatusFeed:
    """The replica's one subscription to the order-status channel: dispatches what it hears, and re-reads the
    followed orders' hashes after every (re)subscribe.

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
        self._channel = _Channel(redis, cluster=cluster)
        self._dispatch = dispatch
        self._followed = followed
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wakeup = Wakeup()
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        """Subscribes in the background, again after every failure; `subscribed` is set while subscribed."""
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def retry_now(self) -> None:
        """Ends the wait before subscribing again at once: Redis is known to be back (the embedded store restarted)."""
        self._wakeup.wake()

    async def stop(self) -> None:
        """Cancels the subscription and any re-read in flight, and waits for them to end (at most a read's
        timeout, `_READ_TIMEOUT_S`, even when redis-py swallows the cancellation)."""
        # redis-py 8.1 can swallow a cancellation that arrives while a subscription is being set up: the task
        # then carries on reading. The flag ends the loop at its next read timeout whatever happened to the
        # cancellation.
        self._stopping = True
        for task in (self._resync_task, self._task):
            if task is not None:
                task.cancel()
        for task in (self._resync_task, self._task):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._resync_task = None

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            pubsub = self._channel.pubsub()
            try:
                await self._channel.subscribe(pubsub)
                while not self._stopping:
                    message = await self._channel.next_message(pubsub)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind in _SUBSCRIBED:
                        # Also after redis-py reconnected and resubscribed by itself: whatever was published
                        # meanwhile is lost, so re-read.
                        failures = 0
                        self.subscribed.set()
                        self._metrics.order_feed_subscribes.inc()
                        self._resync()
                    elif kind in _MESSAGE:
                        self._handle(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any Redis or connection failure: subscribe again
                self.subscribed.clear()
                failures += 1
                delay = _BACKOFF.delay_s(failures)
                self._metrics.order_feed_reconnects.inc()
                log.warning("order_feed_lost", error=repr(exc), failures=failures, retry_in_s=round(delay, 3))
                await self._wakeup.sleep(delay)
            finally:
                await self._close(pubsub)

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
