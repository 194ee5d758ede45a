"""The replica's one subscription to the order-status channels of the projects it follows orders of
(`OrderStatusFeed`)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from core.backoff import Backoff, Wakeup
from core.connections import RedisClient
from core.keys import order_status_channel
from core.lifecycle import cancel_and_wait
from server.metrics import ServiceMetrics
from server.status_channel.channel import Channel
from server.status_channel.states import ChannelMessage, OrderRef, parse_message, read_order

log = structlog.get_logger("server.status_channel")

_RESYNC_BATCH = 100
# Before subscribing again: 0.1-0.2 s after the first failure, doubling up to 2.5-5 s.
_BACKOFF = Backoff(base_s=0.1, cap_s=5.0)
# Reply types as redis-py reports them: bytes, or str when the client decodes responses.
_SUBSCRIBED = frozenset({b"subscribe", "subscribe", b"ssubscribe", "ssubscribe"})
_UNSUBSCRIBED = frozenset({b"unsubscribe", "unsubscribe", b"sunsubscribe", "sunsubscribe"})
_MESSAGE = frozenset({b"message", "message", b"smessage", "smessage"})
_CHANNEL_PROJECT = re.compile(r"\{p:(\d+)\}")


class ChannelLost(Exception):
    """Redis ended a subscription this replica did not leave: on a Cluster, the channel's slot moved to another node
    (a node that loses a slot unsubscribes that slot's sharded subscribers)."""


class OrderStatusFeed:
    """The replica's one subscription to the order-status channels of the projects it follows orders of:
    dispatches what it hears, and re-reads a project's followed orders after every (re)subscribe to its channel.

    `follow(project)` and `unfollow(project)` count the orders followed per project; the channel is subscribed
    while the count is above zero. With no project followed the feed holds no connection.

    On a Cluster the subscription follows the channel's slot: when the node serving it fails (the connection
    breaks) or gives the slot up (Redis ends the subscription: `ChannelLost`), the feed reads the slot map again
    and subscribes anew on the slot's new owner, with the same backoff as any failure, and re-reads.

    Args:
        redis: the process's client (the subscription holds one connection of its pool).
        cluster: whether `redis` is a Redis Cluster client (sharded pub/sub then).
        dispatch: called with each message heard or state re-read (`OrderState`, `UpstreamStatus`); returns how
            many trackers it reached; must not block.
        followed: the orders of a project followed on this replica now, re-read after every (re)subscribe.
        metrics: message and reconnect counters.
        timeout_s: bound on reading the Cluster's slot map again.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        cluster: bool,
        dispatch: Callable[[ChannelMessage], int],
        followed: Callable[[int], Iterable[OrderRef]],
        metrics: ServiceMetrics,
        timeout_s: float = 1.0,
    ) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._channel = Channel(redis, cluster=cluster)
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
        timeout, `READ_TIMEOUT_S`, even when redis-py swallows the cancellation)."""
        # redis-py 8.1 can swallow a cancellation that arrives while a subscription is being set up: the task
        # then carries on reading. The flag ends the loop at its next read timeout whatever happened to the
        # cancellation.
        self._stopping = True
        self._changed.set()
        tasks = [*self._resync_tasks.values(), self._task]
        await cancel_and_wait(*tasks)
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
            pubsub: Any = self._channel.pubsub()
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
                        if project_id in self._requested:
                            # Not left by this replica (`_sync` forgets a channel before leaving it).
                            raise ChannelLost(f"Redis ended the subscription to project {project_id}'s channel")
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
                self._requested, self._confirmed = set(), set()
                await self._close(pubsub)
                pubsub = None
                await self._wakeup.sleep(delay)
                # On a Cluster the channel's slot may have another owner now: subscribe where it is served.
                await self._channel.rediscover(self._timeout_s)
            finally:
                self._requested, self._confirmed = set(), set()
                if pubsub is not None:
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
            state = parse_message(data)
            if self._project_of(channel) != state.project_id:
                raise ValueError(f"a message of project {state.project_id} on another project's channel")
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
            found = await asyncio.gather(*(read_order(self._redis, ref) for ref in batch), return_exceptions=True)
            for messages in found:
                if isinstance(messages, BaseException):
                    log.warning("order_feed_reread_failed", error=repr(messages))
                    continue
                for message in messages:
                    self._dispatch(message)
