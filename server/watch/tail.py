"""The replica's shared tail of one project's change feed (`FeedTail`), fanned out in memory to its watch streams
(`Subscriber`).

One tail per project per process, however many streams watch it: on a single Redis one XREAD BLOCK over the
project's `FEED_PARTITIONS` streams; on a Redis Cluster, where one XREAD cannot span hash slots, one per partition.
Each batch read is offered to every subscriber: the changes of the players it watches (or all of them), and the
position the tail has passed, which a stream's heartbeat cursor takes once it has sent what it was offered before.

A subscriber holds at most `max_queued` changes not yet sent; past that its stream is ended (`FellBehind`) rather
than let a caller that does not read grow the replica's memory, and the caller resumes from its cursor. When a read
fails (Redis lost), every subscriber is ended UNAVAILABLE and the tail stops; the next stream starts a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from core.connections import RedisClient, bounded
from core.errors import StoreUnavailable
from core.feed import feed_keys
from server.errors import EntitlementsError, FellBehind
from server.metrics import WatchMetrics
from server.watch.cursor import StreamId, format_id
from server.watch.history import FeedChange, FeedHistory, parse_entries

log = structlog.get_logger("server.watch")

#: How long one XREAD waits for new entries before it is sent again, and how many entries it takes at most. A
#: stopped tail's readers end after their read in flight rather than being cancelled in it: a blocking command
#: cancelled on redis-py's asyncio Cluster client can leave its task unwinding for tens of seconds, so the block
#: is short enough to wait for at shutdown.
BLOCK_MS = 1_000
READ_COUNT = 1_000


class Subscriber:
    """One stream's place at a tail: the changes offered to it and not yet taken (`batches`), the position the tail
    has passed (`passed`), and the error that ends the stream, if any. `wake` is set whenever one of them changes.

    Args:
        all_players: the stream watches every player (otherwise those the tail is told of with `FeedTail.watch`).
        max_queued: the changes it may hold before it is ended `FellBehind`.
    """

    __slots__ = ("all_players", "batches", "error", "max_queued", "passed", "queued", "wake")

    def __init__(self, *, all_players: bool, max_queued: int) -> None:
        self.all_players = all_players
        self.max_queued = max_queued
        self.batches: deque[list[FeedChange]] = deque()
        self.queued = 0
        self.passed: tuple[StreamId, ...] = ()
        self.error: Exception | None = None
        self.wake = asyncio.Event()

    def offer(self, changes: list[FeedChange] | None, passed: tuple[StreamId, ...]) -> None:
        if self.error is not None:
            return
        if changes:
            if self.queued + len(changes) > self.max_queued:
                self.fail(
                    FellBehind(
                        f"the stream fell more than {self.max_queued:,} changes behind (its caller reads too slowly): "
                        "open it again with the last cursor received"
                    )
                )
                return
            self.batches.append(changes)
            self.queued += len(changes)
            self.wake.set()
        self.passed = passed

    def take(self) -> list[FeedChange] | None:
        """The oldest batch not yet taken, or None."""
        if not self.batches:
            return None
        changes = self.batches.popleft()
        self.queued -= len(changes)
        return changes

    def fail(self, error: Exception) -> None:
        """Ends the stream with `error` (the first one given), dropping what it holds."""
        if self.error is None:
            self.error = error
        self.batches.clear()
        self.queued = 0
        self.wake.set()


class FeedTail:
    """The replica's reader of one project's feed. `start()` reads where each partition ends; then readers follow.

    Args:
        redis: a client whose socket timeout exceeds `BLOCK_MS` (blocking reads hold one connection each).
        history: reads the partitions' ends at start.
        project_id: the project.
        cluster: one reader per partition (a Redis Cluster) instead of one for all.
        metrics: reads and subscribers counted.
        timeout_s: the Redis timeout, beyond the block time.
        on_stop: called once when the tail stops (failed, or its last subscriber left).
    """

    def __init__(
        self,
        redis: RedisClient,
        history: FeedHistory,
        project_id: int,
        *,
        cluster: bool,
        metrics: WatchMetrics,
        timeout_s: float,
        on_stop: Callable[[FeedTail], None],
    ) -> None:
        self.project_id = project_id
        self._redis = redis
        self._history = history
        self._keys = feed_keys(project_id)
        self._partition_by_key = {keys.stream.encode(): keys.partition for keys in self._keys}
        partitions = [keys.partition for keys in self._keys]
        self._groups = [[p] for p in partitions] if cluster else [partitions]
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._on_stop = on_stop
        #: The project's feed id (made now if the feed has none), which the cursors of this tail's streams carry.
        self.feed_id = ""
        self.positions: list[StreamId] = []
        self._subscribers: set[Subscriber] = set()
        self._by_user: dict[str, set[Subscriber]] = {}
        self._everyone: set[Subscriber] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        """Reads the project's feed id and where each partition ends, then starts following; on failure the tail
        is stopped and the error is also set on `ready` for the streams waiting on it."""
        try:
            self.feed_id = await self._history.feed_id(self.project_id)
            states = await self._history.states(self.project_id)
        except BaseException as exc:
            self.ready.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable("the tail was stopped"))
            self.ready.exception()  # retrieved: the waiting streams raise their own copy
            self._stop()
            raise
        self.positions = [state.last for state in states]
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(group)) for group in self._groups]
        self.ready.set_result(None)

    def attach(self, subscriber: Subscriber) -> None:
        """Offers the tail's batches to `subscriber` from now; its `passed` is the tail's position now."""
        subscriber.passed = tuple(self.positions)
        self._subscribers.add(subscriber)
        if subscriber.all_players:
            self._everyone.add(subscriber)

    def watch(self, subscriber: Subscriber, user_ids: Iterable[str]) -> None:
        for user_id in user_ids:
            self._by_user.setdefault(user_id, set()).add(subscriber)

    def unwatch(self, subscriber: Subscriber, user_ids: Iterable[str]) -> None:
        for user_id in user_ids:
            watching = self._by_user.get(user_id)
            if watching is not None:
                watching.discard(subscriber)
                if not watching:
                    del self._by_user[user_id]

    def detach(self, subscriber: Subscriber, user_ids: Iterable[str]) -> None:
        """Forgets `subscriber` (watching `user_ids`); the last one to leave stops the tail."""
        self.unwatch(subscriber, user_ids)
        self._subscribers.discard(subscriber)
        self._everyone.discard(subscriber)
        if not self._subscribers:
            self._stop()

    def fail_all(self, error: EntitlementsError | StoreUnavailable) -> None:
        """Ends every subscriber's stream with `error` and stops."""
        for subscriber in list(self._subscribers):
            subscriber.fail(error)
        self._stop()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._on_stop(self)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The readers' tasks (done, or ending after their read in flight, once the tail has stopped)."""
        return self._tasks

    async def _follow(self, group: list[int]) -> None:
        try:
            while not self._stopped:
                streams = {self._keys[p].stream: format_id(self.positions[p]) for p in group}
                reply: Any = await bounded(
                    self._redis.xread(streams, count=READ_COUNT, block=BLOCK_MS),  # type: ignore[arg-type]
                    BLOCK_MS / 1000 + self._timeout_s,
                )
                self._metrics.feed_reads.inc()
                if reply and not self._stopped:
                    self._dispatch(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._stopped:
                return
            log.warning("watch_feed_lost", project_id=self.project_id, error=str(exc) or type(exc).__name__)
            detail = str(exc) if isinstance(exc, StoreUnavailable) else type(exc).__name__
            self.fail_all(
                StoreUnavailable(f"the service lost the store ({detail}): open the stream again with the last cursor")
            )

    def _dispatch(self, reply: list[Any]) -> None:
        """Offers a read's entries (XREAD's RESP2 reply: [[stream key, entries], ...]) to the subscribers."""
        batch: list[FeedChange] = []
        for key, entries in reply:
            partition = self._partition_by_key[key if isinstance(key, bytes) else str(key).encode()]
            changes, last = parse_entries(partition, entries)
            if last is not None:
                self.positions[partition] = last
            batch.extend(changes)
        passed = tuple(self.positions)
        offered: dict[Subscriber, list[FeedChange]] = {}
        for change in batch:
            for subscriber in self._by_user.get(change.entry.user_id, ()):
                offered.setdefault(subscriber, []).append(change)
            for subscriber in self._everyone:
                offered.setdefault(subscriber, []).append(change)
        for subscriber in list(self._subscribers):
            subscriber.offer(offered.get(subscriber), passed)
