"""The order-status channels: how every replica hears of an order's new status, whichever replica applied it.

The order hash (`UserKeys(project, user).order(order_id)`, written atomically with the grants by
`server/lua/order_*.lua`) is the source of truth: `status` ("paid" or "canceled"), `granted` ("1" while the
order's items are granted), `updated_at_ms`, and the events and grants behind them. After each applied order
event, and again on every redelivery of one, the consumer publishes the hash's new state as a small JSON message
on its project's channel, `order_status_channel(project)` (`ent:{p:<project>}:order-status`), with
`OrderStatusPublisher`:

    {"project_id": 308077, "order_id": "689810880", "user_id": "a1b2c3", "status": "paid",
     "entitlements_granted": true, "observed_at_ms": 1767225600000, "source": "webhook", "withheld": ""}

`withheld` names why a paid order grants nothing by policy ("sandbox": a test payment the project's sandbox policy
ignores): no grant will follow, so a stream following the order need not wait for one.

`PUBLISH`/`SUBSCRIBE` on a standalone Redis, `SPUBLISH`/`SSUBSCRIBE` (sharded pub/sub, served by the node owning
the channel's slot) on a Redis Cluster. Each replica holds one subscription (`OrderStatusFeed`) to the channels of
the projects it follows orders of, and only while it does: a project's channel is subscribed when the replica
starts following its first order and unsubscribed when it stops following its last. Each message goes to the
trackers of that (project, player, order) on this replica; a message that names another project than its channel
is dropped. Pub/sub delivers at most once: a replica that is disconnected (or not yet subscribed) when a message
goes out misses it. So the feed reads the order hash (`read_order_state`) of every order of a project followed on
its replica after every (re)subscribe to that project's channel, and treats messages as wake-ups carrying the
same state; statuses only move forward (paid -> canceled), so applying a message or a read twice, or in either
order, converges. Publication happens after the commit and before the XACK, so a crash in between republishes on
redelivery. A lost connection is set up again with backoff.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from core.backoff import Backoff, Wakeup
from core.connections import RedisClient, reply_text
from core.keys import UserKeys, order_status_channel
from server.metrics import ServiceMetrics

__all__ = [
    "OrderRef",
    "OrderState",
    "OrderStatusFeed",
    "OrderStatusPublisher",
    "read_order_state",
]

log = structlog.get_logger("server.status_channel")

#: (project id, player id, order id)
OrderRef = tuple[int, str, str]

# How long one read of the subscription waits for a message: also how long a change of the projects followed
# waits before it is subscribed (the re-read after the subscription covers what was published meanwhile).
_READ_TIMEOUT_S = 0.2
_RESYNC_BATCH = 100
# Before subscribing again: 0.1-0.2 s after the first failure, doubling up to 2.5-5 s.
_BACKOFF = Backoff(base_s=0.1, cap_s=5.0)
# Reply types as redis-py reports them: bytes, or str when the client decodes responses.
_SUBSCRIBED = frozenset({b"subscribe", "subscribe", b"ssubscribe", "ssubscribe"})
_UNSUBSCRIBED = frozenset({b"unsubscribe", "unsubscribe", b"sunsubscribe", "sunsubscribe"})
_MESSAGE = frozenset({b"message", "message", b"smessage", "smessage"})
_CHANNEL_PROJECT = re.compile(r"\{p:(\d+)\}")


#: `OrderState.source`: a webhook applied the order event, or reconciliation did (`server.reconcile`).
WEBHOOK_SOURCE = "webhook"
RECONCILIATION_SOURCE = "reconciliation"
# The order hash's `granted_by` values of reconciled orders (`server.fulfillment.ORIGIN_NAMES`).
_RECONCILERS = frozenset({"tracker", "sweeper"})


@dataclass(frozen=True)
class OrderState:
    """One order's status as this service knows it from webhooks.

    Attributes:
        project_id: the provider's project the order belongs to.
        status: "paid" or "canceled" (Xsolla's order statuses, lower case).
        entitlements_granted: True while the order's items are granted to the player (false once canceled).
        observed_at_ms: when the consumer applied the event that set this state (Redis server clock, ms).
        source: `WEBHOOK_SOURCE` when a webhook set it, `RECONCILIATION_SOURCE` when reconciliation applied the
            order from the provider's own record (`server.reconcile`); read back from the order hash's
            `granted_by` for a paid order.
        withheld: why the paid order grants nothing by policy ("sandbox"); "" when it grants as usual.
    """

    project_id: int
    order_id: str
    user_id: str
    status: str
    entitlements_granted: bool
    observed_at_ms: int
    source: str = WEBHOOK_SOURCE
    withheld: str = ""

    @property
    def ref(self) -> OrderRef:
        return (self.project_id, self.user_id, self.order_id)

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
                project_id=int(raw["project_id"]),
                order_id=str(raw["order_id"]),
                user_id=str(raw["user_id"]),
                status=str(raw["status"]),
                entitlements_granted=bool(raw["entitlements_granted"]),
                observed_at_ms=int(raw["observed_at_ms"]),
                source=str(raw.get("source", WEBHOOK_SOURCE)),
                withheld=str(raw.get("withheld") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an order status message: {exc}") from exc

    @classmethod
    def from_hash(cls, ref: OrderRef, fields: Mapping[str, str]) -> OrderState | None:
        """The state kept in an order hash (decoded to text), or None when the hash holds no status."""
        status = fields.get("status")
        if not status:
            return None
        project_id, user_id, order_id = ref
        return cls(
            project_id=project_id,
            order_id=order_id,
            user_id=user_id,
            status=status,
            entitlements_granted=fields.get("granted") == "1",
            observed_at_ms=int(fields.get("updated_at_ms") or 0),
            source=RECONCILIATION_SOURCE if fields.get("granted_by") in _RECONCILERS else WEBHOOK_SOURCE,
            withheld=fields.get("withheld", ""),
        )


async def read_order_state(redis: RedisClient, ref: OrderRef) -> OrderState | None:
    """Reads the stored state of the order `ref` (project, player, order), or None if no order event named it yet."""
    project_id, user_id, order_id = ref
    names = ("status", "granted", "updated_at_ms", "withheld", "granted_by")
    raw = await redis.hmget(UserKeys(project_id, user_id).order(order_id), list(names))
    fields = {name: reply_text(value) for name, value in zip(names, raw, strict=True) if value is not None}
    return OrderState.from_hash(ref, fields)


class _Channel:
    """The order-status channels on one Redis deployment: plain pub/sub on a standalone server, sharded pub/sub on a
    Cluster (each channel served by the node owning its slot). The one place that choice is made.

    Args:
        redis: a connected client, owned by the caller.
        cluster: whether `redis` is a Redis Cluster client.
    """

    def __init__(self, redis: RedisClient, *, cluster: bool) -> None:
        self._redis = redis
        self._cluster = cluster

    async def publish(self, project_id: int, message: str) -> int:
        """Publishes `message` on the project's channel; returns how many subscribers received it (on Cluster: on
        the channel's shard)."""
        channel = order_status_channel(project_id)
        if self._cluster:
            return int(await self._redis.spublish(channel, message))
        return int(await self._redis.publish(channel, message))

    def pubsub(self) -> Any:
        """A pub/sub connection of the client's pool, not subscribed yet; the caller closes it (`aclose()`)."""
        return self._redis.pubsub()

    async def subscribe(self, pubsub: Any, channels: Iterable[str]) -> None:
        """Subscribes `pubsub` to `channels`; each confirmation arrives as a message."""
        if self._cluster:
            await pubsub.ssubscribe(*channels)
        else:
            await pubsub.subscribe(*channels)

    async def unsubscribe(self, pubsub: Any, channels: Iterable[str]) -> None:
        """Ends `pubsub`'s subscription to `channels`."""
        if self._cluster:
            await pubsub.sunsubscribe(*channels)
        else:
            await pubsub.unsubscribe(*channels)

    async def next_message(self, pubsub: Any) -> dict[str, Any] | None:
        """The next message or subscription confirmation, or None if none came within `_READ_TIMEOUT_S`."""
        if self._cluster:
            message = await pubsub.get_sharded_message(timeout=_READ_TIMEOUT_S)
        else:
            message = await pubsub.get_message(timeout=_READ_TIMEOUT_S)
        return message if isinstance(message, dict) else None


class OrderStatusPublisher:
    """Publishes order states on their project's channel.

    Args:
        redis: a connected client, owned by the caller.
        cluster: whether `redis` is a Redis Cluster client (sharded pub/sub is used then).
    """

    def __init__(self, redis: RedisClient, *, cluster: bool) -> None:
        self._channel = _Channel(redis, cluster=cluster)

    async def publish(self, state: OrderState) -> int:
        """Publishes `state` on `state.project_id`'s channel; returns how many subscribers received it (on Cluster:
        on the channel's shard)."""
        return await self._channel.publish(state.project_id, state.to_json())


class OrderStatusFeed:
    """The replica's one subscription to the order-status channels of the projects it follows orders of:
    dispatches what it hears, and re-reads a project's followed orders after every (re)subscribe to its channel.

    `follow(project)` and `unfollow(project)` count the orders followed per project; the channel is subscribed
    while the count is above zero. With no project followed the feed holds no connection.

    Args:
        redis: the process's client (the subscription holds one connection of its pool).
        cluster: whether `redis` is a Redis Cluster client (sharded pub/sub then).
        dispatch: called with each state heard or re-read; returns how many trackers it reached; must not block.
        followed: the orders of a project followed on this replica now, re-read after every (re)subscribe.
        metrics: message and reconnect counters.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        cluster: bool,
        dispatch: Callable[[OrderState], int],
        followed: Callable[[int], Iterable[OrderRef]],
        metrics: ServiceMetrics,
    ) -> None:
        self._redis = redis
        self._channel = _Channel(redis, cluster=cluster)
        self._dispatch = dispatch
        self._followed = followed
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._resync_tasks: dict[int, asyncio.Task[None]] = {}
        self._stopping = False
        self._wakeup = Wakeup()
        # project -> orders followed; the channels of these projects are wanted.
        self._wanted: dict[int, int] = {}
        self._changed = asyncio.Event()
        # The channels of the current connection: asked for, and confirmed.
        self._requested: set[int] = set()
        self._confirmed: set[int] = set()
        #: Set while every wanted channel is subscribed (at once when none is).
        self.subscribed = asyncio.Event()
        self.subscribed.set()

    def follow(self, project_id: int) -> None:
        """One more order of `project_id` is followed: its channel is subscribed (at once if it is the first)."""
        count = self._wanted.get(project_id, 0)
        self._wanted[project_id] = count + 1
        if count == 0:
            self._note_change()

    def unfollow(self, project_id: int) -> None:
        """One order of `project_id` is no longer followed; the channel is left after the last one."""
        count = self._wanted.get(project_id, 0) - 1
        if count > 0:
            self._wanted[project_id] = count
            return
        self._wanted.pop(project_id, None)
        self._note_change()

    @property
    def projects(self) -> frozenset[int]:
        """The projects whose channel is subscribed and confirmed on the current connection."""
        return frozenset(self._confirmed)

    def _note_change(self) -> None:
        if set(self._wanted) != self._confirmed:
            self.subscribed.clear()
        else:
            self.subscribed.set()
        self._changed.set()

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
        self._changed.set()
        tasks = [*self._resync_tasks.values(), self._task]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        self._task = None
        self._resync_tasks.clear()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            if not self._wanted:
                # Nothing followed: no connection held until an order is.
                self._changed.clear()
                self.subscribed.set()
                await self._changed.wait()
                continue
            pubsub = self._channel.pubsub()
            self._requested, self._confirmed = set(), set()
            try:
                while not self._stopping:
                    if not await self._sync(pubsub):
                        break  # nothing followed any more: close the connection
                    message = await self._channel.next_message(pubsub)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind in _SUBSCRIBED:
                        # Also after redis-py reconnected and resubscribed by itself: whatever was published
                        # meanwhile is lost, so re-read.
                        project_id = self._project_of(message.get("channel"))
                        if project_id is None:
                            continue
                        failures = 0
                        self._confirmed.add(project_id)
                        if set(self._wanted) <= self._confirmed:
                            self.subscribed.set()
                        self._metrics.order_feed_subscribes.inc()
                        self._resync(project_id)
                    elif kind in _UNSUBSCRIBED:
                        project_id = self._project_of(message.get("channel"))
                        self._confirmed.discard(project_id or 0)
                    elif kind in _MESSAGE:
                        self._handle(message.get("channel"), message.get("data"))
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
                self._requested, self._confirmed = set(), set()
                await self._close(pubsub)

    async def _sync(self, pubsub: Any) -> bool:
        """Subscribes to the channels newly wanted and leaves those no longer wanted. False when none is wanted."""
        self._changed.clear()
        wanted = set(self._wanted)
        if not wanted:
            return False
        new = wanted - self._requested
        gone = self._requested - wanted
        if new:
            await self._channel.subscribe(pubsub, [order_status_channel(p) for p in sorted(new)])
            self._requested |= new
        if gone:
            await self._channel.unsubscribe(pubsub, [order_status_channel(p) for p in sorted(gone)])
            self._requested -= gone
            self._confirmed -= gone
            for project_id in gone:
                task = self._resync_tasks.pop(project_id, None)
                if task is not None:
                    task.cancel()
        return True

    @staticmethod
    async def _close(pubsub: Any) -> None:
        try:
            await pubsub.aclose()
        except Exception as exc:  # the connection is being dropped anyway
            log.debug("order_feed_close_failed", error=repr(exc))

    @staticmethod
    def _project_of(channel: object) -> int | None:
        """The project of an order-status channel's name, or None for another name."""
        if isinstance(channel, bytes):
            channel = channel.decode(errors="replace")
        match = _CHANNEL_PROJECT.search(channel) if isinstance(channel, str) else None
        if match is None or order_status_channel(int(match[1])) != channel:
            return None
        return int(match[1])

    def _handle(self, channel: object, data: object) -> None:
        try:
            if not isinstance(data, (str, bytes)):
                raise ValueError("not text")
            state = OrderState.from_json(data)
            if self._project_of(channel) != state.project_id:
                raise ValueError(f"a state of project {state.project_id} on another project's channel")
        except ValueError as exc:
            self._metrics.order_feed_messages.labels("invalid").inc()
            log.warning("order_feed_message_invalid", error=str(exc))
            return
        reached = self._dispatch(state)
        self._metrics.order_feed_messages.labels("dispatched" if reached else "unfollowed").inc()

    def _resync(self, project_id: int) -> None:
        # In a task of its own, so messages keep flowing while thousands of hashes are read; both paths only
        # move orders forward, so their order does not matter.
        previous = self._resync_tasks.get(project_id)
        if previous is not None:
            previous.cancel()
        orders = list(self._followed(project_id))
        task = asyncio.get_running_loop().create_task(self._reread(orders))
        self._resync_tasks[project_id] = task
        task.add_done_callback(lambda done: self._forget_resync(project_id, done))

    def _forget_resync(self, project_id: int, task: asyncio.Task[None]) -> None:
        if self._resync_tasks.get(project_id) is task:
            del self._resync_tasks[project_id]

    async def _reread(self, orders: list[OrderRef]) -> None:
        for start in range(0, len(orders), _RESYNC_BATCH):
            batch = orders[start : start + _RESYNC_BATCH]
            states = await asyncio.gather(
                *(read_order_state(self._redis, ref) for ref in batch),
                return_exceptions=True,
            )
            for state in states:
                if isinstance(state, OrderState):
                    self._dispatch(state)
                elif isinstance(state, BaseException):
                    log.warning("order_feed_reread_failed", error=repr(state))
